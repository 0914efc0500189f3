"""A tiny training run in its own process, for kill -9 fault injection (test_fault_injection).

    python tests/fault_worker.py --model_dir DIR --steps 6 [--kill_mid_save STEP] [--reduction R]

Checkpoints every step. --kill_mid_save STEP: SIGKILLs itself while the checkpoint of STEP is
being written (after orbax started the save, before it finished). At the end the final
trainable parameters are written to DIR/final_trainable.npz.
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402


def trainer(model_dir, steps, reduction=4):
    import train_helpers as th
    return th.trainer(model_dir, total_steps=steps, checkpoint_every=1, k_anneal_stages=1,
                      model=th.model(reduction=reduction))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--kill_mid_save", type=int, default=0)
    p.add_argument("--reduction", type=float, default=4)
    a = p.parse_args()
    import train_helpers as th
    tr = trainer(a.model_dir, a.steps, a.reduction)
    if a.kill_mid_save:
        save = tr.checkpoints.save

        def save_then_die(step, *args, **kw):
            out = save(step, *args, **kw)          # asynchronous: the write is under way
            if step == a.kill_mid_save:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        tr.checkpoints.save = save_then_die
    state, _ = tr.train(tr.init_state(th.SHAPES), th.batches(), n=th.N)
    flat = traverse_util.flatten_dict(jax.device_get(state["trainable"]), sep="/")
    np.savez(os.path.join(a.model_dir, "final_trainable.npz"), **flat)


if __name__ == "__main__":
    main()
