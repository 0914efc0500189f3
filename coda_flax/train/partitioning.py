"""Sharding over a ('data', 'model') mesh from the parameters' logical axis names.

Like T5X's standard_logical_axis_rules: batch over 'data'; heads, key / value heads, mlp, vocab
and the adapter width over 'model' (adapters shard like the MLP, key / value projections like
the query heads); everything else replicated. A logical dimension that does not divide its mesh axis is
replicated instead (e.g. a single multi-query key / value head), so any preset shards on any
mesh. `initialize_distributed` joins the processes of a multi-host job.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

LogicalRules = tuple[tuple[str, str | None], ...]

STANDARD_RULES: LogicalRules = (
    ("batch", "data"),
    ("vocab", "model"),
    ("heads", "model"),
    ("mlp", "model"),
    ("kv_heads", "model"),
    ("embed", None),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("adapter", "model"),
    ("lora_rank", None),
)


def make_mesh(num_partitions: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh: `num_partitions` devices per model replica, the rest data-parallel."""
    devices = list(jax.devices() if devices is None else devices)
    if num_partitions < 1 or len(devices) % num_partitions:
        raise ValueError(f"num_partitions={num_partitions} must divide the {len(devices)} "
                         f"devices; e.g. --gin.NUM_PARTITIONS=1 for pure data parallelism.")
    shape = (len(devices) // num_partitions, num_partitions)
    return jax.make_mesh(shape, ("data", "model"), axis_types=(AxisType.Auto,) * 2,
                         devices=devices)


def _fit(spec: P, shape, mesh: Mesh) -> P:
    """Replicate dimensions whose size is not a multiple of their mesh axes' size."""
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        fitted.append(axes if dim % size == 0 else None)
    return P(*fitted)


def param_shardings(boxed_tree, mesh: Mesh, rules: LogicalRules = STANDARD_RULES):
    """NamedShardings for a tree of (abstract) flax-boxed parameters / optimizer state."""
    logical = nn.get_partition_spec(boxed_tree)
    mesh_specs = nn.logical_to_mesh(logical, rules)
    unboxed = nn.meta.unbox(boxed_tree)
    return jax.tree_util.tree_map(
        lambda spec, leaf: NamedSharding(mesh, _fit(spec, np.shape(leaf), mesh)),
        mesh_specs, unboxed, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """Global arrays from this process's slice of the batch (rows split over 'data')."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None):
    """jax.distributed.initialize for multi-host runs; a no-op for one process."""
    if num_processes is None or num_processes <= 1:
        return
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
