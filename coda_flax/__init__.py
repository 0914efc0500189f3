"""coda_flax: Conditional Adapters (CoDA, Lei et al. 2023) in JAX/Flax."""

from coda_flax.coda_layer import CodaEncoderLayer, DenseEncoderLayer
from coda_flax.config import PRESETS, CodaConfig, ModelConfig, tiny_config
from coda_flax.model import Decoder, Encoder, EncoderDecoder
from coda_flax.routing import Router, Routing, gather, scatter_add
from coda_flax.soft_topk import soft_topk

__version__ = "0.1.0"

__all__ = ["soft_topk", "Router", "Routing", "gather", "scatter_add", "CodaEncoderLayer",
           "DenseEncoderLayer", "Encoder", "Decoder", "EncoderDecoder", "ModelConfig",
           "CodaConfig", "PRESETS", "tiny_config"]
