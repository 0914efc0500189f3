"""`coda reproduce`: the paper's result tables as runs of `coda train` / `coda eval`.

    coda reproduce --table 2 --dry-run                  # the experiments and their exact commands
    coda reproduce --table 2 --output runs/ --only pa \\
        --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/{preset}'" --gin.VOCAB_PATH="'/t5/spiece.model'" \\
        --gin.TFDS_DATA_DIR="'/data/tfds'"

A table (configs/tableN.py, plain data, shipped in the package as coda_flax.configs) is a grid: every cell
of a row of ours (not a row quoted from other work) and a metric column is one experiment, whose
stages are gin runs of the project's own trainer:

    pretrain   CoDA pretraining (appendix B), when the row has one and --pretrain-steps != 0
    finetune   runs/finetune.gin with Table 8's task lengths, steps, batch size, learning rate
    eval       runs/eval.gin on the column's split
               -> OUTPUT/<table>/<experiment>/eval_results.json

Training stages live in OUTPUT/runs/<preset>.<variant>...<hash>/ (the hash covers the gin files and
every binding that changes the result), so identical runs are shared between experiments and
tables (Table 3's soft top-k rows are Table 2's k-to-k rows; Table 4 is Table 9's XL block). With
the coda engine they run on the experiment runner (experiments/gin_runs.py: the command's
settings read into a Run; run.json / result.json in the folder): a finished run is reused, an
interrupted one resumes from its orbax checkpoints, and a folder whose run.json holds other
settings or datasets is set aside. A finished experiment (its eval_results.json, with a matching
configuration) is skipped. After each experiment the table is
written to OUTPUT/tableN.md (the paper's layout, each cell "ours (paper X)") and OUTPUT/tableN.json.

`--gin.NAME=VALUE` bindings are passed to every stage and override the table's own (e.g.
--gin.TRAIN_STEPS=1000 shortens the finetuning runs; --pretrain-steps sets the pretraining's);
"{preset}", "{size}", "{task}", "{row}", "{column}" and "{table}" in a value are replaced per
experiment (one INITIAL_CHECKPOINT_PATH template for several model sizes). INITIAL_CHECKPOINT_PATH
is the dense starting checkpoint: it goes to the first training stage. MODEL_DIR, CHECKPOINT_PATH,
EVAL_OUTPUT_DIR, MIXTURE_OR_TASK_NAME and SPLIT belong to the runner.

Missing prerequisites (TFDS data, vocabulary, initial checkpoints, offline corpus) are found before
anything runs and reported together, each with how to provide it. Table 5 (speech) is listed by
--dry-run but refused by a real run: its pretrained backbone (BEST-RQ) is not public and the
paper's transducer is not built (`coda compare` runs the comparison at CPU scale on offline
data). Table 6 (vision) runs on the public Pix2Struct-Large converted by `coda convert`, with
--pretrain-steps 0 (the screenshot-parsing CoDA pretraining is not built).

Library code: expand, select, dry_run_text, run_table, collect_results, table_json here;
load_table and write_table (pure: spec + results -> markdown) in experiments/paper_tables.py,
check_prerequisites in experiments/prerequisites.py, the command lines in
experiments/gin_commands.py.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

from coda_flax.datasets.cache import atomic_path
from coda_flax.experiments import gin_runs
from coda_flax.experiments.gin_commands import (argv_bindings, command_line, gin_file_arg,
                                                gin_key, gin_literal, literal,
                                                missing_gin_files, parse_bindings, t5x_argv)
from coda_flax.experiments.paper_tables import (ReproduceError, column_header, metric_columns,
                                                our_value, row_delta, row_values, table_title,
                                                write_table)
from coda_flax.experiments.pipeline import save_json
from coda_flax.experiments.prerequisites import MissingPrerequisitesError, check_prerequisites

DEFAULT_OUTPUT = os.path.join("outputs", "reproduce")

ENGINES = ("coda", "t5x")
# T5X's scripts run as [*T5X_LAUNCH, "t5x.train", flags...] (python -m t5x.train flags...).
T5X_LAUNCH = (sys.executable, "-m")
# Gin files by their name in the packaged gin folder (coda_flax.resources.GIN_DIR).
FINETUNE_GIN = "runs/finetune.gin"
EVAL_GIN = "runs/eval.gin"

# Bindings the runner sets itself; a user binding of these would break the table's meaning.
RUNNER_OWNED = ("MODEL_DIR", "CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "SPLIT")
# Bindings that say where things are, not what is computed: left out of the run fingerprints, so
# that moving data or checkpoints does not invalidate finished runs.
LOCATION_BINDINGS = ("MODEL_DIR", "CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "INITIAL_CHECKPOINT_PATH",
                     "DATA_DIR", "TFDS_DATA_DIR", "VOCAB_PATH", "NUM_PARTITIONS", "train.progress",
                     "train.checkpoint_every", "train.keep_checkpoints", "train.log_every")
PLACEHOLDERS = ("preset", "size", "task", "row", "column", "table")


class TableNotImplementedError(ReproduceError):
    """The table needs something coda_flax cannot provide (Table 5: see its status_note)."""


# ------------------------------------------------------------------------------ experiments
@dataclasses.dataclass
class Stage:
    kind: str                  # "pretrain" | "finetune" | "eval"
    argv: list[str]            # `coda <argv>`: ["train", "--gin_file=...", "--gin.X=Y", ...]
    directory: str             # MODEL_DIR (training) or EVAL_OUTPUT_DIR (eval)
    fingerprint: str
    final: str | None = None   # T5X: the checkpoint a finished training run ends with

    @property
    def mode(self) -> str:
        return self.argv[0]

    @property
    def gin_files(self) -> list[str]:
        return [a.split("=", 1)[1] for a in self.argv if a.startswith("--gin_file=")]

    @property
    def bindings(self) -> dict[str, str]:
        return argv_bindings(self.argv)

    def command(self) -> str:
        return command_line(self.argv)

    def done(self) -> bool:
        if self.kind == "eval":
            return _eval_done(self.directory, self.fingerprint)
        if self.final is not None:                                  # T5X: checkpoint_<steps>
            return os.path.isdir(self.final)
        final = os.path.join(self.directory, "final")
        return (os.path.exists(os.path.join(final, "config.json"))
                and os.path.isdir(os.path.join(final, "params")))


@dataclasses.dataclass
class Experiment:
    name: str                  # "<row>.<column>"
    table: str
    row: str
    column: str
    labels: list[str]
    column_label: str
    task: str
    split: str
    metric: str
    preset: str
    paper: float | None
    result_dir: str            # OUTPUT/<table>/<name>: experiment.json, eval_results.json
    stages: list[Stage]
    config: dict               # the cell's data (gin files, REDUCTION, lengths, Table 8 values)

    @property
    def eval_stage(self) -> Stage:
        return self.stages[-1]

    @property
    def finetune_stage(self) -> Stage:
        return [s for s in self.stages if s.kind == "finetune"][0]

    def finished(self) -> bool:
        return self.eval_stage.done()

    def results_path(self) -> str:
        return os.path.join(self.result_dir, "eval_results.json")


def _eval_done(directory: str, fingerprint: str) -> bool:
    try:
        with open(os.path.join(directory, "eval_results.json")) as f:
            json.load(f)
        with open(os.path.join(directory, "experiment.json")) as f:
            return json.load(f).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def _fingerprint(parent: str, argv_head: Sequence[str], bindings: Sequence[tuple[str, str]]) -> str:
    effective = dict(bindings)                 # the last binding of a name wins, as in gin
    kept = sorted((n, v) for n, v in effective.items() if n not in LOCATION_BINDINGS)
    text = json.dumps([parent, [gin_key(a) if a.endswith(".gin") else a for a in argv_head],
                       kept])
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _substitute(value: str, subs: Mapping[str, str]) -> str:
    for key, text in subs.items():
        value = value.replace("{" + key + "}", text)
    return value


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _merged(bindings) -> list[tuple[str, str]]:
    """One binding per name: the last value (as gin would apply), at the first one's place."""
    last = dict(bindings)
    return [(n, last[n]) for n in dict.fromkeys(n for n, _ in bindings)]


