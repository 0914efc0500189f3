"""Optional T5X integration: CoDA from T5X's own train.py / eval.py / infer.py.

    python -m t5x.train --gin_search_paths=$(python -m coda_flax.t5x --gin-dir),$T5X_CONFIGS \
        --gin_file=coda_model.gin --gin_file=runs/finetune.gin --gin_file=coda_trainer.gin ...

The gin files ship in the package (GIN_DIR; `python -m coda_flax.t5x --gin-dir` prints it).
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
    vocabulary, offline_vocabulary   the model's = the tasks' vocabularies (coda_flax.t5x.vocab)
"""

import os

from coda_flax.resources import GIN_DIR as _GIN_DIR
from coda_flax.t5x.module import (AXIS_RULES, FACTOR_RULES, T5XEncoderDecoder, axis_rules,
                                  model_config, param_filter, split_axes)

from coda_flax.t5x.vocab import offline_vocabulary, vocabulary

# The gin files (coda_model.gin, coda_trainer.gin, init_from_params.gin, tiny_offline.gin): the
# repository's gin/t5x/, installed with the package (coda_flax/gin/t5x/): pass it in --gin_search_paths (`python -m coda_flax.t5x --gin-dir`).
GIN_DIR = os.path.join(_GIN_DIR, "t5x")

# name -> the module defining it; these import T5X on first access.
_NEEDS_T5X = {"CodaEncoderDecoderModel": "models", "logical_factor_rules": "models",
              "save_t5x_checkpoint": "models", "Adafactor": "models", "NoUpdate": "models",
              "finetuning_optimizer": "models", "CodaTrainer": "trainer"}

__all__ = ["T5XEncoderDecoder", "model_config", "split_axes", "param_filter", "AXIS_RULES",
           "FACTOR_RULES", "axis_rules", "GIN_DIR", "vocabulary", "offline_vocabulary", *_NEEDS_T5X]


def __getattr__(name):
    if name in _NEEDS_T5X:
        import importlib

        module = importlib.import_module(f"coda_flax.t5x.{_NEEDS_T5X[name]}")  # imports t5x
        return getattr(module, name)                 # (clear ImportError if it is missing)
    raise AttributeError(f"module 'coda_flax.t5x' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NEEDS_T5X))
