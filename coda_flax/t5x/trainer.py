"""CodaTrainer: T5X's Trainer with CoDA's k annealing, differentiating only the trained parameters
(needs T5X installed; t5x/trainer.gin selects it as train.py's `trainer_cls`).

k annealing (paper appendix B): k goes from n to ceil(n / r) (or CodaConfig.num_routed) in a few
static stages over the first part of training, each stage a separately compiled train step of
the model with that k (`with_k`); the stages are the k plan's (coda_flax.kplan.KPlan, the same as
coda_flax's own trainer) and the one in force is chosen on the host from the step (KPlan.k_at),
so a resumed run continues with the k of its step. n is the encoder input length of the batches.
The metric `coda/k` records it.

Gradients: the loss is differentiated with respect to the parameters the model's optimizer
updates only (for T5X's MultiOptimizer: those its traversals select, e.g. t5x/model.gin's
TRAINABLE='finetune' adapters, routers and layer norms); the frozen backbone is a constant of
the step (its gradient entries are zeros the optimizer never reads, so XLA drops them). T5X's
own gradient accumulation (microbatches) and apply_grads do the rest.
"""

from __future__ import annotations

import itertools
import types
from typing import Any, Optional

import clu.metrics
import jax
import jax.numpy as jnp
from flax import core as flax_core
from flax import traverse_util

from coda_flax.kplan import KPlan
from coda_flax.t5x.models import CodaEncoderDecoderModel, NoUpdate, t5x  # checked import
from coda_flax.t5x.module import T5XEncoderDecoder

from t5x import trainer as trainer_lib  # noqa: E402  (after models' helpful ImportError)

__all__ = ["CodaTrainer", "trained_paths", "with_k"]


def trained_paths(optimizer_def, params) -> frozenset[str]:
    """'/'-joined paths of the parameters `optimizer_def` updates: for a T5X MultiOptimizer the
    ones its traversals select for a sub-optimizer other than NoUpdate, otherwise all."""
    flat = traverse_util.flatten_dict(flax_core.unfreeze(params), sep="/")
    traversals = getattr(optimizer_def, "traversals", None)
    if traversals is None:
        return frozenset(flat)
    names = traverse_util.unflatten_dict({k: k for k in flat}, sep="/")
    return frozenset(x for traversal, sub in zip(traversals, optimizer_def.sub_optimizers)
                     if not isinstance(sub, NoUpdate) for x in traversal.iterate(names))


def with_k(model: CodaEncoderDecoderModel, k: int) -> CodaEncoderDecoderModel:
    """A shallow copy of `model` whose encoder routes exactly k tokens per layer (its module
    is `T5XEncoderDecoder(config, k=k)`; the config is unchanged)."""
    copy = object.__new__(type(model))
    copy.__dict__.update(model.__dict__, module=T5XEncoderDecoder(model.config, k=k))
    return copy


def _split(params, paths):
    flat = traverse_util.flatten_dict(flax_core.unfreeze(params), sep="/")
    return ({k: v for k, v in flat.items() if k in paths},
            {k: v for k, v in flat.items() if k not in paths})


def _join(trained, frozen, like):
    tree = traverse_util.unflatten_dict({**trained, **frozen}, sep="/")
    return flax_core.freeze(tree) if isinstance(like, flax_core.FrozenDict) else tree