def _train_argv(files, bindings) -> list[str]:
    return ["train", *(f"--gin_file={gin_file_arg(f)}" for f in files),
            *(f"--gin.{n}={v}" for n, v in _merged(bindings))]


def expand(spec: Mapping[str, Any], output_dir: str = DEFAULT_OUTPUT, bindings: Iterable = (),
           pretrain_steps: int | None = None, engine: str = "coda") -> list[Experiment]:
    """The table's experiments (row-major, one per cell with a metric column) with their stages.

    bindings: the user's gin bindings ('NAME = VALUE' or pairs), applied to every stage after
    the table's own; pretrain_steps: None = the table's CoDA pretraining, 0 = none (finetune
    straight from INITIAL_CHECKPOINT_PATH), N = N steps; engine: "coda" (`coda train` /
    `coda eval`) or "t5x" (T5X's `python -m t5x.train` / `t5x.eval`, t5x_stages)."""
    if engine not in ENGINES:
        raise ReproduceError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}.")
    output_dir = os.path.abspath(output_dir)
    user = parse_bindings(bindings)
    owned = sorted({n for n, _ in user if n in RUNNER_OWNED})
    if owned:
        raise ReproduceError(f"--gin.{owned[0]} is set by `coda reproduce` itself (per "
                             f"experiment); runner-owned names: {', '.join(RUNNER_OWNED)}.")
    init_template = None
    for n, v in user:
        if n == "INITIAL_CHECKPOINT_PATH":
            init_template = v
    user = [(n, v) for n, v in user if n != "INITIAL_CHECKPOINT_PATH"]
    if pretrain_steps is not None and pretrain_steps < 0:
        raise ReproduceError("--pretrain-steps must be >= 0.")

    experiments = []
    for row in spec["rows"]:
        if row.get("reference"):
            continue
        for col in metric_columns(spec):
            experiments.append(_experiment(spec, row, col, output_dir, user, init_template,
                                           pretrain_steps))
    if engine == "t5x":
        experiments = [dataclasses.replace(e, stages=t5x_stages(e)) for e in experiments]
    return experiments


