"""Trains a tiny CoDA model 3 steps through T5X's PjitPartitioner and CodaTrainer and prints
(after "RESULT") the losses and the per-device shard shapes of a few kernels as JSON:

    python tests/t5x_mesh_worker.py MODEL_AXIS ...    # e.g. 2 4: one run per model axis

On CPU, T5X's default mesh puts every device on 'model' whatever num_partitions says (its
get_cpu_mesh), so the mesh is given as model_parallel_submesh=(1, 1, 1, MODEL_AXIS): 'model'
has MODEL_AXIS devices, 'data' the rest. Run with
XLA_FLAGS=--xla_force_host_platform_device_count=8 for 8 virtual CPU devices.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import seqio
from flax import traverse_util
from t5x import partitioning
from t5x import train_state as train_state_lib

from coda_flax import CodaConfig, tiny_config
from coda_flax.t5x import (Adafactor, CodaEncoderDecoderModel, CodaTrainer, axis_rules,
                           finetuning_optimizer, logical_factor_rules)

NAMES = ["encoder/layers_0/adapter/down/kernel", "encoder/layers_0/adapter/up/kernel",
         "encoder/layers_0/router/kernel", "encoder/layers_0/attention/query/kernel",
         "encoder/layers_0/attention/key/kernel", "encoder/layers_0/mlp/wi_0/kernel",
         "encoder/layers_0/mlp/wo/kernel", "token_embedder/embedding"]
B, N, L, STEPS = 8, 16, 6, 3


def run(model_axis: int) -> dict:
    config = tiny_config(CodaConfig(reduction=2, adapter_dim=8), num_heads=4, num_kv_heads=4,
                         vocab_size=264)
    vocab = seqio.ByteVocabulary()                                    # 259 ids
    opt = finetuning_optimizer(Adafactor(decay_rate=0.8,
                                         logical_factor_rules=logical_factor_rules()), "finetune")
    model = CodaEncoderDecoderModel(config, vocab, vocab, opt, z_loss=1e-4)
    rules = partitioning.standard_logical_axis_rules(additional_rules=axis_rules(config))
    partitioner = partitioning.PjitPartitioner(
        model_parallel_submesh=(1, 1, 1, model_axis), logical_axis_rules=rules)
    shapes = {"encoder_input_tokens": (B, N), "decoder_input_tokens": (B, L)}
    variables = model.get_initial_variables(jax.random.PRNGKey(0), shapes)
    state = train_state_lib.FlaxOptimTrainState.create(opt, variables)
    axes = partitioner.get_mesh_axes(state)
    state = partitioner.move_params_to_devices(state, axes)
    trainer = CodaTrainer(model, state, partitioner, eval_names=[], summary_dir=None,
                          train_state_axes=axes, rng=jax.random.PRNGKey(3),
                          learning_rate_fn=lambda step: 1e-2, num_microbatches=None,
                          k_schedule_steps=STEPS, k_anneal_stages=1)
    rng = np.random.RandomState(0)
    batch = {"encoder_input_tokens": rng.randint(3, 259, (B, N)).astype(np.int32),
             "decoder_input_tokens": rng.randint(3, 259, (B, L)).astype(np.int32),
             "decoder_target_tokens": rng.randint(3, 259, (B, L)).astype(np.int32),
             "decoder_loss_weights": np.ones((B, L), np.float32)}
    losses = []
    for _ in range(STEPS):
        summary = trainer.train(iter([jax.tree_util.tree_map(jnp.asarray, batch)]), 1)
        losses.append(float(summary.result()["loss"].value))
    params = traverse_util.flatten_dict(trainer.train_state.params, sep="/")
    shards = {n: [list(s.data.shape) for s in params[n].addressable_shards] for n in NAMES}
    return dict(losses=losses, shards=shards, mesh=_mesh(partitioner))


def _mesh(partitioner) -> dict:
    return dict(zip(partitioner.mesh.axis_names, partitioner.mesh.devices.shape))


def main(model_axes):
    out = {str(m): run(m) for m in model_axes}
    # what num_partitions gives on CPU: every device on 'model' (docs/t5x.md)
    out["num_partitions=2"] = _mesh(partitioning.PjitPartitioner(num_partitions=2))
    out["devices"] = jax.device_count()
    print("RESULT" + json.dumps(out))


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
