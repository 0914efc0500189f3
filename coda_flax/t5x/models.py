"""CodaEncoderDecoderModel: CoDA as a `t5x.models.EncoderDecoderModel` (needs T5X installed).

    MODEL = @coda_t5x.CodaEncoderDecoderModel()          # gin/t5x/model.gin
    coda_t5x.CodaEncoderDecoderModel.config = @coda_t5x.model_config()

Everything T5X does with a model (loss_fn, eval_fn, score_batch, predict_batch_with_aux with
its beam search / temperature sampling, the feature converter) is T5X's own code; this class
only builds the module (`T5XEncoderDecoder(config)`) and emits the `params_axes` collection
T5X's train state and partitioner need; for an image model (ModelConfig.encoder_input
"patches", the Pix2Struct presets) its feature converter is ContinuousEncDecFeatureConverter, so
that T5X's train / eval / infer feed the task's float patches [n, 2 + p*p*C] as
`encoder_input_tokens`. `logical_factor_rules` extends Adafactor's
factorisation rules with CoDA's axis names; `save_t5x_checkpoint` writes coda_flax parameters
(e.g. `coda convert` output) as a T5X checkpoint that train.py can start from.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import core as flax_core
from flax import struct as flax_struct
from jax.sharding import PartitionSpec

from coda_flax.config import ModelConfig
from coda_flax.t5x.module import FACTOR_RULES, T5XEncoderDecoder, param_filter, split_axes

INSTALL_HINT = ("T5X is not on PyPI; install it from source, e.g. `pip install "
                "'t5x @ git+https://github.com/google-research/t5x'` (or `git clone "
                "https://github.com/google-research/t5x && pip install -e ./t5x`). coda_flax's "
                "own trainer (`python -m coda_flax.train`) needs no T5X.")


def _import_t5x():
    try:
        import t5x
    except ImportError as e:
        raise ImportError(f"coda_flax.t5x needs the t5x package, which is not installed. "
                          f"{INSTALL_HINT}") from e
    try:
        import t5x.adafactor
        import t5x.decoding
        import t5x.models
        import t5x.optimizers
    except ImportError as e:
        raise ImportError(f"coda_flax.t5x: importing t5x failed ({e}); T5X is installed but "
                          f"one of its dependencies is missing or incompatible. "
                          f"{INSTALL_HINT}") from e
    return t5x


t5x = _import_t5x()

__all__ = ["CodaEncoderDecoderModel", "logical_factor_rules", "save_t5x_checkpoint",
           "Adafactor", "NoUpdate", "finetuning_optimizer"]


class CodaEncoderDecoderModel(t5x.models.EncoderDecoderModel):
    """T5X's EncoderDecoderModel around `T5XEncoderDecoder(config)` (CoDA encoder layers).

    config: the coda_flax ModelConfig (`coda_flax.t5x.model_config` builds one in gin).
    The other arguments are T5X's (input/output vocabulary, optimizer_def, decode_fn,
    feature_converter_cls, label_smoothing, z_loss, loss_normalizing_factor,
    default_decoder_params). The output vocabulary must fit in config.vocab_size.
    feature_converter_cls None: seqio.EncDecFeatureConverter for token inputs,
    ContinuousEncDecFeatureConverter (float vectors in, unpacked) for image patches / frames.
    """

    def __init__(self, config: ModelConfig, input_vocabulary, output_vocabulary,
                 optimizer_def, decode_fn: Callable = t5x.decoding.beam_search,
                 feature_converter_cls: Optional[Callable[..., Any]] = None,
                 label_smoothing: float = 0.0, z_loss: float = 0.0,
                 loss_normalizing_factor=None, default_decoder_params=None):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"CodaEncoderDecoderModel: config must be a coda_flax ModelConfig "
                            f"(e.g. @coda_t5x.model_config() in gin), got "
                            f"{type(config).__name__}.")
        if config.head != "decoder":
            raise ValueError(f"CodaEncoderDecoderModel: config.head is {config.head!r}; T5X's "
                             f"EncoderDecoderModel needs the text decoder (head='decoder'). "
                             f"CTC models train with `coda train` only.")
        if feature_converter_cls is None and config.encoder_input != "tokens":
            from coda_flax.tasks.features import ContinuousEncDecFeatureConverter
            feature_converter_cls = ContinuousEncDecFeatureConverter
        for name, vocab in (("input", input_vocabulary), ("output", output_vocabulary)):
            size = _vocab_size(vocab)
            if size is not None and size > config.vocab_size:
                raise ValueError(f"CodaEncoderDecoderModel: the {name} vocabulary has {size} "
                                 f"ids but config.vocab_size is {config.vocab_size}; use a "
                                 f"vocab_size >= {size}.")
        self.config = config
        super().__init__(module=T5XEncoderDecoder(config), input_vocabulary=input_vocabulary,
                         output_vocabulary=output_vocabulary, optimizer_def=optimizer_def,
                         decode_fn=decode_fn, feature_converter_cls=feature_converter_cls,
                         label_smoothing=label_smoothing, z_loss=z_loss,
                         loss_normalizing_factor=loss_normalizing_factor,
                         default_decoder_params=default_decoder_params)

    def __repr__(self):
        return f"CodaEncoderDecoderModel({self.config!r})"

    def get_initial_variables(self, rng, input_shapes: Mapping[str, Any],
                              input_types: Optional[Mapping[str, Any]] = None):
        """T5X's initialisation, then {"params": arrays, "params_axes": logical axis names}
        (T5X's layout) from the module's nn.Partitioned boxes."""
        variables = super().get_initial_variables(rng, input_shapes, input_types)
        return flax_core.freeze(split_axes(flax_core.unfreeze(variables)))


def _vocab_size(vocab) -> int | None:
    """The vocabulary's size, or None where it cannot be read now (e.g. a SentencePiece model
    on gs:// while offline: T5X reports that itself when it first uses the vocabulary)."""
    try:
        return int(vocab.vocab_size)
    except Exception:  # noqa: BLE001 (only a best-effort early check)
        return None


def logical_factor_rules():
    """t5x.adafactor.standard_logical_factor_rules() plus CoDA's axis names (kv_heads, adapter,
    lora_rank): bind as adafactor.Adafactor.logical_factor_rules."""
    adafactor = t5x.adafactor
    rules = dict(flax_core.unfreeze(adafactor.standard_logical_factor_rules()))
    for name, dim in FACTOR_RULES.items():
        rules.setdefault(name, adafactor.factor_name_to_factordim(dim))
    return flax_core.freeze(rules)


class Adafactor(t5x.adafactor.Adafactor):
    """t5x.adafactor.Adafactor whose factorisation rules (from `logical_factor_rules`) name the
    heuristic rule for parameters of rank <= 2 without a batch dimension.

    T5X applies its heuristics (factor the two largest dimensions) to those whatever the logical
    rule says, logging "... the provided factor rule ... is ignored" once per parameter; here
    they get that heuristic rule explicitly: the same optimizer, without the dozens of warnings.
    The rank-3 attention kernels keep their logical rules (embed = row, heads / kv = column).
    """

    def set_param_axes(self, param_logical_axes):
        super().set_param_axes(param_logical_axes)
        factor_map = self.hyper_params.factor_map
        if not factor_map:
            return
        adafactor = t5x.adafactor

        def rule(value):
            if (isinstance(value, tuple) and len(value) <= 2
                    and adafactor.FactorDim.BATCH not in value):
                return adafactor.HEURISTIC_RULE
            return value

        self.hyper_params = self.hyper_params.replace(
            factor_map={path: rule(value) for path, value in factor_map.items()})


@flax_struct.dataclass
class _NoUpdateHyperParams:
    learning_rate: Any = None       # T5X's trainer sets it on every optimizer; unused


class NoUpdate(t5x.optimizers.OptimizerDef):
    """Leaves its parameters unchanged (the frozen backbone of `finetuning_optimizer`).

    It keeps a 0-d placeholder as each parameter's state instead of T5X MultiOptimizer's `None`
    for parameters no sub-optimizer selects: orbax writes `None` leaves without data, and T5X's
    restore then fails to read them (NOT_FOUND ... param_states.<frozen parameter>) when a
    finetuning run resumes from its checkpoint. With a state per parameter the checkpoint
    round-trips; the cost is one float per frozen parameter tensor.
    """

    def __init__(self):
        super().__init__(_NoUpdateHyperParams())

    def init_state(self, params):
        placeholders = jax.tree_util.tree_map(lambda _: jnp.zeros((), jnp.float32), params)
        return t5x.optimizers.OptimizerState(jnp.asarray(0, jnp.int32), placeholders)

    def apply_gradient(self, hyper_params, params, state, grads):
        del hyper_params, grads
        return params, t5x.optimizers.OptimizerState(state.step + 1, state.param_states)

    def derive_logical_axes(self, optimizer, param_logical_axes):
        """Placeholders are replicated (an empty PartitionSpec each)."""
        axes = jax.tree_util.tree_map(lambda _: PartitionSpec(), optimizer.state.param_states)
        return optimizer.replace(
            state=optimizer.state.replace(param_states=axes),  # step, as T5X's optimizers
            target=param_logical_axes)


def finetuning_optimizer(optimizer, trainable: str = "finetune"):
    """`optimizer` (e.g. Adafactor) on the parameters `param_filter(trainable)` selects, the
    others frozen (`NoUpdate`): t5x/model.gin's OPTIMIZER.

    A t5x.optimizers.MultiOptimizer of (selected, optimizer) and (the rest, NoUpdate()); with
    trainable="all" it is `optimizer` alone.
    """
    selected = param_filter(trainable)
    if trainable == "all":
        return optimizer
    from flax import traverse_util
    return t5x.optimizers.MultiOptimizer((
        (traverse_util.ModelParamTraversal(selected), optimizer),
        (traverse_util.ModelParamTraversal(lambda path, value: not selected(path, value)),
         NoUpdate())))


def save_t5x_checkpoint(params: Mapping[str, Any], config: ModelConfig, directory: str, *,
                        step: int = 0, dtype: str = "float32") -> str:
    """Writes coda_flax parameters as a T5X checkpoint: `directory/checkpoint_{step}`.

    params: the nested parameter dict (e.g. from coda_flax.checkpoints.load_checkpoint on
    `coda convert` output), checked against config. The checkpoint holds the parameters and
    the step (no optimizer state): start T5X's train.py from it with
    INITIAL_CHECKPOINT_PATH=<returned path>. Returns the checkpoint directory.
    """
    import jax
    import numpy as np
    from t5x import checkpoints, partitioning, train_state as train_state_lib

    from coda_flax.checkpoints.tree import check_flat_params, expected_shapes, flatten_params
    from coda_flax.model import init_args

    flat = flatten_params(params)
    check_flat_params(flat, expected_shapes(config), "save_t5x_checkpoint")
    boxed = jax.eval_shape(lambda: T5XEncoderDecoder(config).init(
        jax.random.PRNGKey(0), *init_args(config)))     # token ids or patches
    axes = split_axes(boxed)["params_axes"]
    variables = {"params": jax.tree_util.tree_map(np.asarray, dict(params)),
                 "params_axes": axes}
    state = train_state_lib.InferenceState.create(flax_core.freeze(variables))
    state = state.replace_step(jax.numpy.asarray(step, jax.numpy.int32))
    partitioner = partitioning.PjitPartitioner(num_partitions=1)
    os.makedirs(directory, exist_ok=True)
    checkpointer = checkpoints.Checkpointer(
        state, partitioner, directory, save_dtype=jax.numpy.dtype(dtype))
    checkpointer.save(state)
    return os.path.join(directory, f"checkpoint_{step}")
