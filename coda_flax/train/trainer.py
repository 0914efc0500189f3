"""The training loop: sharded state, k-annealing stages, orbax checkpoints, metrics.

    for each step:  k stage -> jitted step (compiled once per stage) -> metrics -> checkpoint

The k stages are the k plan's (coda_flax/kplan.py: `train` calls KPlan.for_run of the model's
CodaConfig over total_steps, k_anneal_fraction, k_anneal_stages, kept as `Trainer.plan`); each
stage's step runs `model.with_k(k)`.

Only trainable parameters (finetuning: adapters, routers, layer norms) are differentiated and
updated; the frozen backbone is passed through untouched. A run resumes exactly from its
latest checkpoint (parameters, optimizer state, step, rng and data position); SIGTERM saves
a checkpoint of the step it arrived in (any step, checkpoint and final steps included) and
raises `Preempted`.

Divergence guard: before a step's update is kept (and so before it can be saved) the loss, the
gradient norm and the updated trainable parameters must be finite, no parameter may exceed
`max_abs_param` in magnitude, and the update may not exceed `max_update_ratio` times the norm of
the parameters it changes (max(norm, 1)). A step that fails raises `TrainingDiverged` naming the
step (numbered as in metrics.jsonl: step N is the state after N updates) and the last checkpoint,
which is therefore always finite and sane; restoring also skips a checkpoint that is not (one
written by an older version) with a warning. A rerun with a lower learning rate resumes from it.

Steps are numbered the same everywhere: checkpoint N, metrics.jsonl row "step": N and the
messages all mean "after N updates". `train` holds MODEL_DIR/LOCK (coda_flax/train/lock.py):
a second run in the directory is refused; each checkpoint records the run's settings, and a
resume whose state does not fit names the settings that changed (ResumeError).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
import warnings
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util
from flax.core import meta
from tqdm.auto import tqdm

from coda_flax.checkpoints.integrity import read_or_raise, tree_digests, verify_arrays
from coda_flax.checkpoints.peft import trainable_mask
from coda_flax.kplan import KPlan
from coda_flax.train import partitioning
from coda_flax.train.lock import ModelDirLock
from coda_flax.train.optimizer import adafactor, learning_rate_schedule

Batch = Mapping[str, np.ndarray]
BatchesFn = Callable[[int], Iterator[Batch]]   # start batch index -> iterator (exact resume)


class TrainingDiverged(FloatingPointError):
    """A non-finite or insane step; the message names the step and the last good checkpoint."""


class ResumeError(ValueError):
    """The checkpoints in MODEL_DIR cannot be resumed by this run (settings changed, damage)."""


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint of the current step was saved and the run stopped."""


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    model_dir: str
    total_steps: int
    learning_rate: float = 1e-3
    schedule: str = "constant"                 # constant | rsqrt | cosine
    warmup_steps: int = 0
    trainable: str = "finetune"                # finetune | all
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    eval_every: int = 0                        # 0: only at the end
    seed: int = 0
    num_partitions: int = 1
    k_anneal_fraction: float = 0.1
    k_anneal_stages: int = 4
    parameter_scale: bool = True               # Adafactor's relative step size (T5X default)
    progress: bool = True
    max_abs_param: float = 1e6                 # divergence guard (0: off); see the module doc
    max_update_ratio: float = 10.0             # ||update|| / max(||params||, 1) (0: off)


# Settings that shape the checkpointed state (with every model_config field): when the saved
# state does not fit, the ones that changed since it was saved are named.
STATE_SETTINGS = ("trainable", "parameter_scale")


def split_params(params, mask):
    """(trainable, frozen): two nested dicts that together hold every parameter once."""
    flat, flat_mask = traverse_util.flatten_dict(params), traverse_util.flatten_dict(mask)
    pick = lambda keep: traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if bool(flat_mask[k]) == keep})
    return pick(True), pick(False)


