"""The steps the experiments share (paper section 3.3 at small scale):

    pretrain_dense     a dense backbone, every parameter trained (reused when finished)
    finetune_variant   dense -> CoDA / Parallel Adapter (run.train's initial checkpoint goes
                       through dense_to_coda), adapters + routers + layer norms trained, k
                       annealed from n to n / r; evaluated (reused and re-evaluated when finished)
    speed_batch        one batch of validation examples, repeated up to the batch size
    speed_table        encoder and end-to-end time per model, speedups over a baseline
    parameter_counts   trainable / total parameters of a variant
    trained_steps, load_json, save_json    reuse bookkeeping
    discard_if_data_changed                a run folder made on datasets that have changed
                                           since (coda_flax.datasets.provenance) is deleted,
                                           naming them, so the stage runs again

`coda compare` (experiments/compare.py) runs them in order; the demo runs the same steps.
Plain keyword arguments; nothing here reads argv or gin.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Mapping, Sequence

from coda_flax.datasets import provenance

Log = Callable[[str], None]

ENCODER, END_TO_END = "encoder", "end_to_end"


def trained_steps(model_dir: str) -> int | None:
    """The last training step logged in model_dir/metrics.jsonl (None without one)."""
    from coda_flax.train.trainer import read_metrics
    rows = read_metrics(model_dir, "train")
    return int(rows[-1]["step"]) if rows else None


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def save_json(path: str, obj, **dump_kwargs) -> str:
    """Writes JSON atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, **dump_kwargs)
    os.replace(tmp, path)
    return path


def discard_if_data_changed(model_dir: str, task: str, log: Log = print) -> bool:
    """Deletes model_dir (saying which dataset changed) when its run record
    (MODEL_DIR/data.json, written by run.train) differs from the datasets bound to `task` now,
    or when it holds a run without a record while the task reads prepared datasets. Returns
    whether it was deleted."""
    if not os.path.isdir(model_dir):
        return False
    why = provenance.changes(provenance.run_record(model_dir), provenance.fingerprint(task))
    if why:
        log(f"  {model_dir} was trained on other data ({why}): training again")
        shutil.rmtree(model_dir)
    return bool(why)


def pretrain_dense(model_config, model_dir: str, *, train_steps: int, log: Log = print,
                   **train_kwargs) -> str:
    """The dense backbone: run.train with every parameter trained and one k stage. Reused when
    model_dir/final exists and its log says it ran `train_steps` steps (or has no log); trained
    again when it ran a different number. Returns model_dir/final.

    train_kwargs: the rest of run.train's keyword arguments (task, lengths, batch size, lr...)."""
    from coda_flax.train import run

    final = os.path.join(model_dir, "final")
    discard_if_data_changed(model_dir, train_kwargs.get("mixture_or_task_name", ""), log)
    if os.path.isdir(final):
        done = trained_steps(model_dir)
        if done in (None, train_steps):
            log(f"  reusing the dense backbone in {final} (delete {model_dir} to train again)")
            return final
        log(f"  {final} has {done} steps, not {train_steps}: training again")
    run.train(model_config=model_config, train_steps=train_steps, model_dir=model_dir,
              trainable="all", k_anneal_stages=1, **train_kwargs)
    return final


def parameter_counts(params, trainable: str = "finetune") -> dict[str, int]:
    """{"trainable", "total"} parameters under the trainable set ("finetune" or "all")."""
    from coda_flax.checkpoints.peft import parameter_summary, trainable_mask
    counts = parameter_summary(params, trainable_mask(params, trainable))
    return {"trainable": counts["trainable"], "total": counts["total"]}


def finetune_variant(model_config, run_dir: str, *, initial_checkpoint_path: str, task,
                     feature_lengths: Mapping[str, int], eval_batch_size: int,
                     eval_max_examples: int | None = None, trainable: str = "finetune",
                     k_anneal_fraction: float = 0.2, k_anneal_stages: int = 2,
                     log: Log = print, **train_kwargs) -> dict[str, Any]:
    """Finetunes one variant from the dense checkpoint (converted on load) and evaluates it on
    the validation split. A finished run (run_dir/final) is loaded and evaluated again instead.

    Returns {"model", "params", "eval", "reused", "trainable_params", "total_params"}; model is
    the variant's CodaT5Model / CodaCtcModel (train.ctc_model.make_model)."""
    from coda_flax.checkpoints import load_checkpoint
    from coda_flax.train import run
    from coda_flax.train.ctc_model import make_model

    model = make_model(model_config)
    final = os.path.join(run_dir, "final")
    discard_if_data_changed(run_dir, train_kwargs.get("mixture_or_task_name", task.name), log)
    reused = os.path.isdir(final)
    if reused:
        log(f"  reusing the finished run in {run_dir}; evaluating it")
        params = load_checkpoint(final)[1]
        ev = run.evaluate_params(model, params, task, feature_lengths, "validation",
                                 eval_batch_size, eval_max_examples)
    else:
        out = run.train(model_config=model_config, model_dir=run_dir,
                        initial_checkpoint_path=initial_checkpoint_path, trainable=trainable,
                        k_anneal_fraction=k_anneal_fraction, k_anneal_stages=k_anneal_stages,
                        task_feature_lengths=feature_lengths, eval_batch_size=eval_batch_size,
                        eval_max_examples=eval_max_examples, **train_kwargs)
        params, ev = out["params"], out["eval"]
    counts = parameter_counts(params, trainable)
    return {"model": model, "params": params, "eval": ev, "reused": reused,
            "trainable_params": counts["trainable"], "total_params": counts["total"]}


def speed_batch(examples: Sequence[Mapping[str, Any]], size: int,
                feature_lengths: Mapping[str, int]) -> dict:
    """A batch of `size` rows from `examples` (repeated when there are fewer)."""
    from coda_flax.train import run
    return run.to_batch((list(examples) * size)[:size], feature_lengths)


def speed_table(models: Mapping[str, Any], params: Mapping[str, Any], batch: dict,
                repeats: int, baseline: str | None = "parallel_adapter") -> dict[str, dict]:
    """Times every model's encoder and encode + greedy decoding on the same batch
    (analysis.timing.measure_models: interleaved, median over rounds) and divides the baseline's
    time by each: {name: {"encoder_seconds", "end_to_end_seconds", "encoder_speedup",
    "end_to_end_speedup"}}. The baseline is the first model when `baseline` is not among them."""
    from coda_flax.analysis.timing import measure_models

    speed = measure_models(dict(models), dict(params), batch, repeats)
    base = speed[baseline] if baseline in speed else next(iter(speed.values()))
    return {name: {**{f"{what}_seconds": t for what, t in times.items()},
                   **{f"{what}_speedup": base[what] / t for what, t in times.items()}}
            for name, times in speed.items()}
