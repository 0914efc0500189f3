"""The training loop: sharded state, k-annealing stages, orbax checkpoints, metrics.

    for each step:  k stage -> jitted step (compiled once per stage) -> metrics -> checkpoint

Only trainable parameters (finetuning: adapters, routers, layer norms) are differentiated and
updated; the frozen backbone is passed through untouched. A run resumes exactly from its
latest checkpoint (parameters, optimizer state, step, rng and data position); SIGTERM saves
a checkpoint and raises `Preempted`; a non-finite loss stops the run and keeps the last good
checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util
from flax.core import meta
from tqdm.auto import tqdm

from coda_flax.checkpoints.peft import trainable_mask
from coda_flax.train import partitioning
from coda_flax.train.optimizer import KStage, adafactor, k_at, k_schedule, learning_rate_schedule

Batch = Mapping[str, np.ndarray]
BatchesFn = Callable[[int], Iterator[Batch]]   # start batch index -> iterator (exact resume)


class TrainingDiverged(FloatingPointError):
    """A non-finite loss; the message names the step and the last good checkpoint."""


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
    """Trains a CodaT5Model (anything with loss_fn(params, batch, rng) and with_config)."""

    def __init__(self, model, config: TrainerConfig, mesh=None):
        self.model, self.cfg = model, config
        self.mesh = mesh or partitioning.make_mesh(config.num_partitions)
        self.lr = learning_rate_schedule(config.schedule, config.learning_rate,
                                         config.warmup_steps, config.total_steps)
        self.optimizer = adafactor(self.lr, config.parameter_scale)
        self.compiled_stages: dict[int, Callable] = {}
        self.trace_count = 0
        os.makedirs(config.model_dir, exist_ok=True)
        self.checkpoints = ocp.CheckpointManager(
            os.path.abspath(os.path.join(config.model_dir, "checkpoints")),
            options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                                 create=True))

    # ---------------------------------------------------------------- state
    def k_stages(self, n: int) -> list[KStage]:
        coda = self.model.config.coda
        if coda is None or (coda.reduction == 1 and coda.num_routed is None):
            return [KStage(0, n)]
        return k_schedule(n, coda.reduction, self.cfg.total_steps, self.cfg.k_anneal_fraction,
                          self.cfg.k_anneal_stages, target_k=coda.num_routed)

    def init_state(self, input_shapes: Mapping[str, tuple], initial_params=None):
        """Sharded params (fresh or from `initial_params`), optimizer state, step 0."""
        boxed = jax.eval_shape(lambda: self.model.get_initial_variables(
            jax.random.PRNGKey(self.cfg.seed), input_shapes)["params"])
        shardings = partitioning.param_shardings(boxed, self.mesh)
        if initial_params is None:
            init = jax.jit(lambda rng: meta.unbox(self.model.get_initial_variables(
                rng, input_shapes)["params"]), out_shardings=shardings)
            params = init(jax.random.PRNGKey(self.cfg.seed))
        else:
            _check_fits(initial_params, meta.unbox(boxed))
            params = jax.jit(lambda p: p, out_shardings=shardings)(initial_params)
        self.mask = trainable_mask(params, self.cfg.trainable)
        trainable, frozen = split_params(params, self.mask)
        with jax.set_mesh(self.mesh):                     # state typed for the mesh, as steps are
            opt_state = jax.jit(self.optimizer.init)(trainable)
        # The step keeps every array where it is, so each k stage compiles exactly once.
        self.shardings = jax.tree_util.tree_map(lambda x: x.sharding,
                                                (trainable, frozen, opt_state))
        rng = jax.jit(lambda: jax.random.PRNGKey(self.cfg.seed + 1),      # a global array,
                      out_shardings=partitioning.replicated(self.mesh))()  # also multi-host
        return {"trainable": trainable, "frozen": frozen, "opt_state": opt_state,
                "step": 0, "rng": rng}

    def params(self, state):
        return merge_params(state["trainable"], state["frozen"])

    # ---------------------------------------------------------------- step
    def _step_fn(self, k: int, n: int):
        if k in self.compiled_stages:
            return self.compiled_stages[k]
        config = self.model.config
        model = self.model if config.coda is None else self.model.with_config(
            config.with_coda(num_routed=k))

        def step(trainable, frozen, opt_state, batch, rng):
            self.trace_count += 1                        # counts traces = compilations
            def loss(tr):
                return model.loss_fn(merge_params(tr, frozen), batch, rng)
            (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(trainable)
            updates, opt_state = self.optimizer.update(grads, opt_state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            metrics = dict(metrics, loss=value, grad_norm=optax.tree.norm(grads))
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
    def save(self, state, data_position: int, force: bool = False):
        step = int(state["step"])
        self.checkpoints.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(_nested(state)),
            meta=ocp.args.JsonSave({"step": step, "data_position": data_position})),
            force=force)
        self.checkpoints.wait_until_finished()

    def restore_latest(self, state):
        """Restores the latest checkpoint into `state`'s structure; None if there is none."""
        step = self.checkpoints.latest_step()
        if step is None:
            return None
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _nested(state))
        restored = self.checkpoints.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        state = dict(restored["state"], step=int(restored["meta"]["step"]))
        return state, int(restored["meta"]["data_position"])

    # ---------------------------------------------------------------- loop
    def train(self, state, batches: BatchesFn, n: int, eval_fn=None, resume: bool = True):
        """Runs to cfg.total_steps; returns (state, history of logged metrics)."""
        cfg = self.cfg
        start_position = 0
        if resume:
            restored = self.restore_latest(state)
            if restored is not None:
                state, start_position = restored
        stages = self.k_stages(n)
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
        try:
            while step < cfg.total_steps:
                batch = next(data)
                position += 1
                k = k_at(stages, step)
                fn = self._step_fn(k, n)
                rng = jax.random.fold_in(state["rng"], step)
                with jax.set_mesh(self.mesh):
                    sharded = partitioning.shard_batch(batch, self.mesh)
                    trainable, opt_state, metrics = fn(state["trainable"], state["frozen"],
                                                       state["opt_state"], sharded, rng)
                loss = float(metrics["loss"])
                if not np.isfinite(loss):
                    last = self.checkpoints.latest_step()
                    raise TrainingDiverged(
                        f"loss is {loss} at step {step}; stopped without saving. The last good "
                        f"checkpoint is {'step ' + str(last) if last is not None else 'none'} in "
                        f"{cfg.model_dir}/checkpoints. Lower the learning rate or check the data.")
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
                    bar.set_postfix(loss=f"{loss:.4f}", k=k, tok_s=f"{row['tokens_per_s']:.0f}")
                    t0, tokens = time.time(), 0
                bar.update(1)
                if eval_fn is not None and cfg.eval_every and step % cfg.eval_every == 0:
                    writer.write(step, eval_fn(self.params(state), step), "eval")
                if step % cfg.checkpoint_every == 0 or step == cfg.total_steps:
                    self.save(state, position)
                if stop["signal"] is not None:
                    self.save(state, position, force=True)
                    raise Preempted(f"signal {stop['signal']}: saved step {step} in "
                                    f"{cfg.model_dir}/checkpoints; run again to resume.")
            if eval_fn is not None and step == cfg.total_steps:
                writer.write(step, eval_fn(self.params(state), step), "eval")
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
            writer.close()
        return state, history


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
