"""coda_flax: Conditional Adapters (CoDA, Lei et al. 2023) in JAX/Flax.

The public API: the configs (ModelConfig, CodaConfig, SoftTopkConfig) and presets, the Flax modules (the encoder-decoder, the speech
encoder with a CTC head, the encoder layers, the router and soft top-k), `build_module` (the
module of a config) and the checkpoint entry points the README uses (`load_hf_t5`,
`dense_to_coda`). Everything else lives in its submodule (e.g. `coda_flax.routing.gather`,
`coda_flax.checkpoints.save_adapters`). Importing this package loads jax and flax only.
"""

from coda_flax.checkpoints import dense_to_coda, load_hf_t5
from coda_flax.coda_layer import CodaEncoderLayer, DenseEncoderLayer
from coda_flax.config import PRESETS, CodaConfig, ModelConfig, tiny_config
from coda_flax.model import Decoder, Encoder, EncoderCtc, EncoderDecoder, build_module
from coda_flax.routing import Router
from coda_flax.soft_topk import SoftTopkConfig, soft_topk

__version__ = "0.1.0"

__all__ = [
    # configuration
    "ModelConfig", "CodaConfig", "SoftTopkConfig", "PRESETS", "tiny_config",
    # models
    "build_module", "EncoderDecoder", "EncoderCtc", "Encoder", "Decoder",
    "CodaEncoderLayer", "DenseEncoderLayer", "Router", "soft_topk",
    # checkpoints
    "load_hf_t5", "dense_to_coda",
]
