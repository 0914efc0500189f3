"""Trains the tiny model a few steps in a separate process (multi-device / multi-process tests).

Writes {"losses", "grad_norms", "mesh", "process_count"} as JSON to --out.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--partitions", type=int, default=1)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--port", default="12355")
    p.add_argument("--out", required=True)
    p.add_argument("--model_dir", required=True)
    a = p.parse_args()
    if a.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from coda_flax.train.partitioning import initialize_distributed, make_mesh
    initialize_distributed(f"127.0.0.1:{a.port}", a.num_processes, a.process_id)
    import train_helpers as th
    assert jax.device_count() == a.devices * a.num_processes, jax.devices()
    mesh = make_mesh(a.partitions)
    tr = th.trainer(a.model_dir, total_steps=4, mesh=mesh, checkpoint_every=100)
    state = tr.init_state(th.SHAPES)
    _, history = tr.train(state, th.batches(process_index=jax.process_index(),
                                            num_processes=jax.process_count()), n=th.N)
    json.dump({"losses": [r["loss"] for r in history],
               "grad_norms": [r["grad_norm"] for r in history],
               "mesh": dict(mesh.shape), "process_count": jax.process_count()}, open(a.out, "w"))


if __name__ == "__main__":
    main()