def t5x_stages(e: Experiment) -> list[Stage]:
    """The experiment's stages as T5X runs (gin_commands.t5x_argv): the same gin files and
    bindings, each training run in its own directory (runs/t5x.<name>.<hash>: shared between
    tables exactly as the `coda train` ones), each stage starting from the checkpoint the one
    before it ends with (MODEL_DIR/checkpoint_<TRAIN_STEPS>)."""
    stages, previous = [], None
    for s in e.stages:
        b = s.bindings
        fp = hashlib.sha1(f"t5x:{s.fingerprint}".encode()).hexdigest()[:10]
        if s.kind == "eval":
            b["CHECKPOINT_PATH"] = gin_literal(previous)
            files = [e.config["model_gin"], e.config["variant_gin"], EVAL_GIN]
            if e.config["reduction"] is not None:
                b = {"REDUCTION": gin_literal(e.config["reduction"]), **b}
            stages.append(Stage("eval", t5x_argv("eval", files, b), s.directory, fp))
            continue
        name = os.path.basename(s.directory)[:-len(s.fingerprint)]
        directory = os.path.join(os.path.dirname(s.directory), f"t5x.{name}{fp}")
        b["MODEL_DIR"] = gin_literal(directory)
        if previous is not None:
            b["INITIAL_CHECKPOINT_PATH"] = gin_literal(previous)
        previous = os.path.join(directory, f"checkpoint_{literal(b['TRAIN_STEPS'])}")
        stages.append(Stage(s.kind, t5x_argv("train", s.gin_files, b), directory, fp,
                            final=previous))
    return stages


