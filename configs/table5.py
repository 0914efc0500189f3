"""Table 5 (section 6): LibriSpeech WER (test-clean / test-other) of the paper's speech models
(Table 7: Transformer encoder + 2-layer LSTM transducer, BEST-RQ pretrained) at Base / Large / XL;
Parallel Adapter vs CoDA at r = 2, 4, plus fully finetuned w2v-BERT / BEST-RQ quoted for
reference. No CoDA pretraining for speech (appendix B); Table 8: input length 3200, batch 256,
150K steps, Adafactor, 0.001 with inverse decay.

NOT RUNNABLE YET: needs the speech stack (issue 6): audio features, the speech encoder presets
(gin/models/speech_{base,large,xl}.gin), the transducer, a coda_librispeech task and BEST-RQ
pretrained weights. `coda reproduce --table 5 --dry-run` lists the planned grid.
"""

from .table8 import finetune

CAPTION = (r"Table 5. Comparison of CoDA and the parallel adapter baselines on LibriSpeech. We "
           r"report the WER results on test-clean and test-other. More results can be found in "
           r"§C.2. Note that even with reduction $r = 4$, the average performance drop 0.07 is "
           r"minor.")

SIZES = (("base", "Base"), ("large", "Large"), ("xl", "XL"))
COLUMNS = [dict(key=f"{size}_{split}", group=group, label=split, kind="metric",
                model_gin=f"gin/models/speech_{size}.gin", preset=f"speech_{size}",
                **finetune("LibriSpeech", split=f"test_{split}"))
           for size, group in SIZES for split in ("clean", "other")]
KEYS = [c["key"] for c in COLUMNS]
PA = "gin/models/variants/parallel_adapter.gin"
CODA = "gin/models/variants/coda_k_to_all.gin"


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
    status_note="requires the speech stack (issue 6), not implemented yet: audio front end, "
                "speech encoder presets gin/models/speech_{base,large,xl}.gin, LSTM transducer, "
                "the coda_librispeech task and BEST-RQ pretrained speech checkpoints",
    label_columns=["Model", "r"], decimals=1,
    delta_avg=dict(label="Δ Avg", decimals=2),
    initial_checkpoint=dict(required=True, help=(
        "BEST-RQ pretrained speech encoders (Base / Large / XL, Table 7), once the speech stack "
        "(issue 6) can load them.")),
    columns=COLUMNS, rows=ROWS,
    notes=["WER: lower is better; Δ Avg > 0 means a higher (worse) average WER than the "
           "Parallel Adapter."],
)
