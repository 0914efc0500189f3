"""`coda reproduce`'s training stages as the experiment runner's Run specs.

A stage is a `coda train` command (gin files + bindings, experiments/reproduce.py), and its
folder, OUTPUT/runs/<preset>.<variant>...<hash>, is named by the hash of its gin settings.
`stage_run` reads what that command would run (train.gin_config.train_settings: the same strict
parsing as `coda train`) into a Run named by the folder, so that experiments/runner.py trains it:
reused once finished, resumed when stopped, set aside when its settings or datasets changed.

    stage_run(stage, parent)   the Run of a pretrain / finetune stage (parent: the Run of the
                               stage before it, whose final checkpoint this one starts from)
    chain(stages)              the Runs of an experiment's stages, each from the one before
    finished(stage, run)       done: by the runner, or by an earlier `coda reproduce`
    train(stage, run, log)     runner.execute (a stopped folder from before the runner adopted)

The vocabulary, the starting checkpoint and the number of partitions say where things are, not
what is computed: they stay out of the fingerprint (Run.locations, runner.NON_RESULT_OPTIONS),
as they stay out of the folder's hash.
"""

from __future__ import annotations

import os
from typing import Callable

from coda_flax.experiments import runner
from coda_flax.experiments.runner import Run

Log = Callable[[str], None]

LOCATIONS = ("vocab_path", "init")
# run.train's flat arguments that are Run fields, and the field each sets
_FIELDS = {"model_config": "model", "mixture_or_task_name": "task",
           "task_feature_lengths": "feature_lengths", "train_steps": "steps",
           "batch_size": "batch_size", "learning_rate": "learning_rate", "seed": "seed",
           "trainable": "trainable", "k_anneal_fraction": "k_anneal_fraction",
           "k_anneal_stages": "k_anneal_stages", "eval_batch_size": "eval_batch_size",
           "eval_max_examples": "eval_max_examples"}


def stage_run(stage, parent: Run | None = None) -> Run:
    """The Run that `coda <stage.argv>` trains: named by the stage's folder (below OUTPUT/runs),
    started from `parent` when INITIAL_CHECKPOINT_PATH is the parent's final checkpoint (else
    from that path), the resolved config.gin written into the folder as `coda train` does."""
    from coda_flax.train.gin_config import train_settings
    flat, config_text = train_settings(
        stage.gin_files, [f"{n} = {v}" for n, v in stage.bindings.items()])
    root, name = os.path.split(stage.directory)
    model_dir = flat.pop("model_dir")
    if os.path.abspath(model_dir) != os.path.abspath(stage.directory):
        raise ValueError(f"stage {name}: MODEL_DIR {model_dir} is not its folder "
                         f"{stage.directory}.")
    init = flat.pop("initial_checkpoint_path")
    if parent is not None and init == runner.final_checkpoint(root, parent):
        init = parent
    fields = {field: flat.pop(arg) for arg, field in _FIELDS.items()}
    flat["extra_files"] = {"config.gin": config_text}
    return Run(name=name, init=init, train_options=flat, locations=LOCATIONS, **fields)


def _made_before(stage) -> bool:
    """A finished folder of an earlier `coda reproduce` (final/, no run.json)."""
    return stage.done() and not os.path.exists(os.path.join(stage.directory, runner.RUN_FILE))


def finished(stage, run: Run) -> bool:
    """Whether the stage's run is finished: by the runner (its fingerprint, result.json), or by
    an earlier `coda reproduce` that ran it without the runner (final/, no run.json)."""
    if _made_before(stage):
        return True
    if not os.path.exists(os.path.join(stage.directory, runner.RESULT_FILE)):
        return False
    runner.register(run)           # its datasets are part of the fingerprint
    return runner.finished(os.path.dirname(stage.directory), run)


def train(stage, run: Run, log: Log = print) -> dict:
    """runner.execute of the stage's Run under OUTPUT/runs (resumed when stopped, set aside
    when made for other settings); a stopped folder from before the runner (no run.json) is
    taken as the run's own first, and resumed. Returns execute's result."""
    root = os.path.dirname(stage.directory)
    runner.adopt(root, run, log)
    return runner.execute(run, root, log)


def chain(stages) -> list[Run | None]:
    """The Runs of an experiment's stages, in order (None for an eval stage); each training
    stage starts from the one before it. A parent finished by an earlier `coda reproduce`
    without the runner is passed as its checkpoint path, so that it is not trained again."""
    runs, parent = [], None
    for s in stages:
        if s.kind == "eval":
            runs.append(None)
            continue
        run = stage_run(s, parent)
        runs.append(run)
        parent = None if _made_before(s) else run
    return runs


__all__ = ["stage_run", "chain", "finished", "train", "LOCATIONS"]