def _experiment(spec, row, col, output_dir, user, init_template, pretrain_steps) -> Experiment:
    model_gin = row.get("model_gin") or col.get("model_gin")
    preset = row.get("preset") or col.get("preset") or _stem(model_gin)
    task, lengths = col["task"], col["feature_lengths"]
    reduction = row.get("reduction")
    name = f"{row['key']}.{col['key']}"
    subs = {"preset": preset, "size": preset.rsplit("_", 1)[-1], "task": task, "row": row["key"],
            "column": col["key"], "table": spec["id"]}
    user_b = [(n, _substitute(v, subs)) for n, v in user]
    init = _substitute(init_template, subs) if init_template is not None else None
    init = None if literal(init) is None else init
    runs = os.path.join(output_dir, "runs")
    stages, parent = [], ""

    pre = row.get("pretrain")
    if pre and pretrain_steps != 0:
        steps = pre["train_steps"] if pretrain_steps is None else pretrain_steps
        files = [model_gin, pre["variant_gin"], pre["run_gin"]]
        table_b = [("MIXTURE_OR_TASK_NAME", gin_literal(pre["task"])),
                   ("TASK_FEATURE_LENGTHS", gin_literal(pre["feature_lengths"])),
                   ("CodaConfig.num_routed", gin_literal(pre["num_routed"]))]
        tail = [("TRAIN_STEPS", gin_literal(steps))]
        fp = _fingerprint("init" if init else "", ["train", *files], table_b + user_b + tail)
        run_dir = os.path.join(runs, f"{preset}.{_stem(pre['variant_gin'])}.pretrain_"
                                     f"k{pre['num_routed']}.{fp}")
        owned = [("MODEL_DIR", gin_literal(run_dir))]
        if init is not None:
            owned.append(("INITIAL_CHECKPOINT_PATH", init))
        stages.append(Stage("pretrain", _train_argv(files, table_b + user_b + tail + owned),
                            run_dir, fp))
        init, parent = gin_literal(os.path.join(run_dir, "final")), fp
        pre = dict(pre, train_steps=steps)

    files = [model_gin, row["variant_gin"], col.get("run_gin", FINETUNE_GIN)]
    table_b = [("MIXTURE_OR_TASK_NAME", gin_literal(task)),
               ("TASK_FEATURE_LENGTHS", gin_literal(lengths)),
               ("TRAIN_STEPS", gin_literal(col["train_steps"])),
               ("BATCH_SIZE", gin_literal(col["batch_size"])),
               ("LEARNING_RATE", gin_literal(col["learning_rate"])),
               ("train.schedule", gin_literal(col["schedule"]))]
    if reduction is not None:
        table_b.append(("REDUCTION", gin_literal(reduction)))
    table_b += [(n, gin_literal(v)) for n, v in col.get("train_bindings", {}).items()]
    # (INITIAL_CHECKPOINT_PATH is a location, left out of the fingerprint; whether there is
    # one is not: training from scratch and from a checkpoint must not share a run.)
    fp = _fingerprint(parent or ("init" if init else ""), ["train", *files], table_b + user_b)
    r_tag = "" if reduction is None else f".r{reduction}"
    run_dir = os.path.join(runs, f"{preset}.{_stem(row['variant_gin'])}{r_tag}.{task}.{fp}")
    owned = [("MODEL_DIR", gin_literal(run_dir))]
    if init is not None:
        owned.append(("INITIAL_CHECKPOINT_PATH", init))
    stages.append(Stage("finetune", _train_argv(files, table_b + user_b + owned), run_dir, fp))

    result_dir = os.path.join(output_dir, spec["id"], name)
    eval_b = [("MIXTURE_OR_TASK_NAME", gin_literal(task)),
              ("TASK_FEATURE_LENGTHS", gin_literal(lengths)),
              ("SPLIT", gin_literal(col["split"]))]
    eval_b += [(n, gin_literal(v)) for n, v in col.get("eval_bindings", {}).items()]
    owned = [("CHECKPOINT_PATH", gin_literal(os.path.join(run_dir, "final"))),
             ("EVAL_OUTPUT_DIR", gin_literal(result_dir))]
    # the user's bindings reach every stage: the training macros among them (TRAIN_STEPS) are
    # read by no eval file, which is not a typo there (the training stages check them)
    eval_argv = ["eval", f"--gin_file={gin_file_arg(EVAL_GIN)}",
                 *(f"--gin.{n}={v}" for n, v in _merged(eval_b + user_b + owned)),
                 *(["--gin_allow_unknown"] if user_b else [])]
    eval_fp = _fingerprint(fp, ["eval", EVAL_GIN], eval_b + user_b)
    stages.append(Stage("eval", eval_argv, result_dir, eval_fp))

    config = dict(model_gin=model_gin, preset=preset, variant_gin=row["variant_gin"],
                  reduction=reduction, task=task, split=col["split"], metric=col["metric"],
                  feature_lengths=lengths, train_steps=col["train_steps"],
                  batch_size=col["batch_size"], learning_rate=col["learning_rate"],
                  schedule=col["schedule"],
                  pretrain=pre if parent else None)
    return Experiment(name=name, table=spec["id"], row=row["key"], column=col["key"],
                      labels=list(row["labels"]), column_label=column_header(col), task=task,
                      split=col["split"], metric=col["metric"], preset=preset,
                      paper=row.get("paper", {}).get(col["key"]), result_dir=result_dir,
                      stages=stages, config=config)


