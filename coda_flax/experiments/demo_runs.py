"""The demo's runs as data (`coda demo`, scripts/sweep_demo.py): its settings, variants,
model, tasks and the experiment runner's Run specs.

    DemoSettings, QUICK       sizes, steps and seeds (the default run; the quick one for tests)
    VARIANTS, QUICK_VARIANTS  (name, CodaConfig fields) of paper Table 3's rows and beyond:
                              coda_flax/variants.py's variants at the demo's r (demo_variant)
    model_config(s, vocab, coda)           the demo's T5 (dense when coda is None)
    prepare_task(s, data_dir)              Shakespeare, its vocabulary and the needle tasks
    pretrain_run(s, vocab, options)        the dense backbone's Run
    finetune_run(s, vocab, name, seed, init, options)   one variant's finetuning Run
    finetune_runs(s, vocab, variants, init, options)    every finetuning Run, in running order

experiments/demo.py runs them (experiments/runner.py) and writes the results; the sweep
declares its runs from finetune_run.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from coda_flax import config, variants
from coda_flax.config import CodaConfig, ModelConfig
from coda_flax.experiments.runner import Run

TASK = "coda_shakespeare_needle"
PRETRAIN_TASK = "coda_shakespeare_pretrain_mix"      # span corruption + "who gave it?"
SPAN_TASK = "coda_shakespeare_span_corruption"        # the ablation: span corruption only
PRETRAIN_TASKS = {PRETRAIN_TASK: "span corruption mixed with 'who gave it?'",
                  SPAN_TASK: "span corruption only"}
GAVE_TASK = "coda_shakespeare_needle_gave"


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """Sizes and steps of the default run (about 35-40 minutes on 2 CPU cores, README); the
    finetuning learning rate and steps come from scripts/sweep_demo.py (README)."""

    d_model: int = 128
    num_heads: int = 4
    head_dim: int = 32
    d_ff: int = 256
    num_encoder_layers: int = 4
    num_decoder_layers: int = 2
    adapter_dim: int = 32
    input_length: int = 128
    target_length: int = 4
    batch_size: int = 16
    pretrain_batch_size: int = 32
    pretrain_steps: int = 1000
    pretrain_task: str = PRETRAIN_TASK  # one of PRETRAIN_TASKS
    pretrain_lr: float = 0.01
    finetune_steps: int = 500
    finetune_lr: float = 0.01           # absolute steps (Adafactor without parameter scale)
    full_finetune_lr: float = 0.001
    seeds: tuple = (0, 1)
    # variants run with the first seed only (to fit the CPU budget); the others with every seed
    one_seed: tuple = ("full_finetuning", "coda_r3_k_to_all", "coda_r5_k_to_all",
                       "sigmoid_r3_k_to_k", "coda_r10_k_to_k")
    needle_train: int = 8000
    needle_validation: int = 400        # 50 per receiver
    gave_train: int = 8000              # "who gave it?" examples mixed into pretraining
    probe_train: int = 2000             # training examples of the role probe (role_probe)
    backbone_eval_batches: int = 20
    speed_batch: int = 8
    speed_repeats: int = 5
    vocab_size: int = 2000


QUICK = DemoSettings(d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=2,
                     num_decoder_layers=1, adapter_dim=8, input_length=64, target_length=8,
                     batch_size=4, pretrain_batch_size=4, pretrain_steps=4, finetune_steps=3,
                     seeds=(0,), one_seed=(),
                     needle_train=64, needle_validation=16, gave_train=64, probe_train=32,
                     backbone_eval_batches=2,
                     speed_batch=2, speed_repeats=1, vocab_size=300)

QUICK_VARIANTS = ("parallel_adapter", "coda_r3_k_to_all", "first_k_r5_k_to_k")


def demo_variant(variant: str, reduction: float | None = None) -> tuple[str, dict | None]:
    """(the demo's name, CodaConfig fields) of a variant of coda_flax/variants.py at r =
    reduction: the dense one as "full_finetuning" (None: every parameter trains), one with a
    fixed r by its own name, a routed one as <"coda" | its router>_r<r>_<attention>, plus
    _<solver> when it sets one ("first_k_r5_k_to_k", "coda_r20_k_to_k_exact")."""
    v = variants.VARIANTS[variant]
    if v.fields is None:
        return "full_finetuning", None
    if v.reduction is not None:
        return v.name, {**v.fields, "reduction": v.reduction}
    f = v.fields
    name = (f"{'coda' if f['router'] == 'soft_topk' else f['router']}_r{reduction:g}_"
            f"{f['attention']}" + (f"_{f['solver']}" if "solver" in f else ""))
    # r first and the default router unnamed: the fields as the demo's results.json records them
    return name, {"reduction": reduction, **{key: x for key, x in f.items()
                                             if (key, x) != ("router", "soft_topk")}}


# (name, CodaConfig fields) of coda_flax/variants.py's variants at the demo's r; None = full
# finetuning of the dense pretrained model. The router ablations use k-to-k, as the paper's
# Table 3 does.
VARIANTS = tuple(demo_variant(*v) for v in (
    ("dense",), ("parallel_adapter",),
    ("coda_k_to_all", 3), ("coda_k_to_k", 3), ("coda_k_to_all", 5), ("coda_k_to_k", 5),
    ("coda_sigmoid", 3), ("coda_first_k", 3), ("coda_first_k", 5),
    # past the paper's r: how few routed tokens still carry the needle, and does training with
    # the exact solver (instead of coordinate descent) change that
    ("coda_k_to_k", 10), ("coda_k_to_k", 20), ("coda_k_to_k_exact", 20)))


def model_config(s: DemoSettings, vocab_size: int, coda: CodaConfig | None) -> ModelConfig:
    return config.model_config(coda=coda, vocab_size=vocab_size, d_model=s.d_model,
                               num_heads=s.num_heads, num_kv_heads=1, head_dim=s.head_dim,
                               d_ff=s.d_ff, num_encoder_layers=s.num_encoder_layers,
                               num_decoder_layers=s.num_decoder_layers)


def prepare_task(s: DemoSettings, data_dir: str | None, log: Callable[[str], None] = print):
    """Shakespeare + its vocabulary, the needle examples for s, the offline tasks registered:
    returns (the corpus' prepare_shakespeare dict, the needle stats, the seqio task TASK)."""
    from coda_flax import tasks
    from coda_flax.datasets import shakespeare as corpus
    from coda_flax.datasets import needle

    prepared = corpus.prepare_shakespeare(data_dir, vocab_size=s.vocab_size, log=log)
    needle_stats = needle.prepare_needle(data_dir, prepared["vocab_model"],
                                         input_length=s.input_length,
                                         num_train=s.needle_train,
                                         num_validation=s.needle_validation, log=log)
    gave = needle.prepare_needle(data_dir, prepared["vocab_model"], input_length=s.input_length,
                                 num_train=s.gave_train, num_validation=s.needle_validation,
                                 min_offset=0, question="gave", seed=1, log=log)
    tasks.register_offline_tasks(data_dir, prepared["vocab_model"],
                                 needles={"got": needle_stats["dir"], "gave": gave["dir"]})
    return prepared, needle_stats, tasks.get_task_or_mixture(TASK)


def pretrain_run(s: DemoSettings, vocab_size: int, options: dict) -> Run:
    """The dense backbone: every parameter trained on s.pretrain_task (span corruption lengths),
    one k stage, a constant learning rate. options: run.train's other settings (data folder,
    vocabulary, logging)."""
    from coda_flax.tasks.span_corruption import random_spans_helper
    lengths = {"inputs": s.input_length, "targets": random_spans_helper(s.input_length)[1]}
    return Run(name="pretrain", model=model_config(s, vocab_size, None), task=s.pretrain_task,
               feature_lengths=lengths, steps=s.pretrain_steps,
               batch_size=s.pretrain_batch_size, learning_rate=s.pretrain_lr, trainable="all",
               k_anneal_stages=1, eval_batch_size=s.pretrain_batch_size,
               eval_max_examples=s.pretrain_batch_size,
               train_options={**options, "schedule": "constant"})


def finetune_run(s: DemoSettings, vocab_size: int, variant, seed: int, init: Run | str,
                 options: dict) -> Run:
    """A variant ((name, CodaConfig fields) or a name of VARIANTS) finetuned on "who got it?"
    from `init` (the backbone's Run or a checkpoint path): adapters + routers + layer norms
    (every parameter for full finetuning), absolute Adafactor steps, k annealed from n to
    n / r in two stages; folder finetune/<name>/seed<seed>."""
    name, fields = (variant, dict(VARIANTS)[variant]) if isinstance(variant, str) else variant
    full = fields is None
    coda = None if full else CodaConfig(adapter_dim=s.adapter_dim, **fields)
    return Run(name=f"finetune/{name}/seed{seed}", model=model_config(s, vocab_size, coda),
               task=TASK, feature_lengths={"inputs": s.input_length, "targets": s.target_length},
               steps=s.finetune_steps, batch_size=s.batch_size,
               learning_rate=s.full_finetune_lr if full else s.finetune_lr, seed=seed,
               trainable="all" if full else "finetune", init=init, k_anneal_fraction=0.2,
               k_anneal_stages=2, eval_batch_size=s.batch_size,
               train_options={**options, "parameter_scale": False})


def finetune_runs(s: DemoSettings, vocab_size: int, variants, init: Run | str,
                  options: dict) -> list[Run]:
    """Every finetuning run of `variants` ((name, fields) pairs): seeds outer and the variants
    behind the claims first, so that an interrupted demo leaves the most useful results; the
    variants in s.one_seed with the first seed only."""
    order = sorted(variants, key=lambda variant: variant[0] in s.one_seed)
    return [finetune_run(s, vocab_size, variant, seed, init, options)
            for i, seed in enumerate(s.seeds) for variant in order
            if not (i > 0 and variant[0] in s.one_seed)]