def merge_params(trainable, frozen):
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen),
                                         **traverse_util.flatten_dict(trainable)})


class Trainer:
    """Trains a CodaT5Model (anything with config, loss_fn(params, batch, rng) and with_k)."""

    def __init__(self, model, config: TrainerConfig, mesh=None):
        self.model, self.cfg = model, config
        self.mesh = mesh or partitioning.make_mesh(config.num_partitions)
        self.lr = learning_rate_schedule(config.schedule, config.learning_rate,
                                         config.warmup_steps, config.total_steps)
        self.optimizer = adafactor(self.lr, config.parameter_scale)
        self.plan: KPlan | None = None          # the run's k plan, once train knows n
        self.compiled_stages: dict[int, Callable] = {}
        self.trace_count = 0
        self._init_cache: dict[tuple, tuple] = {}
        self._opt_init = jax.jit(self.optimizer.init)
        self._rng_init = jax.jit(lambda: jax.random.PRNGKey(config.seed + 1),
                                 out_shardings=partitioning.replicated(self.mesh))
        os.makedirs(config.model_dir, exist_ok=True)
        self.checkpoints = ocp.CheckpointManager(
            os.path.abspath(os.path.join(config.model_dir, "checkpoints")),
            options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                                 create=True))

    # ---------------------------------------------------------------- state
    def init_state(self, input_shapes: Mapping[str, tuple], initial_params=None):
        """Sharded params (fresh or from `initial_params`), optimizer state, step 0.

        The jitted initialisers are kept, so a second call (a rerun in one process, e.g.
        after `Preempted`) compiles nothing."""
        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        if key not in self._init_cache:
            boxed = jax.eval_shape(lambda: self.model.get_initial_variables(
                jax.random.PRNGKey(self.cfg.seed), input_shapes)["params"])
            shardings = partitioning.param_shardings(boxed, self.mesh)
            init = jax.jit(lambda rng: meta.unbox(self.model.get_initial_variables(
                rng, input_shapes)["params"]), out_shardings=shardings)
            self._init_cache[key] = (boxed, shardings, init)
        boxed, shardings, init = self._init_cache[key]
        if initial_params is None:
            params = init(jax.random.PRNGKey(self.cfg.seed))
        else:
            _check_fits(initial_params, meta.unbox(boxed))
            params = jax.jit(lambda p: p, out_shardings=shardings)(initial_params)
        self.mask = trainable_mask(params, self.cfg.trainable)
        trainable, frozen = split_params(params, self.mask)
        with jax.set_mesh(self.mesh):                     # state typed for the mesh, as steps are
            opt_state = self._opt_init(trainable)
        # The step keeps every array where it is, so each k stage compiles exactly once.
        self.shardings = jax.tree_util.tree_map(lambda x: x.sharding,
                                                (trainable, frozen, opt_state))
        rng = self._rng_init()                            # a global array, also multi-host
        return {"trainable": trainable, "frozen": frozen, "opt_state": opt_state,
                "step": 0, "rng": rng}

    def params(self, state):
        return merge_params(state["trainable"], state["frozen"])

    # ---------------------------------------------------------------- step
    def _step_fn(self, k: int):
        if k in self.compiled_stages:
            return self.compiled_stages[k]
        model = self.model.with_k(k)

        def step(trainable, frozen, opt_state, batch, rng):
            self.trace_count += 1                        # counts traces = compilations
            def loss(tr):
                return model.loss_fn(merge_params(tr, frozen), batch, rng)
            (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
            updates, opt_state = self.optimizer.update(grads, opt_state, trainable)
            param_norm = optax.tree.norm(trainable)
            trainable = optax.apply_updates(trainable, updates)
            metrics = dict(metrics, loss=value, grad_norm=optax.tree.norm(grads),
                           update_norm=optax.tree.norm(updates), param_norm=param_norm,
                           max_abs_param=_max_abs(trainable))
            return trainable, opt_state, metrics

        trainable_s, frozen_s, opt_s = self.shardings
        replicated = partitioning.replicated(self.mesh)
        fn = jax.jit(step, donate_argnums=(0, 2),
                     in_shardings=(trainable_s, frozen_s, opt_s,
                                   partitioning.batch_sharding(self.mesh), replicated),
                     out_shardings=(trainable_s, opt_s, replicated))
        self.compiled_stages[k] = fn
        return fn

    # ---------------------------------------------------------------- checkpoints
    def settings(self) -> dict[str, Any]:
        """What this run was configured with (saved with every checkpoint, compared on resume)."""
        cfg = {k: v for k, v in dataclasses.asdict(self.cfg).items()
               if k not in ("model_dir", "progress")}
        model = getattr(self.model, "config", None)
        if dataclasses.is_dataclass(model):
            cfg["model_config"] = dataclasses.asdict(model)
        return json.loads(json.dumps(cfg, default=str))          # tuples -> lists, as saved

    def save(self, state, data_position: int, force: bool = False):
        step = int(state["step"])
        if step in self.checkpoints.all_steps():     # already saved (e.g. SIGTERM on a save step)
            return
        self.checkpoints.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_nested(state)),
            meta=ocp.args.JsonSave({"step": step, "data_position": data_position,
                                    "settings": self.settings(),
                                    "sha256": tree_digests(_nested(state))})),
            force=force)
        self.checkpoints.wait_until_finished()

    def restore_latest(self, state):
        """The latest usable checkpoint restored into `state`'s structure; None if there is none.

        A checkpoint that cannot be read (damaged) or whose trainable parameters are not
        finite and sane is skipped with a warning, and the one before it is tried. When the
        saved state does not fit this run, the settings that changed are named (ResumeError).
        """
        steps = sorted(self.checkpoints.all_steps(), reverse=True)
        if not steps:
            return None
        where = f"{self.cfg.model_dir}/checkpoints"
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _nested(state))
        problems = []
        for step in steps:
            saved = _read_meta(self.checkpoints.directory, step)
            changed = _changed(saved.get("settings") if saved else None, self.settings())
            try:
                restored = self._read(step, abstract)
                self._verify(restored, step)
            except Exception as e:                       # noqa: BLE001 (orbax raises many kinds)
                shaping = {k: v for k, v in changed.items()
                           if k in STATE_SETTINGS or k.startswith("model_config.")}
                if shaping:
                    raise ResumeError(
                        f"{where} step {step} was saved with other settings, and its state does "
                        f"not fit this run: {_describe_changes(shaping)}. Use the saved settings "
                        f"to resume, or a new MODEL_DIR to start again.") from None
                problems.append(f"step {step}: {_one_line(e)}")
                warnings.warn(f"checkpoint step {step} in {where} cannot be read "
                              f"({_one_line(e)}); trying the one before it.", stacklevel=2)
                continue
            bad = self._insane(restored["state"]["trainable"])
            if bad:
                problems.append(f"step {step}: {bad}")
                warnings.warn(f"checkpoint step {step} in {where} is not usable ({bad}); "
                              f"trying the one before it.", stacklevel=2)
                continue
            if changed:
                print(f"[train] resuming from step {step} with changed settings: "
                      f"{_describe_changes(changed)}", file=sys.stderr)
            self._set_aside([s for s in steps if s > step])
            state = dict(restored["state"], step=int(restored["meta"]["step"]))
            return state, int(restored["meta"]["data_position"])
        raise ResumeError(f"no usable checkpoint in {where}: {'; '.join(problems)}. Delete the "
                          f"damaged step directories (or use a new MODEL_DIR) to start again.")

    def _state_dir(self, step) -> str:
        return os.path.join(str(self.checkpoints.directory), str(step), "state")

    def _read(self, step, abstract):
        """Step `step` restored; a tensorstore failure becomes an IntegrityError naming the array
        (other failures, e.g. another tree, are raised as they are)."""
        def restore():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return self.checkpoints.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return read_or_raise(restore, self._state_dir(step),
                             damaged=lambda e: "tensorstore" in str(e).lower())

    def _verify(self, restored, step):
        """IntegrityError naming the array whose bytes differ from the digest saved with it."""
        where = self._state_dir(step)
        if "sha256" in restored["meta"]:
            verify_arrays(restored["state"], restored["meta"]["sha256"], where)
        else:
            warnings.warn(f"{where} records no sha256 digests (written by an older coda_flax): "
                          f"not verified.", stacklevel=3)

    def _set_aside(self, steps):
        """Moves unusable checkpoints to MODEL_DIR/unusable_checkpoints (kept for inspection),
        so that the resumed run can save those steps again."""
        if not steps or jax.process_index() != 0:
            return
        aside = os.path.join(self.cfg.model_dir, "unusable_checkpoints")
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(os.path.join(str(self.checkpoints.directory), str(step)), target)
            warnings.warn(f"checkpoint step {step} moved to {target}.", stacklevel=3)
        self.checkpoints.reload()

    # ---------------------------------------------------------------- divergence guard
    def _insane(self, trainable) -> str | None:
        """Why these trainable parameters are not finite and sane, or None."""
        with jax.set_mesh(self.mesh):
            biggest = float(jax.jit(_max_abs)(trainable))
        if not np.isfinite(biggest):
            return "a trainable parameter is not finite"
        if self.cfg.max_abs_param and biggest > self.cfg.max_abs_param:
            return (f"a trainable parameter has |value| {biggest:.3g} > max_abs_param "
                    f"{self.cfg.max_abs_param:g}")
        return None

    def divergence(self, metrics: Mapping[str, Any]) -> str | None:
        """Why a step's update must not be kept (loss, gradient, update, parameters), or None."""
        m = {k: float(metrics[k]) for k in ("loss", "grad_norm", "update_norm", "param_norm",
                                            "max_abs_param")}
        for key, what in (("loss", "the loss"), ("grad_norm", "the gradient norm"),
                          ("update_norm", "the update norm"),
                          ("max_abs_param", "an updated parameter")):
            if not np.isfinite(m[key]):
                return f"{what} is {m[key]}"
        cfg = self.cfg
        if cfg.max_abs_param and m["max_abs_param"] > cfg.max_abs_param:
            return (f"an updated parameter has |value| {m['max_abs_param']:.3g} > max_abs_param "
                    f"{cfg.max_abs_param:g} (loss {m['loss']:.4g})")
        if cfg.max_update_ratio and m["update_norm"] > cfg.max_update_ratio * max(
                m["param_norm"], 1.0):
            return (f"the update norm {m['update_norm']:.3g} is more than max_update_ratio "
                    f"{cfg.max_update_ratio:g} x the parameter norm "
                    f"max({m['param_norm']:.3g}, 1) (loss {m['loss']:.4g})")
        return None

    # ---------------------------------------------------------------- loop
    def train(self, state, batches: BatchesFn, n: int, eval_fn=None, resume: bool = True):
        """Runs to cfg.total_steps over encoder inputs of n tokens, each step's k from the run's
        k plan (self.plan: KPlan.for_run of the model's CodaConfig); returns (state, history of
        logged metrics). MODEL_DIR is locked meanwhile (by process 0)."""
        cfg = self.cfg
        with (ModelDirLock(cfg.model_dir) if jax.process_index() == 0
              else contextlib.nullcontext()):
            start_position = 0
            if resume:
                restored = self.restore_latest(state)
                if restored is not None:
                    state, start_position = restored
            self.plan = plan = KPlan.for_run(self.model.config.coda, n, cfg.total_steps,
                                             cfg.k_anneal_fraction, cfg.k_anneal_stages)
            vocab_size = getattr(getattr(self.model, "config", None), "vocab_size", None)
            history: list[dict] = []
            stop = {"signal": None}
            previous = signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
            writer = MetricsWriter(cfg.model_dir)
            step = state["step"]
            bar = tqdm(total=cfg.total_steps, initial=step, disable=not cfg.progress,
                       desc="train", dynamic_ncols=True)
            data = batches(start_position)
            position = start_position
            t0, tokens = time.time(), 0

            def preempt_if_signalled():
                if stop["signal"] is not None:
                    self.save(state, position, force=True)     # a no-op when this step is saved
                    raise Preempted(f"signal {stop['signal']}: saved step {step} in "
                                    f"{cfg.model_dir}/checkpoints; run again to resume.")
            try:
                while step < cfg.total_steps:
                    batch = next(data)
                    position += 1
                    if vocab_size:
                        check_token_ids(batch, vocab_size, f"training batch {position}")
                    k = plan.k_at(step)
                    fn = self._step_fn(k)
                    rng = jax.random.fold_in(state["rng"], step)
                    with jax.set_mesh(self.mesh):
                        sharded = partitioning.shard_batch(batch, self.mesh)
                        trainable, opt_state, metrics = fn(state["trainable"], state["frozen"],
                                                           state["opt_state"], sharded, rng)
                    loss = float(metrics["loss"])
                    reason = self.divergence(metrics)
                    if reason is not None:      # the update is dropped: nothing of it is saved
                        writer.write(step + 1, {"k": k, "reason": reason, **{
                            name: float(v) for name, v in metrics.items()}}, "diverged")
                        last = self.checkpoints.latest_step()
                        good = "none" if last is None else f"step {last}"
                        raise TrainingDiverged(
                            f"training diverged at step {step + 1}: {reason}; the update was not "
                            f"kept or saved. The last good checkpoint is {good} in "
                            f"{cfg.model_dir}/checkpoints: rerun with a lower learning rate (it "
                            f"resumes from {'scratch' if last is None else good}) or check the "
                            f"data.")
                    state = dict(state, trainable=trainable, opt_state=opt_state, step=step + 1)
                    step += 1
                    inputs = np.asarray(batch["encoder_input_tokens"])
                    if inputs.ndim == 3:               # patches / frames: column 0 is the position
                        inputs = inputs[..., 0]
                    tokens += int(np.sum(np.asarray(batch["decoder_loss_weights"]) > 0)) + int(
                        np.sum(inputs > 0))
                    if step % cfg.log_every == 0 or step == cfg.total_steps:
                        elapsed = max(time.time() - t0, 1e-9)
                        row = {"step": step, "k": k, "learning_rate": float(self.lr(step)),
                               "tokens_per_s": tokens / elapsed,
                               **{name: float(v) for name, v in metrics.items()}}
                        history.append(row)
                        writer.write(step, row, "train")
                        # The step's loss is a sum over target tokens (T5X's loss_fn); the bar shows
                        # it per token, the number to compare across batch sizes and lengths.
                        per_token = loss / max(float(metrics.get("weight_sum", 1.0)), 1.0)
                        bar.set_postfix(loss_per_token=f"{per_token:.4f}", k=k,
                                        tok_s=f"{row['tokens_per_s']:.0f}")
                        t0, tokens = time.time(), 0
                    bar.update(1)
                    if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0:
                        writer.write(step, eval_fn(self.params(state), step), "eval")
                    if step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
                        self.save(state, position)
                    preempt_if_signalled()
                if eval_fn is not None and step == cfg.total_steps:
                    writer.write(step, eval_fn(self.params(state), step), "eval")
                preempt_if_signalled()                 # SIGTERM during the final evaluation
            finally:
                signal.signal(signal.SIGTERM, previous)
                bar.close()
                writer.close()
        return state, history


