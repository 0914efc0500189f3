"""Pretrained checkpoints: Hugging Face / T5X import, dense -> CoDA, adapter-only files.

    load_hf_t5(path) -> (ModelConfig, params)          Hugging Face T5 / FLAN-T5 / mT5
    load_t5x(path, config=None) -> params              T5X legacy (msgpack + zarr) or orbax
    dense_to_coda(params, coda_config, rng)            adds adapters + routers, same function
    trainable_mask / parameter_summary / param_group   what finetuning trains (PEFT-style)
    save_adapters / load_adapters                      adapter-only files onto a frozen base
    save_checkpoint / load_checkpoint                  the project's orbax checkpoint dir
    config_to_dict / config_from_dict                  configs as JSON

Nothing here imports torch or transformers at import time (torch only to read
pytorch_model.bin).
"""

from coda_flax.checkpoints.adapters import load_adapters, save_adapters
from coda_flax.checkpoints.convert import dense_to_coda
from coda_flax.checkpoints.hf import hf_model_config, hf_to_params, load_hf_t5
from coda_flax.checkpoints.io import config_from_dict, config_to_dict
from coda_flax.checkpoints.native import load_checkpoint, save_checkpoint
from coda_flax.checkpoints.peft import (GROUPS, format_parameter_summary, param_group,
                                        parameter_summary, print_trainable_parameters,
                                        trainable_mask)
from coda_flax.checkpoints.t5x import (infer_t5x_config, load_t5x, load_t5x_with_config,
                                       read_t5x, t5x_to_params)
from coda_flax.checkpoints.tree import expected_shapes, flatten_params, unflatten_params

__all__ = ["load_hf_t5", "hf_model_config", "hf_to_params", "load_t5x", "load_t5x_with_config",
           "read_t5x", "t5x_to_params", "infer_t5x_config", "dense_to_coda", "trainable_mask",
           "parameter_summary", "format_parameter_summary", "print_trainable_parameters",
           "param_group", "GROUPS", "save_adapters", "load_adapters", "save_checkpoint",
           "load_checkpoint", "config_to_dict", "config_from_dict", "expected_shapes",
           "flatten_params", "unflatten_params"]
