"""Table 5 (section 6): LibriSpeech WER (test-clean / test-other) of the paper's speech models
(Table 7: Transformer encoder + 2-layer LSTM transducer, BEST-RQ pretrained) at Base / Large / XL;
Parallel Adapter vs CoDA at r = 2, 4, plus fully finetuned w2v-BERT / BEST-RQ quoted for
reference. No CoDA pretraining for speech (appendix B); Table 8: input length 3200, batch 256,
150K steps, Adafactor, 0.001 with inverse decay.

NOT RUNNABLE: the speech stack exists (log-mel front end, models/speech_{base,large,xl}.gin,
the coda_librispeech task, WER), but coda_flax decodes with CTC where the paper uses a 2-layer
LSTM transducer, and the BEST-RQ pretrained encoders cannot be imported (no converter; the
weights are not public). `coda reproduce --table 5 --dry-run` lists the grid; `coda compare
speech` runs the same comparison (PA vs r = 2, 4) at CPU scale on offline speech.
"""

from .table8 import finetune

CAPTION = (r"Table 5. Comparison of CoDA and the parallel adapter baselines on LibriSpeech. We "
           r"report the WER results on test-clean and test-other. More results can be found in "
           r"§C.2. Note that even with reduction $r = 4$, the average performance drop 0.07 is "
           r"minor.")

SIZES = (("base", "Base"), ("large", "Large"), ("xl", "XL"))
COLUMNS = [dict(key=f"{size}_{split}", group=group, label=split, kind="metric",
                model_gin=f"models/speech_{size}.gin", preset=f"speech_{size}",
                **finetune("LibriSpeech", split=f"test_{split}"))
           for size, group in SIZES for split in ("clean", "other")]
KEYS = [c["key"] for c in COLUMNS]
PA = "variants/parallel_adapter.gin"
CODA = "variants/coda_k_to_all.gin"


def row(key, labels, reduction, paper, delta):
    return dict(key=key, labels=labels, variant_gin=PA if reduction is None else CODA,
                reduction=reduction, pretrain=None, paper=dict(zip(KEYS, paper)),
                paper_delta_avg=delta, delta_baseline="pa")


def reference(key, labels, paper):
    return dict(key=key, labels=labels, reference=True, paper=dict(zip(KEYS, paper)))


#                                   Base: clean other | Large: clean other | XL: clean other  Δ Avg
ROWS = [
    reference("w2v_bert", ["w2v-BERT", "-"], [1.8, 3.6, 1.5, 2.9, 1.5, 2.9]),
    reference("best_rq", ["BEST-RQ", "-"], [1.7, 3.5, 1.6, 2.9, 1.4, 2.7]),
    row("pa", ["Parallel Adapter", "-"], None, [1.6, 3.5, 1.4, 3.0, 1.4, 2.7], 0.0),
    row("coda_r2", ["CoDA", "2"], 2, [1.6, 3.5, 1.4, 3.0, 1.4, 2.8], +0.02),
    row("coda_r4", ["CoDA", "4"], 4, [1.6, 3.6, 1.5, 3.1, 1.4, 2.8], +0.07),
]

TABLE = dict(
    id="table5", number=5,
    title="LibriSpeech WER: Parallel Adapter vs CoDA (r = 2, 4), speech models Base/Large/XL",
    caption=CAPTION, status="not_implemented",
    status_note="needs BEST-RQ pretrained speech encoders (not public; no importer) and the "
                "paper's LSTM transducer (coda_flax has a CTC head instead); the speech presets, "
                "coda_librispeech and WER exist. `coda compare speech` is the CPU-scale version",
    label_columns=["Model", "r"], decimals=1,
    delta_avg=dict(label="Δ Avg", decimals=2),
    initial_checkpoint=dict(required=True, help=(
        "BEST-RQ pretrained speech encoders (Base / Large / XL, Table 7) in coda_flax's layout "
        "(a `coda convert` directory of the speech_* presets).")),
    columns=COLUMNS, rows=ROWS,
    notes=["WER: lower is better; Δ Avg > 0 means a higher (worse) average WER than the "
           "Parallel Adapter."],
)
