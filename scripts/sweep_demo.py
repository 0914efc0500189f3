#!/usr/bin/env python
"""The small sweep behind the demo's finetuning settings (README, "The demo").

Finetunes a few demo variants on the needle task from the demo's pretrained backbone for each
learning rate (Adafactor with absolute steps, or with T5X's relative parameter scale), evaluating
every --eval-every steps, so that the table shows when a run leaves the constant-prediction
plateau. The runs are the demo's finetuning Runs (coda_flax/experiments/demo_runs.py) with the
sweep's learning rate, steps and evaluation, executed by coda_flax/experiments/runner.py (a run
finished before is reused). Results go to <output>/sweep.jsonl (one line per run) and a
markdown table.

    python scripts/sweep_demo.py --backbone outputs/demo/pretrain/final \
        --variants parallel_adapter coda_r3_k_to_k first_k_r3_k_to_k --lrs 0.003 0.01 0.03 \
        --steps 400 --eval-every 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def main(argv=None) -> int:
    from coda_flax.experiments import demo_runs

    names = [v[0] for v in demo_runs.VARIANTS]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="outputs/demo/pretrain/final",
                   help="the dense pretrained checkpoint (coda demo writes it)")
    p.add_argument("--output", default="outputs/sweep_demo")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--variants", nargs="+", default=["parallel_adapter", "coda_r3_k_to_k",
                                                     "first_k_r3_k_to_k"], choices=names)
    p.add_argument("--lrs", nargs="+", type=positive_float, default=[0.003, 0.01, 0.03])
    p.add_argument("--parameter-scale", action="store_true",
                   help="Adafactor's relative step size (T5X default) instead of absolute steps")
    p.add_argument("--steps", type=positive_int, default=400)
    p.add_argument("--eval-every", type=positive_int, default=100)
    p.add_argument("--eval-examples", type=positive_int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not os.path.isdir(a.backbone):
        p.error(f"--backbone {a.backbone} not found: run `coda demo` first (it pretrains and "
                f"keeps the backbone in <output>/pretrain/final).")

    import dataclasses

    from coda_flax.experiments import runner
    from coda_flax.train.trainer import read_metrics

    s = demo_runs.DemoSettings()
    prepared, _, task = demo_runs.prepare_task(s, a.data_dir)
    vocab_size = task.output_features["targets"].vocabulary.vocab_size
    os.makedirs(a.output, exist_ok=True)
    log_path = os.path.join(a.output, "sweep.jsonl")
    options = dict(log_every=50, checkpoint_every=10**9, eval_every=a.eval_every,
                   data_dir=a.data_dir, vocab_path=prepared["vocab_model"], progress=True)
    rows = []
    for name in a.variants:
        for lr in a.lrs:
            tag = f"{name}_lr{lr:g}{'_pscale' if a.parameter_scale else ''}_seed{a.seed}"
            spec = demo_runs.finetune_run(s, vocab_size, name, a.seed, a.backbone, options)
            spec = dataclasses.replace(
                spec, name=tag, steps=a.steps, learning_rate=lr,
                eval_max_examples=a.eval_examples,
                train_options={**spec.options, "parameter_scale": a.parameter_scale})
            print(f"[sweep] {tag}: {a.steps} steps", flush=True)
            t0 = time.time()
            out = runner.execute(spec, a.output)
            rows_of = {split: [m for m in read_metrics(os.path.join(a.output, tag), split)
                               if "accuracy" in m] for split in ("eval", "train")}
            curve = {int(m["step"]): m["accuracy"] for m in rows_of["eval"]}
            train_acc = rows_of["train"][-1]["accuracy"] if rows_of["train"] else None
            row = {"variant": name, "lr": lr, "parameter_scale": a.parameter_scale,
                   "seed": a.seed, "steps": a.steps, "accuracy": out["eval"]["accuracy"],
                   "curve": curve, "seconds": time.time() - t0,
                   "train_token_accuracy_last": train_acc}
            rows.append(row)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"[sweep] {tag}: accuracy {row['accuracy']:.1f}% ({row['seconds']:.0f} s)",
                  flush=True)
    steps = sorted({st for r in rows for st in r["curve"]})
    print("\n| variant | lr | " + " | ".join(f"step {st}" for st in steps) + " |")
    print("|---|---|" + "---|" * len(steps))
    for r in rows:
        print(f"| {r['variant']} | {r['lr']:g} | "
              + " | ".join(f"{r['curve'][st]:.1f}" if st in r["curve"] else "-" for st in steps)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
