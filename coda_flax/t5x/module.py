"""The parts of the T5X integration that need no T5X: the module T5X drives, and its helpers.

T5X's `EncoderDecoderModel` calls its flax module in these ways (t5x/models.py):

    init:    module.init(rng, enc_tokens, dec_tokens, dec_tokens, encoder_positions=...,
                         decoder_positions=..., encoder_segment_ids=..., decoder_segment_ids=...,
                         decode=False, enable_dropout=False)        # tokens may be float32 ones
    logits:  module.apply(v, enc_tokens, dec_inputs, dec_targets, encoder_segment_ids=..., ...,
                          decode=False, enable_dropout=..., rngs=..., mutable=...)
    encode:  module.apply(v, enc_tokens, enable_dropout=False, method=module.encode)
    cache:   module.apply(v, encoder_input_tokens=..., decoder_input_tokens=...,
                          decoder_target_tokens=..., mutable=['cache'], decode=True,
                          enable_dropout=False)
    step:    module.apply({'params': p, 'cache': c}, encoded, enc_tokens, ids, ids,
                          enable_dropout=False, decode=True, max_decode_length=L,
                          mutable=['cache'], method=module.decode)

`T5XEncoderDecoder` is `coda_flax.EncoderDecoder` (same parameters, same outputs) with the two
differences those calls need: `decode` takes `max_decode_length` (the cache already has the
target length from the cache-initialising call, so it is only checked), and token arrays of a
float dtype (T5X's default `input_types` at init) are cast to int32. It has no `prefill`
argument, so T5X decodes prompts token by token instead of prefilling the cache.

Image models (ModelConfig.encoder_input = "patches": the Pix2Struct presets) read float32
`encoder_input_tokens` [b, n, 2 + p*p*C] (row id, column id, pixels; coda_flax.frontends.patches),
which stay float: only decoder tokens are cast. n is the task's max patches, a static shape, so
T5X's init (jnp.ones: every patch at row / column 1), cache initialisation and beam expansion
work on them unchanged; `CodaEncoderDecoderModel` reads them through
`coda_flax.tasks.features.ContinuousEncDecFeatureConverter`.

T5X's train state wants plain parameter arrays plus a `params_axes` collection of
`flax.linen.partitioning.AxisMetadata` (the logical axis names), where this package's modules
box parameters in `nn.LogicallyPartitioned`: `split_axes` converts. The logical axis names that
T5X's standard partitioning and Adafactor factorisation rules do not know (key / value heads,
the adapter width, the LoRA rank, the patch projection's input) get rules in `AXIS_RULES` and
`FACTOR_RULES`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util
from flax.linen import partitioning as flax_partitioning

from coda_flax.checkpoints.peft import FINETUNE_GROUPS, MODES, param_group
from coda_flax.config import ModelConfig, model_config
from coda_flax.model import EncoderDecoder

__all__ = ["T5XEncoderDecoder", "model_config", "split_axes", "param_filter", "AXIS_RULES",
           "FACTOR_RULES", "axis_rules"]

# Logical axis -> mesh axis, for the names t5x.partitioning.standard_logical_axis_rules lacks:
# adapters shard their width over 'model' like the MLP, key / value heads like the query heads
# (coda_flax.train.partitioning.STANDARD_RULES does the same). A multi-query model (one key /
# value head: the paper's presets) cannot split its single head, so `axis_rules(config)`, which
# t5x/model.gin binds, replicates kv_heads there.
# The patch projection's input (p*p*C pixel values, "patch") stays replicated, as do the row /
# column embeddings' positions ("abspos_buckets", a standard T5X rule).
AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("kv_heads", "model"),
    ("adapter", "model"),
    ("lora_rank", None),
    ("patch", None),
)


def axis_rules(config: ModelConfig | None = None) -> list[tuple[str, str | None]]:
    """AXIS_RULES for `config` (gin: partitioning.standard_logical_axis_rules.additional_rules):
    kv_heads replicated when the model has a single key / value head (multi-query)."""
    rules = dict(AXIS_RULES)
    if config is not None and config.num_kv_heads == 1:
        rules["kv_heads"] = None
    return list(rules.items())


# Logical axis -> Adafactor factor dimension ("row" | "column" | "none"), for the names
# t5x.adafactor.standard_logical_factor_rules lacks (it raises KeyError on unknown names).
# Adapters factor like the MLP (embed = row, adapter = column); LoRA factors stay unfactored.
# The patch projection [p*p*C, d_model] factors like an MLP input (patch = row); the row /
# column embeddings [positions, d_model] like the token embedding's vocabulary (column).
FACTOR_RULES: dict[str, str] = {
    "kv_heads": "column",
    "adapter": "column",
    "lora_rank": "none",
    "patch": "row",
    "abspos_buckets": "column",
}


def _tokens(x):
    """Token ids as ints (T5X initialises with float32 ones unless given input_types)."""
    if x is None or jnp.issubdtype(x.dtype, jnp.integer):
        return x
    return x.astype(jnp.int32)


class T5XEncoderDecoder(EncoderDecoder):
    """`coda_flax.EncoderDecoder` with the call signatures T5X's EncoderDecoderModel uses."""

    def _encoder_inputs(self, x):
        """Token ids as ints; image patches / audio frames (float vectors) as they are."""
        return _tokens(x) if self.config.encoder_input == "tokens" else x

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
               enable_dropout=False):
        return super().encode(self._encoder_inputs(encoder_input_tokens), encoder_segment_ids,
                              encoder_positions, enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
               decoder_target_tokens=None, encoder_segment_ids=None, decoder_segment_ids=None,
               decoder_positions=None, enable_dropout=False, decode=False,
               max_decode_length=None):
        """As EncoderDecoder.decode; `max_decode_length` (T5X's fast decoding) must equal the
        length the cache was initialised with, when the cache exists."""
        if decode and max_decode_length is not None:
            self._check_cache_length(max_decode_length)
        return super().decode(encoded, self._encoder_inputs(encoder_input_tokens),
                              _tokens(decoder_input_tokens), decoder_target_tokens,
                              encoder_segment_ids, decoder_segment_ids, decoder_positions,
                              enable_dropout, decode)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens=None,
                 encoder_segment_ids=None, decoder_segment_ids=None, encoder_positions=None,
                 decoder_positions=None, enable_dropout=False, decode=False):
        return super().__call__(self._encoder_inputs(encoder_input_tokens),
                                _tokens(decoder_input_tokens),
                                decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                                encoder_positions, decoder_positions, enable_dropout, decode)

    def _check_cache_length(self, max_decode_length: int) -> None:
        if not self.has_variable("cache", "decoder"):
            return
        cache = self.variables["cache"]["decoder"]
        lengths = {v.shape[-3] for k, v in traverse_util.flatten_dict(
            cache, sep="/").items() if k.endswith("cached_key")}
        if lengths and lengths != {max_decode_length}:
            raise ValueError(f"T5XEncoderDecoder.decode: max_decode_length={max_decode_length} "
                             f"but the decoder cache holds {sorted(lengths)} positions; "
                             f"initialise the cache with decoder_input_tokens of that length.")


