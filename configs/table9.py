"""Table 9 (appendix C.1): the paper's text models (Table 7: multi-query attention, 6 decoder
layers) at Base / Large / XL on 6 language tasks, development sets; Parallel Adapter vs CoDA
k-to-all (the section 6 default) at r = 3, 5. Table 4 is its XL block, with XSum on the test set.

Recipe (section 6, appendix B): a dense model pretrained as T5 -> CoDA pretraining (100K steps,
n = 512, k = 192) -> finetuning with Table 8's hyperparameters. "We report the best results on the
development set": `coda reproduce` reports the final checkpoint's evaluation and, in tableN.json,
the best in-training evaluation (train.eval_every, every 5000 steps in runs/finetune.gin).
"""

from .table8 import coda_pretraining, finetune

CAPTION = (r"Table 9. Fine-tuning results on 6 language tasks \times 3 model sizes. We report the "
           r"best results on the development set.")

PAPER_TEXT_CHECKPOINTS = (
    "dense checkpoints of the paper's own text models (Table 7; never released), one per size. "
    "Pretrain one as T5 did (span corruption on C4, TFDS c4/en) with `coda train "
    "--gin_file=models/paper_text_xl.gin --gin_file=variants/dense.gin "
    "--gin_file=runs/pretrain.gin --gin.MODEL_DIR=\"'CKPTS/paper_text_xl'\" "
    "--gin.TRAIN_STEPS=1000000 --gin.VOCAB_PATH=\"'.../spiece.model'\"` (likewise "
    "paper_text_base / paper_text_large), then pass "
    "--gin.INITIAL_CHECKPOINT_PATH=\"'CKPTS/{preset}/final'\" ({preset} is replaced by each "
    "experiment's preset, e.g. paper_text_xl).")

DATASETS = (("mnli", "MNLI", "Acc."), ("rte", "RTE", "Acc."), ("boolq", "BoolQ", "Acc."),
            ("squad", "SQuAD", "F1"), ("record", "ReCord", "F1"), ("xsum", "XSum", "R2"))


def columns(xsum_split):
    return [dict(key=key, label=f"{name} {metric}", kind="metric",
                 **finetune(name, split=xsum_split if key == "xsum" else "validation"))
            for key, name, metric in DATASETS]


COLUMNS = columns("validation")
KEYS = [c["key"] for c in COLUMNS]
PA = "variants/parallel_adapter.gin"
CODA = "variants/coda_k_to_all.gin"


def row(size, key, labels, reduction, paper, section=None):
    preset = f"paper_text_{size}"
    return dict(key=f"{size}_{key}", labels=labels, section=section,
                model_gin=f"models/{preset}.gin", preset=preset,
                variant_gin=PA if reduction is None else CODA, reduction=reduction,
                pretrain=None if reduction is None else coda_pretraining(CODA),
                paper=dict(zip(KEYS, paper)))


#                                                    MNLI  RTE   BoolQ SQuAD ReCord XSum
ROWS = [
    row("base", "pa", ["Parallel Adapter", "2M", "-"], None,
        [88.2, 75.8, 80.1, 91.2, 76.7, 14.1], section="Base"),
    row("base", "coda_r3", ["CoDA", "2M", "3"], 3, [85.8, 68.6, 78.7, 89.1, 69.1, 13.5]),
    row("base", "coda_r5", ["CoDA", "2M", "5"], 5, [82.8, 60.3, 78.0, 87.3, 61.8, 13.1]),
    row("large", "pa", ["Parallel Adapter", "5M", "-"], None,
        [90.5, 90.6, 86.7, 93.9, 87.2, 18.3], section="Large"),
    row("large", "coda_r3", ["CoDA", "5M", "3"], 3, [90.0, 84.8, 84.3, 93.1, 84.6, 17.0]),
    row("large", "coda_r5", ["CoDA", "5M", "5"], 5, [89.4, 88.5, 83.9, 92.2, 81.2, 16.7]),
    row("xl", "pa", ["Parallel Adapter", "10M", "-"], None,
        [91.5, 91.0, 88.5, 94.8, 91.4, 22.3], section="XL"),
    row("xl", "coda_r3", ["CoDA", "10M", "3"], 3, [91.2, 90.3, 87.5, 94.1, 89.3, 21.2]),
    row("xl", "coda_r5", ["CoDA", "10M", "5"], 5, [90.7, 89.5, 87.3, 93.5, 87.6, 20.7]),
]

NOTES = [
    "Trainable Params is printed once per size block in the paper (2M / 5M / 10M); it is "
    "repeated on each row here.",
]

TABLE = dict(
    id="table9", number=9,
    title="The paper's text models, Base / Large / XL x 6 language tasks (dev sets)",
    caption=CAPTION, status="ready", status_note="",
    label_columns=["Model", "Trainable Params", "Reduction r"], decimals=1, delta_avg=None,
    initial_checkpoint=dict(required=True, help=PAPER_TEXT_CHECKPOINTS),
    columns=COLUMNS, rows=ROWS, notes=NOTES,
)