def select(spec, experiments: Sequence[Experiment], only: Iterable[str] | None) -> list[Experiment]:
    """Experiments whose row key, column key or name matches one of the --only patterns."""
    patterns = [p.strip() for item in (only or ()) for p in str(item).split(",") if p.strip()]
    if not patterns:
        return list(experiments)
    def hit(e, p):
        return any(fnmatch.fnmatchcase(x, p) for x in (e.row, e.column, e.name))
    chosen = [e for e in experiments if any(hit(e, p) for p in patterns)]
    unmatched = [p for p in patterns if not any(hit(e, p) for e in experiments)]
    if unmatched:
        rows = [r["key"] for r in spec["rows"] if not r.get("reference")]
        cols = [c["key"] for c in metric_columns(spec)]
        raise ReproduceError(f"--only {', '.join(unmatched)} matches no experiment of "
                             f"{table_title(spec)}; rows: {', '.join(rows)}; columns: "
                             f"{', '.join(cols)} (or ROW.COLUMN; * and ? patterns work).")
    return chosen


# ------------------------------------------------------------------------------ dry run
def dry_run_text(spec, experiments: Sequence[Experiment], output_dir: str | None = None) -> str:
    """The experiments of a table with the exact commands a real run would execute."""
    n = len(experiments)
    lines = [f"{table_title(spec)}: {spec.get('title', '')}",
             f"  {spec['caption']}"]
    if spec["status"] != "ready":
        lines.append(f"  NOT RUNNABLE: {spec.get('status_note') or 'not implemented yet'}. "
                     "A real run refuses; the grid below is the plan.")
    rows = {e.row for e in experiments}
    cols = {e.column for e in experiments}
    runs = {k: {s.directory for e in experiments for s in e.stages if s.kind == k}
            for k in ("finetune", "pretrain")}
    lines.append(f"  {n} experiments ({len(rows)} rows x {len(cols)} columns): "
                 f"{len(runs['finetune'])} finetuning + {len(runs['pretrain'])} CoDA pretraining "
                 f"runs, {n} evaluations"
                 + (f"; output: {os.path.abspath(output_dir)}" if output_dir else ""))
    if spec.get("initial_checkpoint", {}).get("required"):
        lines.append("  initial checkpoint (--gin.INITIAL_CHECKPOINT_PATH): "
                     + spec["initial_checkpoint"]["help"])
    lines.append("")
    first_seen: dict[str, str] = {}
    for i, e in enumerate(experiments, 1):
        paper = "-" if e.paper is None else e.paper
        state = "done" if e.finished() else "to run"
        lines.append(f"[{i}/{n}] {e.name}  ({' | '.join(e.labels)}; {e.column_label}; "
                     f"{e.task} {e.split} {e.metric}; paper {paper})  [{state}]")
        for s in e.stages:
            if s.kind != "eval" and s.directory in first_seen:
                lines.append(f"  # {s.kind}: shared with {first_seen[s.directory]} "
                             f"({os.path.basename(s.directory)})")
                continue
            if s.kind != "eval":
                first_seen[s.directory] = e.name
            missing = missing_gin_files(s.gin_files)
            tag = " (done)" if s.kind != "eval" and s.done() else ""
            lines.append(f"  # {s.kind}{tag}"
                         + (f"  -- missing gin file(s): {', '.join(missing)}" if missing else ""))
            lines.append(f"  {s.command()}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def experiments_json(experiments: Sequence[Experiment]) -> list[dict]:
    return [dict(name=e.name, table=e.table, row=e.row, column=e.column, labels=e.labels,
                 paper=e.paper, result_dir=e.result_dir, **e.config,
                 stages=[dict(kind=s.kind, directory=s.directory, fingerprint=s.fingerprint,
                              command=s.command(), argv=s.argv) for s in e.stages])
            for e in experiments]


# ------------------------------------------------------------------------------ running
def _run_stage(stage: Stage) -> None:
    """Runs an eval stage (`coda eval ...`) in this process through the gin edge
    (coda_flax.train.gin_config.run_gin: the same strict parsing as `coda eval`), or a T5X
    stage as its command (_run_t5x_stage). coda's training stages run as runner Runs."""
    if stage.argv[0].startswith("t5x."):
        return _run_t5x_stage(stage)
    import gin
    from coda_flax.train.gin_config import run_gin
    gin.clear_config()
    try:
        run_gin(stage.mode, stage.gin_files,
                [f"{name} = {value}" for name, value in stage.bindings.items()],
                allow_unknown="--gin_allow_unknown" in stage.argv)
    finally:
        gin.clear_config()


def _run_t5x_stage(stage: Stage) -> None:
    """`python -m t5x.<script> ...` (log: DIRECTORY/<script>.log); for t5x.eval, the metrics of
    its last evaluation become DIRECTORY/eval_results.json (the table's results)."""
    os.makedirs(stage.directory, exist_ok=True)
    log = os.path.join(stage.directory, f"{stage.argv[0]}.log")
    with open(log, "w") as f:
        code = subprocess.run([*T5X_LAUNCH, *stage.argv], stdout=f,
                              stderr=subprocess.STDOUT).returncode
    if code:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{stage.argv[0]} exited with status {code} (log: {log}):\n{tail}")
    if stage.kind == "eval":
        task = literal(stage.bindings["PAPER_TASK"])
        path = os.path.join(stage.directory, "inference_eval", f"{task}-metrics.jsonl")
        with open(path) as f:
            last = json.loads(f.read().strip().splitlines()[-1])
        split = literal(stage.bindings.get("utils.DatasetConfig.split", "'validation'"))
        save_json(os.path.join(stage.directory, "eval_results.json"),
                  dict(last, task=task, split=split, engine="t5x"), default=str)



def collect_results(experiments: Sequence[Experiment]) -> dict[str, dict]:
    """{experiment name: its eval_results.json} for the finished experiments."""
    out = {}
    for e in experiments:
        if e.finished():
            with open(e.results_path()) as f:
                out[e.name] = json.load(f)
    return out


def _best_in_training(e: Experiment):
    """The best value of the column's metric among the finetuning run's evaluations."""
    if e.split != "validation":
        return None
    from coda_flax.train.trainer import read_metrics
    values = [row[e.metric] for row in read_metrics(e.finetune_stage.directory, "eval")
              if isinstance(row.get(e.metric), (int, float))]
    if not values:
        return None
    return min(values) if e.metric == "wer" else max(values)


def write_outputs(spec, experiments: Sequence[Experiment], output_dir: str,
                  failures: Mapping[str, str] | None = None) -> tuple[str, str]:
    """OUTPUT/tableN.md and OUTPUT/tableN.json from the results found on disk."""
    results = collect_results(experiments)
    os.makedirs(output_dir, exist_ok=True)
    md_path = os.path.join(output_dir, f"{spec['id']}.md")
    json_path = os.path.join(output_dir, f"{spec['id']}.json")
    with atomic_path(md_path) as tmp, open(tmp, "w") as f:
        f.write(write_table(spec, results))
    save_json(json_path, table_json(spec, experiments, results, failures), default=str)
    return md_path, json_path


def run_table(spec, output_dir: str = DEFAULT_OUTPUT, *, bindings: Iterable = (),
              only: Iterable[str] | None = None, pretrain_steps: int | None = None,
              check: bool = True, engine: str = "coda",
              log: Callable[[str], None] = print) -> dict:
    """Runs the table's unfinished experiments in order; returns a summary dict with the paths
    of the written table, the experiments run / skipped / failed. engine "t5x" runs T5X's
    scripts (installed: T5X is not on PyPI), which check their own inputs (the prerequisites
    are those of `coda train`: check applies to engine "coda")."""
    if spec["status"] != "ready":
        raise TableNotImplementedError(
            f"{table_title(spec)} cannot run: it {spec.get('status_note') or 'is not implemented'}. "
            f"`coda reproduce --table {spec.get('number', '')} --dry-run` lists the planned "
            "experiments.")
    output_dir = os.path.abspath(output_dir)
    everything = expand(spec, output_dir, bindings, pretrain_steps, engine)
    experiments = select(spec, everything, only)
    if engine == "t5x":
        import importlib.util
        if importlib.util.find_spec("t5x") is None:
            raise ReproduceError("--engine t5x runs T5X's train.py / eval.py, and T5X is not "
                                 "installed (docs/t5x.md: how); --dry-run writes the commands.")
    elif check:
        problems = check_prerequisites(spec, experiments)
        if problems:
            todo = sum(not e.finished() for e in experiments)
            raise MissingPrerequisitesError(
                f"cannot run {table_title(spec)}: {len(problems)} prerequisite(s) missing for the "
                f"{todo} unfinished experiment(s); nothing was run.\n"
                + "\n".join(f"  {i}. {p}" for i, p in enumerate(problems, 1)))
    ran, skipped, failures = [], [], {}
    n = len(experiments)
    for i, e in enumerate(experiments, 1):
        head = f"[{i}/{n}] {spec['id']} {e.name}"
        if e.finished():
            log(f"{head}: finished, skipped ({e.results_path()})")
            skipped.append(e.name)
            continue
        log(f"{head}: {' | '.join(e.labels)}; {e.column_label} (paper {e.paper})")
        os.makedirs(e.result_dir, exist_ok=True)
        stale = e.results_path()
        if os.path.exists(stale):
            log(f"  its configuration changed since {stale} was written: running it again")
            os.remove(stale)
        save_json(os.path.join(e.result_dir, "experiment.json"), dict(
            experiments_json([e])[0], fingerprint=e.eval_stage.fingerprint,
            started=time.strftime("%Y-%m-%d %H:%M:%S")), default=str)
        try:       # coda's training stages: runner Runs (gin_runs); eval and T5X: commands
            runs = gin_runs.chain(e.stages) if engine == "coda" else [None] * len(e.stages)
            for s, run in zip(e.stages, runs):
                if s.kind != "eval" and (gin_runs.finished(s, run) if run else s.done()):
                    log(f"  {s.kind}: done already ({s.directory})")
                    continue
                log(f"  {s.kind}: {s.command()}")
                t0 = time.time()
                if run:
                    gin_runs.train(s, run, log)
                else:
                    _run_stage(s)
                log(f"  {s.kind}: finished in {time.time() - t0:.0f} s")
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 -- one failed cell must not stop the grid
            failures[e.name] = f"{type(err).__name__}: {err}"
            log(f"  FAILED: {failures[e.name]}\n{traceback.format_exc()}")
            continue
        ran.append(e.name)
        with open(e.results_path()) as f:
            value = json.load(f).get(e.metric)
        log(f"  {e.metric} = {value} (paper {e.paper})")
        write_outputs(spec, everything, output_dir, failures)
    md_path, json_path = write_outputs(spec, everything, output_dir, failures)
    log(f"{table_title(spec)}: {len(ran)} run, {len(skipped)} skipped, {len(failures)} failed; "
        f"table: {md_path} (+ {os.path.basename(json_path)})")
    return dict(table=spec["id"], markdown=md_path, json=json_path, ran=ran, skipped=skipped,
                failed=failures, experiments=[e.name for e in experiments])


# ------------------------------------------------------------------------------ the table
def table_json(spec, experiments: Sequence[Experiment], results: Mapping[str, Any],
               failures: Mapping[str, str] | None = None) -> dict:
    """The machine-readable companion of write_table."""
    failures = failures or {}
    exps = []
    for e in experiments:
        exps.append(dict(name=e.name, row=e.row, column=e.column, task=e.task, split=e.split,
                         metric=e.metric, preset=e.preset, paper=e.paper,
                         ours=our_value(results, e.name, e.metric),
                         status="finished" if e.name in results else
                         ("failed" if e.name in failures else "pending"),
                         error=failures.get(e.name), best_in_training=_best_in_training(e),
                         results_path=e.results_path(), run_dir=e.finetune_stage.directory,
                         commands=[s.command() for s in e.stages]))
    rows = {}
    for row in spec["rows"]:
        entry = dict(labels=row.get("labels"), reference=bool(row.get("reference")),
                     paper=row.get("paper", {}),
                     ours={} if row.get("reference") else row_values(spec, row, results))
        if spec.get("delta_avg"):
            entry["delta_avg"] = dict(paper=row.get("paper_delta_avg"),
                                      ours=None if row.get("reference") else
                                      row_delta(spec, row, results))
        rows[row["key"]] = entry
    return dict(table=spec["id"], number=spec.get("number"), title=spec.get("title"),
                caption=spec["caption"], status=spec["status"], rows=rows, experiments=exps,
                markdown=write_table(spec, results))