def split_axes(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables with nn.Partitioned-boxed params -> {"params": arrays, "params_axes":
    AxisMetadata tree} (T5X's layout: `<name>_axes` beside each parameter's name).

    Other collections are dropped (T5X would treat them as mutable training state); every
    parameter must carry logical axis names.
    """
    if "params" not in variables:
        raise KeyError(f"split_axes: no 'params' collection in {sorted(variables)}.")
    flat = traverse_util.flatten_dict(dict(variables["params"]),
                                      is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
    params, axes = {}, {}
    for path, leaf in flat.items():
        if not isinstance(leaf, nn.Partitioned):
            raise ValueError(f"split_axes: parameter {'/'.join(path)} has no logical axis "
                             f"names (not an nn.Partitioned box).")
        params[path] = leaf.value
        axes[path[:-1] + (path[-1] + "_axes",)] = flax_partitioning.AxisMetadata(
            names=tuple(leaf.names))
    return {"params": traverse_util.unflatten_dict(params),
            "params_axes": traverse_util.unflatten_dict(axes)}


def param_filter(trainable: str = "finetune") -> Callable[[str, Any], bool]:
    """A `flax.traverse_util.ModelParamTraversal` filter_fn selecting the trained parameters.

    trainable: "finetune" (adapters, routers, layer norms, LoRA factors: the paper's CoDA
    finetuning, section 3.3) or "all" (CoDA pretraining). Paths look like
    "/encoder/layers_0/adapter/up/kernel" (coda_flax.checkpoints.param_group groups them).
    """
    if trainable not in MODES:
        raise ValueError(f"param_filter: unknown trainable {trainable!r}; choose one of {MODES}.")
    if trainable == "all":
        return _train_all
    return _train_finetune_groups


def _train_all(path: str, value: Any) -> bool:
    del path, value
    return True


def _train_finetune_groups(path: str, value: Any) -> bool:
    del value
    return param_group(path) in FINETUNE_GROUPS

