"""Optional T5X integration: CoDA from T5X's own train.py / eval.py / infer.py.

    python -m t5x.train --gin_search_paths=$(python -m coda_flax.t5x --gin-dir) \
        --gin_file=models/t5_1_1_base.gin --gin_file=variants/coda_k_to_all.gin \
        --gin_file=t5x/runs/finetune.gin --gin_file=t5x/tasks/rte.gin ...

The gin files are the ones of `coda train` (the repository's gin/, shipped in the package:
GIN_DIR; `python -m coda_flax.t5x --gin-dir` prints it): the same model and variant files, and
t5x/ for T5X's wiring (model.gin, trainer.gin) and the paper's runs (t5x/runs/, t5x/tasks/).
Importing coda_flax or coda_flax.t5x never imports T5X. The names that need it
(CodaEncoderDecoderModel, Adafactor, NoUpdate, finetuning_optimizer, logical_factor_rules,
save_t5x_checkpoint in coda_flax.t5x.models; CodaTrainer in coda_flax.t5x.trainer) import it on
first access and raise an ImportError saying how to install T5X when it is missing. The rest
needs only flax (and seqio for the vocabularies):

    T5XEncoderDecoder   coda_flax.EncoderDecoder with the call signatures T5X uses
    model_config        ModelConfig from a preset (+ overrides) for gin
    split_axes          boxed Flax variables -> {"params", "params_axes"} (T5X's layout)
    param_filter        ModelParamTraversal filter: the parameters CoDA finetuning trains
    AXIS_RULES, FACTOR_RULES   partitioning / Adafactor rules for CoDA's extra axis names
    axis_rules          AXIS_RULES for a ModelConfig (a single kv head stays replicated)
    vocabulary, offline_vocabulary, pix2struct_vocabulary, continuous_vocabulary   the
                        model's = the tasks' vocabularies (coda_flax.t5x.vocab)
    paper_task, pix2struct_task   register the paper's text / vision tasks from gin settings
                        (coda_flax.t5x.tasks)
"""

from coda_flax.resources import GIN_DIR
from coda_flax.t5x.module import (AXIS_RULES, FACTOR_RULES, T5XEncoderDecoder, axis_rules,
                                  model_config, param_filter, split_axes)

from coda_flax.t5x.vocab import (continuous_vocabulary, offline_vocabulary,
                                 pix2struct_vocabulary, vocabulary)


# name -> the module defining it, imported on first access: T5X (models, trainer), or seqio and
# tensorflow-datasets (tasks: importing it registers the paper's tasks).
_NEEDS_T5X = {"CodaEncoderDecoderModel": "models", "logical_factor_rules": "models",
              "save_t5x_checkpoint": "models", "Adafactor": "models", "NoUpdate": "models",
              "finetuning_optimizer": "models", "CodaTrainer": "trainer",
              "paper_task": "tasks", "pix2struct_task": "tasks"}

__all__ = ["T5XEncoderDecoder", "model_config", "split_axes", "param_filter", "AXIS_RULES",
           "FACTOR_RULES", "axis_rules", "GIN_DIR", "vocabulary", "offline_vocabulary",
           "pix2struct_vocabulary", "continuous_vocabulary", *_NEEDS_T5X]


def __getattr__(name):
    if name in _NEEDS_T5X:
        import importlib

        module = importlib.import_module(f"coda_flax.t5x.{_NEEDS_T5X[name]}")  # imports t5x
        return getattr(module, name)                 # (clear ImportError if it is missing)
    raise AttributeError(f"module 'coda_flax.t5x' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NEEDS_T5X))
