"""Table 4 (section 6): the paper's XL text model on 6 language tasks, Parallel Adapter vs CoDA
k-to-all at r = 3, 5 (XSum on its test set, the others on their development sets), with results
of other parameter-efficient methods quoted from He et al. (2021). Same runs as Table 9's XL block
(shared when the output folder is the same); only XSum's evaluation split differs.
"""

from .table8 import coda_pretraining
from .table9 import CODA, PA, PAPER_TEXT_CHECKPOINTS, columns

CAPTION = (
    "Table 4. Comparison of CoDA and parallel adapter on 6 language tasks. We report results on "
    "the test set of XSum, and on the development set of other tasks. [†] indicates results taken "
    "from He et al. (2021), and referenced results in bracket correspond to using 2M adapter "
    "parameters. Note that our Parallel Adapter numbers are stronger as our pretrained Transformer "
    "backbone uses more parameters than the model used in He et al. (2021).")

COLUMNS = columns("test")
KEYS = [c["key"] for c in COLUMNS]
PRESET = "paper_text_xl"


def row(key, labels, reduction, paper, delta):
    return dict(key=key, labels=labels, model_gin=f"models/{PRESET}.gin", preset=PRESET,
                variant_gin=PA if reduction is None else CODA, reduction=reduction,
                pretrain=None if reduction is None else coda_pretraining(CODA),
                paper=dict(zip(KEYS, paper)), paper_delta_avg=delta, delta_baseline="pa")


def reference(key, labels, paper, paper_text=None):
    """Results of other work, quoted (no experiment); None = "-" in the paper."""
    return dict(key=key, labels=labels, reference=True,
                paper={k: v for k, v in zip(KEYS, paper) if v is not None},
                paper_text=paper_text or {})


#                                               MNLI  RTE   BoolQ SQuAD ReCord XSum   Δ Avg
ROWS = [
    row("pa", ["Parallel Adapter", "10M", "-"], None, [91.5, 91.0, 88.5, 94.8, 91.4, 21.9], 0.0),
    row("coda_r3", ["CoDA", "10M", "3"], 3, [91.2, 90.3, 87.5, 94.1, 89.3, 20.6], -1.0),
    row("coda_r5", ["CoDA", "10M", "5"], 5, [90.7, 89.5, 87.3, 93.5, 87.6, 20.2], -1.7),
    reference("prefix_tuning", ["Prefix Tuning (Li & Liang, 2021) [†]", "15M (2M)", "-"],
              [86.3, None, None, None, None, 20.5], {"mnli": "(86.3)"}),
    reference("sequential_adapter", ["Sequential Adapter (Houlsby et al., 2019) [†]", "10M (2M)",
                                     "-"],
              [87.2, None, None, None, None, 20.0], {"mnli": "(87.2)"}),
    reference("parallel_adapter_he", ["Parallel Adapter (He et al., 2021) [†]", "10M", "-"],
              [None, None, None, None, None, 20.7]),
]

TABLE = dict(
    id="table4", number=4,
    title="The paper's XL text model on 6 language tasks (XSum: test set)",
    caption=CAPTION, status="ready", status_note="",
    label_columns=["Model", "Trainable Params", "Reduction r"], decimals=1,
    delta_avg=dict(label="Δ Avg", decimals=1),
    initial_checkpoint=dict(required=True, help=PAPER_TEXT_CHECKPOINTS),
    columns=COLUMNS, rows=ROWS,
)