class CodaTrainer(trainer_lib.Trainer):
    """t5x.trainer.Trainer (same constructor arguments) plus the k schedule's settings.

    k_schedule_steps: the steps the k plan spans (t5x/trainer.gin: TRAIN_STEPS); keep it
      fixed across a stop and resume. k_anneal_fraction / k_anneal_stages: as
      coda_flax.kplan.KPlan.for_run (the fraction of k_schedule_steps that anneals k, and the
      number of distinct k values). A model without CoDA (or r = 1) trains with one stage.
    """

    def __init__(self, model, train_state, partitioner, eval_names, summary_dir,
                 train_state_axes, rng, learning_rate_fn, num_microbatches,
                 weight_metrics_computer=None, *, k_schedule_steps: int,
                 k_anneal_fraction: float = 0.1, k_anneal_stages: int = 4):
        if not hasattr(model, "config"):
            raise TypeError(f"CodaTrainer: the model must be a coda_flax.t5x."
                            f"CodaEncoderDecoderModel, got {type(model).__name__}.")
        if k_schedule_steps is None or int(k_schedule_steps) < 1:
            raise ValueError(f"CodaTrainer: k_schedule_steps must be >= 1 (the run's total "
                             f"steps), got {k_schedule_steps!r}.")
        super().__init__(model=model, train_state=train_state, partitioner=partitioner,
                         eval_names=eval_names, summary_dir=summary_dir,
                         train_state_axes=train_state_axes, rng=rng,
                         learning_rate_fn=learning_rate_fn, num_microbatches=num_microbatches,
                         weight_metrics_computer=weight_metrics_computer)
        self.k_schedule_steps = int(k_schedule_steps)
        self.k_anneal_fraction = float(k_anneal_fraction)
        self.k_anneal_stages = int(k_anneal_stages)
        self.trained = trained_paths(model.optimizer_def, train_state.params)
        self.plan: Optional[KPlan] = None               # set from the first batch's length n
        self._k = None                                  # k of the step being traced / run
        self._steps: dict[int, Any] = {}                # k -> partitioned train step
        self._compiled: dict[int, Any] = {}             # k -> compiled train step

    # ------------------------------------------------------------ the k plan
    def _set_length(self, batch) -> None:
        """self.plan from the first batch's encoder length n (coda_flax.kplan.KPlan.for_run)."""
        if self.plan is None:
            self.plan = KPlan.for_run(self._model.config.coda,
                                      int(batch["encoder_input_tokens"].shape[1]),
                                      self.k_schedule_steps, self.k_anneal_fraction,
                                      self.k_anneal_stages)

    # ------------------------------------------------------------ the train step
    def _step_for(self, k: int):
        if k not in self._steps:
            self._steps[k] = self._partitioner.partition(
                self._train_step_fn(k),
                in_axis_resources=(self._train_state_axes, self._partitioner.data_partition_spec),
                out_axis_resources=(self._train_state_axes, None), donate_argnums=(0,))
        return self._steps[k]

    def _train_step_fn(self, k: int):
        model = with_k(self._model, k)
        trained_keys = self.trained

        def train_step(train_state, batch):
            step = train_state.step
            params = train_state.params
            trained, frozen = _split(params, trained_keys)

            def loss_fn(trained_params, batch, dropout_rng, *flax_mutables):
                full = _join(trained_params, frozen, params)
                return model.loss_fn(full, batch, dropout_rng, *flax_mutables)

            # T5X's gradient accumulation, differentiating `trained` only.
            view = types.SimpleNamespace(params=trained,
                                         flax_mutables=getattr(train_state, "flax_mutables",
                                                               None))
            grads, metrics, flax_mutables = trainer_lib.accumulate_grads_microbatched(
                types.SimpleNamespace(loss_fn=loss_fn), view, batch,
                self._get_step_rng(step), self._num_microbatches,
                self._partitioner.data_partition_spec)
            zeros = {p: jnp.zeros_like(v) for p, v in frozen.items()}   # never read: dropped
            new_state, metrics = trainer_lib.apply_grads(
                train_state, _join(grads, zeros, params), metrics,
                self._learning_rate_fn(step), self._weight_metrics_computer,
                other_state_variables={"flax_mutables": flax_mutables} if flax_mutables
                else None)
            metrics["coda/k"] = clu.metrics.LastValue.from_model_output(
                jnp.asarray([k], jnp.float32))
            return new_state, metrics

        return train_step

    @property
    def _partitioned_train_step(self):
        return self._step_for(self._k)

    def compile_train(self, batch) -> None:
        """Compiles the step of the k in force at the current step (T5X calls this once)."""
        self._set_length(batch)
        k = self.plan.k_at(int(jax.device_get(self.train_state.step)))
        if k not in self._compiled:
            self._k = k
            self._compiled[k] = self._partitioner.compile(self._step_for(k), self.train_state,
                                                          batch)

    def train(self, batch_iter, num_steps: int, start_step: Optional[int] = None):
        """T5X's train loop, split where the k schedule changes stage."""
        first = next(batch_iter)
        self._set_length(first)
        batches = itertools.chain([first], batch_iter)
        step = int(start_step if start_step is not None
                   else jax.device_get(self.train_state.step))
        end = step + num_steps
        summary = None
        while step < end:
            self._k = self.plan.k_at(step)
            stop = min(end, self.plan.next_start(step) or end)
            self._compiled_train_step = self._compiled.get(self._k)
            summary = super().train(batches, stop - step, start_step=step)
            batches = batch_iter
            step = stop
        return summary
