"""Shared pieces of the training tests: a tiny model, deterministic synthetic batches and a
scheduler's preemption (SIGTERM once a metrics file has some rows)."""

import os
import signal
import threading
import time

import numpy as np

from coda_flax import CodaConfig, tiny_config
from coda_flax.train.t5_model import CodaT5Model
from coda_flax.train.trainer import Trainer, TrainerConfig

N, T, B = 16, 4, 8
SHAPES = {"encoder_input_tokens": (B, N), "decoder_input_tokens": (B, T)}


def batch(i: int, batch_size: int = B, process_index: int = 0, num_processes: int = 1):
    """Batch i of a toy task: the target is the first input token, then the fixed tokens
    3, 4, 5 (rows of the global batch are split evenly between processes)."""
    rng = np.random.default_rng(1000 + i)
    enc = rng.integers(2, 64, size=(batch_size, N)).astype(np.int32)
    enc[: batch_size // 2, N - 3:] = 0                               # some padding
    tgt = np.concatenate([enc[:, :1], np.tile(np.arange(3, T + 2), (batch_size, 1))], 1)
    tgt = tgt.astype(np.int32)
    dec = np.concatenate([np.zeros((batch_size, 1), np.int32), tgt[:, :-1]], axis=1)
    full = {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
            "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.float32)}
    per = batch_size // num_processes
    return {k: v[process_index * per:(process_index + 1) * per] for k, v in full.items()}


def batches(**kw):
    def make(start):
        i = start
        while True:
            yield batch(i, **kw)
            i += 1
    return make


def model(reduction=4, **coda):
    return CodaT5Model(tiny_config(CodaConfig(reduction=reduction, adapter_dim=8, **coda)))


def trainer(model_dir, total_steps=6, mesh=None, **kw):
    cfg = dict(model_dir=str(model_dir), total_steps=total_steps, learning_rate=0.01,
               checkpoint_every=2, log_every=1, k_anneal_fraction=0.5, k_anneal_stages=3,
               progress=False)
    the_model = kw.pop("model", None) or model()
    cfg.update(kw)
    return Trainer(the_model, TrainerConfig(**cfg), mesh=mesh)


def sigterm_after(path, rows):
    """SIGTERM to this process once `path` has `rows` lines (a scheduler's preemption)."""
    def watch():
        while not (os.path.exists(path) and len(open(path).readlines()) >= rows):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def t5x_train_metrics(log: str) -> dict:
    """{step: {metric: value}} from the train summaries T5X's train.py logs."""
    import re
    out = {}
    for step, fields in re.findall(r"\] \[(\d+)\] collection=train (accuracy=.*)",
                                   open(log).read()):
        out[int(step)] = {k: float(v) for k, v in re.findall(r"([\w/]+)=([-0-9.e+]+)", fields)}
    return out


def fake_training_in_worker(seconds, folder, together=()):
    """A worker's setup in runner.execute_all(jobs > 1) tests: a file named for its process in
    `folder`, and run.train replaced by a stand-in that trains as the trainer stops: SIGTERM
    only marks the stop, the "step" (`seconds`) is finished, then Preempted is raised. Runs
    named in `together` (their folders' names) wait (up to 60 s) until all of them are
    training. It writes MODEL_DIR/final and returns an eval naming the process that trained
    and whether its `together` runs trained at once."""
    from coda_flax.train import run as train_run
    from coda_flax.train.settings import flat_settings
    from coda_flax.train.trainer import Preempted
    open(os.path.join(folder, f"worker-{os.getpid()}"), "w").close()

    def fake(**kwargs):
        path = flat_settings(**kwargs)["model_dir"]
        name = os.path.basename(path)
        open(os.path.join(folder, f"training-{name}"), "w").close()
        stop = []
        previous = signal.signal(signal.SIGTERM, lambda signum, _: stop.append(signum))
        try:
            deadline, met = time.time() + 60, name not in together
            while not met and time.time() < deadline:
                met = all(os.path.exists(os.path.join(folder, f"training-{n}")) for n in together)
                time.sleep(0.05)
            time.sleep(seconds)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if stop:
            raise Preempted(f"signal {stop[0]}: stopped {path}")
        os.makedirs(os.path.join(path, "final"))
        params = {"adapter": {"kernel": np.zeros((4, 2), np.float32)}}
        return {"params": params, "eval": {"accuracy": 25.0, "pid": os.getpid(),
                                           "together": met}}
    train_run.train = fake