def _max_abs(tree):
    """The largest |value| over the tree's arrays (0 for an empty tree). NaN propagates through
    max, so a non-finite parameter shows as a non-finite result."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros(())
    return jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in leaves]))


TOKEN_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")


def check_token_ids(batch: Mapping[str, Any], vocab_size: int, where: str = "batch") -> None:
    """ValueError naming the first integer token id outside [0, vocab_size) (a vocabulary that
    does not match the model, or damaged data): out of range ids give no error inside jit, only
    garbage (non-finite) logits. Float inputs (image patches, audio frames) are not ids."""
    for key in TOKEN_KEYS:
        if key not in batch:
            continue
        x = np.asarray(batch[key])
        if x.size == 0 or not np.issubdtype(x.dtype, np.integer):
            continue
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{where}: {key} holds token id {bad}, outside the model's "
                             f"vocabulary [0, {vocab_size}); the data's vocabulary does not "
                             f"match model_config.vocab_size (or the data is damaged).")


class MetricsWriter:
    """metrics.jsonl plus TensorBoard event files in model_dir."""

    def __init__(self, model_dir: str):
        self.path = os.path.join(model_dir, "metrics.jsonl")
        self.file = open(self.path, "a")
        self.tb = _tensorboard_writer(model_dir)

    def write(self, step: int, metrics: Mapping[str, Any], split: str):
        row = {"split": split, "step": step, **{k: _py(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.tb is not None:
            scalars = {f"{split}/{k}": v for k, v in row.items()
                       if k not in ("split", "step") and isinstance(v, (int, float))}
            self.tb.write_scalars(step, scalars)
            self.tb.flush()

    def close(self):
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(model_dir: str, split: str | None = None) -> list[dict]:
    """The rows of model_dir/metrics.jsonl (of one split if given); [] without the file.

    A line that is not JSON (a run killed mid-write) is skipped."""
    rows = []
    try:
        with open(os.path.join(model_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if split is None or row.get("split") == split:
                    rows.append(row)
    except OSError:
        pass
    return rows


def _tensorboard_writer(model_dir: str):
    try:
        from clu import metric_writers
    except ImportError:      # clu is in the `train` extra; metrics.jsonl is always written
        return None
    return metric_writers.SummaryWriter(os.path.join(model_dir, "tensorboard"))


def _py(v):
    if isinstance(v, (np.generic, jnp.ndarray)) and np.ndim(v) == 0:
        return v.item()
    return v


def _nested(state) -> dict[str, Any]:
    """The checkpointed part of the state (everything but the step, which is in meta)."""
    return {k: state[k] for k in ("trainable", "frozen", "opt_state", "rng")}


def _check_fits(params, expected):
    """Names the first parameter whose presence or shape differs from the model's."""
    got = {"/".join(k): np.shape(v) for k, v in traverse_util.flatten_dict(params).items()}
    want = {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(expected).items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = [k for k in sorted(set(want) & set(got)) if got[k] != want[k]]
    if missing or extra or bad:
        lines = ([f"missing from the checkpoint: {', '.join(missing[:5])}"] if missing else []) + \
                ([f"not in the model: {', '.join(extra[:5])}"] if extra else []) + \
                [f"{k}: checkpoint {got[k]} vs model {want[k]}" for k in bad[:5]]
        raise ValueError("the initial checkpoint does not fit the model config:\n  " +
                         "\n  ".join(lines) + "\nUse the gin model file that matches the "
                         "checkpoint (or convert it with `coda convert`).")


def _read_meta(directory, step: int) -> dict | None:
    """A checkpoint's meta item (step, data position, settings) read as plain JSON."""
    path = os.path.join(str(directory), str(step), "meta", "metadata")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _flat_settings(d, prefix=""):
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            yield from _flat_settings(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _changed(saved: Mapping[str, Any] | None, now: Mapping[str, Any]) -> dict[str, tuple]:
    """{setting: (saved, now)} for every setting that differs; {} when none was recorded."""
    if not saved:
        return {}
    a, b = dict(_flat_settings(saved)), dict(_flat_settings(now))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _describe_changes(changed: Mapping[str, tuple]) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"
