"""Table 2: CoDA on the public T5 v1.1 checkpoints (paper section 5), MNLI / RTE / BoolQ dev
accuracy for Base / Large / XL; Parallel Adapter vs CoDA k-to-all / k-to-k at r = 3, 5.

Recipe (section 5, appendix B): T5 v1.1 dense checkpoint -> CoDA pretraining (100K steps of span
corruption on C4, n = 512, k = 192, all parameters train) -> finetuning (Table 8; adapters,
routers and layer norms train; k annealed from n to n/r over the first 10%). The Parallel Adapter
starts from the dense checkpoint (it has no router to pretrain).
"""

from .table8 import coda_pretraining, finetune

CAPTION = (r"Table 2. Results of applying CoDA to T5 v1.1 models. CoDA achieves significant "
           r"computation savings while retaining accuracy close to the dense baseline. We compare "
           r"CoDA to a corresponding parallel adapter method that processes all tokens without "
           r"conditional computation. We report accuracy on the development set on 3 tasks "
           r"\times 3 model sizes, and set the number of selected tokens "
           r"$k = \lceil n/r \rceil$. The last column shows the change on average accuracy with "
           r"respect to the parallel adapter method. We select the k -to-all version as our "
           r"default (shown in bold).")

T5_1_1_CHECKPOINTS = (
    "the public T5 v1.1 checkpoints (paper section 5), one per size, converted to coda_flax "
    "checkpoints. On a machine with internet, download google/t5-v1_1-base, -large and -xl from "
    "Hugging Face and convert each: `coda convert --hf DIR/t5-v1_1-base --output "
    "CKPTS/t5_1_1_base` (or the T5X ones: `coda convert --t5x gs://t5-data/pretrained_models/t5x/"
    "t5_1_1_base/checkpoint_1000000 --preset t5_1_1_base --output CKPTS/t5_1_1_base`), then pass "
    "--gin.INITIAL_CHECKPOINT_PATH=\"'CKPTS/{preset}'\" ({preset} is replaced by each "
    "experiment's preset, e.g. t5_1_1_base). Their vocabulary is T5's SentencePiece model "
    "(spiece.model in the Hugging Face repository): --gin.VOCAB_PATH=\"'.../spiece.model'\".")

SIZES = (("base", "Base", "t5_1_1_base"), ("large", "Large", "t5_1_1_large"),
         ("xl", "XL", "t5_1_1_xl"))
DATASETS = (("mnli", "MNLI"), ("rte", "RTE"), ("boolq", "BoolQ"))

COLUMNS = [dict(key=f"{size}_{d}", group=group, label=label, kind="metric",
                model_gin=f"models/{preset}.gin", preset=preset, **finetune(label))
           for size, group, preset in SIZES for d, label in DATASETS]
KEYS = [c["key"] for c in COLUMNS]

PA = "variants/parallel_adapter.gin"
K_TO_ALL = "variants/coda_k_to_all.gin"
K_TO_K = "variants/coda_k_to_k.gin"


def row(key, labels, variant_gin, reduction, paper, delta):
    return dict(key=key, labels=labels, variant_gin=variant_gin, reduction=reduction,
                pretrain=None if reduction is None else coda_pretraining(variant_gin),
                paper=dict(zip(KEYS, paper)), paper_delta_avg=delta, delta_baseline="pa")


#            Base: MNLI RTE BoolQ | Large: MNLI RTE BoolQ | XL: MNLI RTE BoolQ      Δ Avg
ROWS = [
    row("pa", ["Parallel Adapter (w/o conditional computation)", "-"], PA, None,
        [87.1, 71.5, 77.9, 90.3, 84.8, 85.8, 91.5, 89.9, 88.4], 0.0),
    row("k_to_all_r3", ["CoDA, k-to-all attention", "3"], K_TO_ALL, 3,
        [86.6, 72.6, 76.6, 90.2, 85.9, 85.1, 91.4, 91.3, 89.4], +0.2),
    row("k_to_k_r3", ["CoDA, k-to-k attention", "3"], K_TO_K, 3,
        [86.3, 72.2, 76.2, 89.8, 87.0, 83.7, 91.4, 89.5, 88.2], -0.3),
    row("k_to_all_r5", ["CoDA, k-to-all attention", "5"], K_TO_ALL, 5,
        [86.0, 70.8, 76.0, 89.7, 85.2, 84.3, 91.0, 91.3, 87.2], -0.6),
    row("k_to_k_r5", ["CoDA, k-to-k attention", "5"], K_TO_K, 5,
        [82.5, 70.8, 75.4, 88.1, 87.0, 81.8, 89.9, 87.7, 84.8], -2.1),
]

TABLE = dict(
    id="table2", number=2,
    title="CoDA on T5 v1.1: Parallel Adapter vs CoDA k-to-all / k-to-k (r = 3, 5)",
    caption=CAPTION, status="ready", status_note="",
    label_columns=["Model", "Reduction r"], decimals=1,
    delta_avg=dict(label="Δ Avg", decimals=1),
    initial_checkpoint=dict(required=True, help=T5_1_1_CHECKPOINTS),
    columns=COLUMNS, rows=ROWS,
)
