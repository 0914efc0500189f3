"""Table 6 (section 6): CoDA on a pretrained Pix2Struct model for OCR-VQA, DocVQA and
Screen2Words; Parallel Adapter vs CoDA at r = 4, 8, 16, 32, with the measured speed-ups quoted.
CoDA pretraining: 200K steps with k = 1024 (appendix B); Table 8: 4096 patches, batch 256
(Screen2Words 32), 20K steps, Adafactor, 0.01 with cosine decay.

Runnable on the public Pix2Struct-Large (preset pix2struct_large, models/pix2struct_large.gin:
`coda convert --hf google/pix2struct-large` or its T5X checkpoint), not the paper's own model
(Table 7: 6 decoder layers, multi-query attention; not public), on the coda_pix2struct_* tasks
(the TFRecords Pix2Struct's preprocessing writes, under DATA_DIR) with Pix2Struct's SentencePiece
model as VOCAB_PATH. The CoDA pretraining task (Pix2Struct's screenshot parsing) is not built:
run with --pretrain-steps 0 (CoDA finetuned straight from the converted checkpoint).
"""

from .table8 import coda_pretraining, finetune

CAPTION = ("Table 6. Comparison of CoDA and the parallel adapter applied to a pretrained "
           "Pix2Struct model (Lee et al., 2022) on 3 visually-situated language understanding "
           "tasks. We only compare between adapter methods to cleanly observe the effect of the "
           "conditional computation in CoDA.")

MODEL = dict(model_gin="models/pix2struct_large.gin", preset="pix2struct_large")


def _column(dataset: str, task: str) -> dict:
    """Table 8's finetuning of `dataset` on the coda_pix2struct_* task (Pix2Struct's TFRecords)."""
    return dict(MODEL, **dict(finetune(dataset), task=task))


COLUMNS = [
    dict(key="ocrvqa", group="OCRvQA", label="EM", kind="metric",
         **_column("OCR-VQA", "coda_pix2struct_ocrvqa")),
    dict(key="ocrvqa_speedup", group="OCRvQA", label="Speedup", kind="paper_only", suffix="×"),
    dict(key="docvqa", group="DocVQA", label="ANLS", kind="metric",
         **_column("DocVQA", "coda_pix2struct_docvqa")),
    dict(key="docvqa_speedup", group="DocVQA", label="Speedup", kind="paper_only", suffix="×"),
    dict(key="screen2words", group="Screen2Words", label="CIDEr", kind="metric",
         **_column("Screen2Words", "coda_pix2struct_screen2words")),
    dict(key="screen2words_speedup", group="Screen2Words", label="Speedup", kind="paper_only",
         suffix="×"),
]
KEYS = [c["key"] for c in COLUMNS]
PA = "variants/parallel_adapter.gin"
CODA = "variants/coda_k_to_all.gin"


def row(key, labels, reduction, paper):
    return dict(key=key, labels=labels, variant_gin=PA if reduction is None else CODA,
                reduction=reduction,
                pretrain=None if reduction is None else coda_pretraining(CODA, modality="vision"),
                paper=dict(zip(KEYS, paper)))


#                                   OCRvQA EM, x | DocVQA ANLS, x | Screen2Words CIDEr, x
ROWS = [
    row("pa", ["Parallel Adapter", "-"], None, [67.5, 1, 70.8, 1, 110.2, 1]),
    row("coda_r4", ["CoDA", "4"], 4, [68.2, 4.6, 71.8, 4.6, 111.6, 4.6]),
    row("coda_r8", ["CoDA", "8"], 8, [67.6, 8.0, 66.6, 8.0, 108.1, 8.0]),
    row("coda_r16", ["CoDA", "16"], 16, [66.9, 13.5, 56.6, 12.1, 109.0, 12.5]),
    row("coda_r32", ["CoDA", "32"], 32, [64.4, 19.4, 42.5, 16.7, 104.2, 17.8]),
]

TABLE = dict(
    id="table6", number=6,
    title="Pix2Struct: Parallel Adapter vs CoDA (r = 4, 8, 16, 32) on OCR-VQA / DocVQA / "
          "Screen2Words",
    caption=CAPTION, status="ready",
    label_columns=["Model", "Reduction r"], decimals=1, delta_avg=None,
    initial_checkpoint=dict(required=True, help=(
        "the pretrained Pix2Struct-Large (Lee et al., 2022) in coda_flax's layout: `coda "
        "convert --hf DIR --output CKPT` of a Hugging Face google/pix2struct-large download, "
        "or `coda convert --t5x checkpoint_N --output CKPT` of the original T5X checkpoint "
        "(preset pix2struct_large); with --engine t5x, CKPT written for T5X: `python -m "
        "coda_flax.t5x CKPT CKPT_t5x`, then CKPT_t5x/checkpoint_0.")),
    columns=COLUMNS, rows=ROWS,
    notes=["Speedup columns are the paper's measured inference speed-ups over the Parallel "
           "Adapter (quoted; `coda reproduce` does not measure speed).",
           "Ours: the public Pix2Struct-Large backbone (18 / 18 layers, multi-head), not the "
           "paper's Table 7 model; without the screenshot-parsing CoDA pretraining "
           "(--pretrain-steps 0)."],
)
