"""Optional T5X integration: CoDA from T5X's own train.py / eval.py / infer.py.

    python -m t5x.train --gin_file=gin/t5x/coda_model.gin --gin_file=t5x/configs/runs/finetune.gin ...

Importing coda_flax or coda_flax.t5x never imports T5X. The names that need it
(CodaEncoderDecoderModel, logical_factor_rules, save_t5x_checkpoint; in coda_flax.t5x.models)
import it on first access and raise an ImportError saying how to install T5X when it is
missing. The rest needs only flax:

    T5XEncoderDecoder   coda_flax.EncoderDecoder with the call signatures T5X uses
    model_config        ModelConfig from a preset (+ overrides) for gin
    split_axes          boxed Flax variables -> {"params", "params_axes"} (T5X's layout)
    param_filter        ModelParamTraversal filter: the parameters CoDA finetuning trains
    AXIS_RULES, FACTOR_RULES   partitioning / Adafactor rules for CoDA's extra axis names
"""

from coda_flax.t5x.module import (AXIS_RULES, FACTOR_RULES, T5XEncoderDecoder, model_config,
                                  param_filter, split_axes)

_NEEDS_T5X = ("CodaEncoderDecoderModel", "logical_factor_rules", "save_t5x_checkpoint")

__all__ = ["T5XEncoderDecoder", "model_config", "split_axes", "param_filter", "AXIS_RULES",
           "FACTOR_RULES", *_NEEDS_T5X]


def __getattr__(name):
    if name in _NEEDS_T5X:
        import importlib

        models = importlib.import_module("coda_flax.t5x.models")  # imports t5x (clear
        return getattr(models, name)                             # ImportError if missing)
    raise AttributeError(f"module 'coda_flax.t5x' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NEEDS_T5X))
