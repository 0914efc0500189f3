"""`coda reproduce`: the paper's result tables as runs of `coda train` / `coda eval`.

    coda reproduce --table 2 --dry-run                  # the experiments and their exact commands
    coda reproduce --table 2 --output runs/ --only pa \\
        --gin.INITIAL_CHECKPOINT_PATH="'/ckpts/{preset}'" --gin.VOCAB_PATH="'/t5/spiece.model'" \\
        --gin.TFDS_DATA_DIR="'/data/tfds'"

A table (coda_flax/configs/tableN.py, plain data, shipped in the package) is a grid: every cell
of a row of ours (not a row quoted from other work) and a metric column is one experiment, whose
stages are gin runs of the project's own trainer:

    pretrain   CoDA pretraining (appendix B), when the row has one and --pretrain-steps != 0
    finetune   runs/finetune.gin with Table 8's task lengths, steps, batch size, learning rate
    eval       runs/eval.gin on the column's split
               -> OUTPUT/<table>/<experiment>/eval_results.json

Training stages live in OUTPUT/runs/<preset>.<variant>...<hash>/ (the hash covers the gin files and
every binding that changes the result), so identical runs are shared between experiments and
tables (Table 3's soft top-k rows are Table 2's k-to-k rows; Table 4 is Table 9's XL block), an
interrupted training resumes from its orbax checkpoints, and a finished experiment (its
eval_results.json, with a matching configuration) is skipped. After each experiment the table is
written to OUTPUT/tableN.md (the paper's layout, each cell "ours (paper X)") and OUTPUT/tableN.json.

`--gin.NAME=VALUE` bindings are passed to every stage and override the table's own (e.g.
--gin.TRAIN_STEPS=1000 shortens the finetuning runs; --pretrain-steps sets the pretraining's);
"{preset}", "{size}", "{task}", "{row}", "{column}" and "{table}" in a value are replaced per
experiment (one INITIAL_CHECKPOINT_PATH template for several model sizes). INITIAL_CHECKPOINT_PATH
is the dense starting checkpoint: it goes to the first training stage. MODEL_DIR, CHECKPOINT_PATH,
EVAL_OUTPUT_DIR, MIXTURE_OR_TASK_NAME and SPLIT belong to the runner.

Missing prerequisites (TFDS data, vocabulary, initial checkpoints, offline corpus) are found before
anything runs and reported together, each with how to provide it. Tables 5 (speech) and 6
(vision) are listed by --dry-run but refused by a real run: their pretrained backbones (BEST-RQ,
Pix2Struct) cannot be imported and the paper's transducer / screenshot-parsing pretraining are
not built (`coda compare` runs the same comparisons at CPU scale on offline data).

Library code: load_table, expand, dry_run_text, check_prerequisites, run_table, collect_results,
write_table (pure: spec + results -> markdown), table_json.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import fnmatch
import hashlib
import importlib
import json
import math
import os
import re
import shlex
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

from coda_flax.resources import GIN_DIR, packaged_gin_name, resolve_gin_file

CONFIGS_PACKAGE = "coda_flax.configs"      # the tables ship in the package (package data)
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
TABLE_NUMBERS = (2, 3, 4, 5, 6, 9)
DEFAULT_OUTPUT = os.path.join("outputs", "reproduce")

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

# Files of the offline tasks (coda_flax/tasks/offline.py) under shakespeare.corpus_dir(DATA_DIR).
OFFLINE_TASK_FILES = {"coda_shakespeare_span_corruption": "scenes.jsonl",
                      "coda_shakespeare_play": "play_passages.jsonl",
                      "coda_shakespeare_speaker": "speaker.jsonl"}


class ReproduceError(Exception):
    """A usage or configuration problem: nothing was run (exit status 2)."""


class MissingPrerequisitesError(ReproduceError):
    """Data, vocabulary or checkpoints the experiments need are not there."""


class TableNotImplementedError(ReproduceError):
    """The table needs something coda_flax cannot provide (Tables 5 / 6: see their status_note)."""


# ------------------------------------------------------------------------------ tables (data)
def _configs_package() -> str:
    """The package of the table configs (coda_flax/configs, shipped in the wheel)."""
    return CONFIGS_PACKAGE


def table_id(which) -> str:
    text = str(which).strip().lower()
    text = text[len("table"):] if text.startswith("table") else text
    if not text.isdigit() or int(text) not in TABLE_NUMBERS:
        raise ReproduceError(f"unknown table {which!r}; the paper's tables with experiment grids "
                             f"are {', '.join(map(str, TABLE_NUMBERS))}.")
    return f"table{int(text)}"


def load_table(which) -> dict:
    """The TABLE dict of coda_flax/configs/tableN.py (a deep copy), validated.
    which: 2, "2" or "table2"."""
    package = _configs_package()
    module = importlib.import_module(f"{package}.{table_id(which)}")
    spec = copy.deepcopy(module.TABLE)
    validate_table(spec)
    return spec


def load_table8():
    return importlib.import_module(f"{_configs_package()}.table8")


_TRAIN_FIELDS = ("task", "metric", "split", "feature_lengths", "train_steps", "batch_size",
                 "learning_rate", "schedule")


def validate_table(spec: Mapping[str, Any]) -> None:
    """Structural checks of a table spec; raises ReproduceError naming the problem."""
    where = f"table spec {spec.get('id', '?')!r}"
    for key in ("id", "caption", "status", "label_columns", "columns", "rows"):
        if key not in spec:
            raise ReproduceError(f"{where}: missing key {key!r}.")
    if spec["status"] not in ("ready", "not_implemented"):
        raise ReproduceError(f"{where}: status must be 'ready' or 'not_implemented'.")
    cols = {c["key"]: c for c in spec["columns"]}
    rows = {r["key"]: r for r in spec["rows"]}
    if len(cols) != len(spec["columns"]) or len(rows) != len(spec["rows"]):
        raise ReproduceError(f"{where}: duplicate column or row keys.")
    for c in spec["columns"]:
        kind = c.get("kind", "metric")
        if kind not in ("metric", "paper_only"):
            raise ReproduceError(f"{where}: column {c['key']!r} has unknown kind {kind!r}.")
        missing = [f for f in _TRAIN_FIELDS if kind == "metric" and f not in c]
        if missing:
            raise ReproduceError(f"{where}: column {c['key']!r} lacks {missing}.")
    for r in spec["rows"]:
        unknown = set(r.get("paper", {})) - set(cols)
        if unknown:
            raise ReproduceError(f"{where}: row {r['key']!r} has paper numbers for unknown "
                                 f"columns {sorted(unknown)}.")
        if len(r.get("labels", ())) != len(spec["label_columns"]):
            raise ReproduceError(f"{where}: row {r['key']!r} needs one label per label column "
                                 f"{spec['label_columns']}.")
        if r.get("reference"):
            continue
        if "variant_gin" not in r:
            raise ReproduceError(f"{where}: row {r['key']!r} lacks variant_gin.")
        if r.get("delta_baseline") and r["delta_baseline"] not in rows:
            raise ReproduceError(f"{where}: row {r['key']!r}: delta_baseline "
                                 f"{r['delta_baseline']!r} is not a row.")
        for c in spec["columns"]:
            if c.get("kind", "metric") != "metric":
                continue
            owners = [x for x in (r, c) if "model_gin" in x]
            if len(owners) != 1:
                raise ReproduceError(f"{where}: cell ({r['key']}, {c['key']}): exactly one of the "
                                     f"row and the column must give model_gin.")


def metric_columns(spec) -> list[dict]:
    return [c for c in spec["columns"] if c.get("kind", "metric") == "metric"]


# ------------------------------------------------------------------------------ gin helpers
def gin_literal(value) -> str:
    """A Python value as a gin literal (strings quoted, dicts as Python dicts)."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e16:
        return repr(int(value))
    return repr(value)


def parse_bindings(bindings: Iterable) -> list[tuple[str, str]]:
    """'NAME = VALUE' strings (coda_flax.train.cli.split_gin_flags) or (name, value) pairs."""
    out = []
    for b in bindings or ():
        if isinstance(b, (tuple, list)):
            name, value = b
        else:
            if "=" not in b:
                raise ReproduceError(f"gin binding {b!r} is not NAME=VALUE.")
            name, value = b.split("=", 1)
        out.append((name.strip(), str(value).strip()))
    return out


def _gin_file_arg(path: str) -> str:
    """A table's gin file as a --gin_file argument. A packaged one (models/x.gin; the older
    gin/models/x.gin too) by its short name, which `coda train` finds in the packaged gin folder
    from any directory, unless a file of that name in the current directory would shadow it
    (then its absolute path); any other file by its absolute path."""
    name = packaged_gin_name(path)
    if name is None:
        return os.path.abspath(path)
    full = os.path.join(GIN_DIR, *name.split("/"))
    return name if resolve_gin_file(name) == full else full


def _gin_file_path(arg: str) -> str:
    """A --gin_file argument for messages: its packaged name, else its absolute path."""
    return packaged_gin_name(arg) or os.path.abspath(arg)


def _gin_key(path: str) -> str:
    """A gin file as the run fingerprints name it: gin/<name> for a packaged file (the
    repository path before the gin files moved into the package, so that the fingerprints of
    finished runs stay valid), else the path as given."""
    name = packaged_gin_name(path)
    return path if name is None else f"gin/{name}"


_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def shell_quote(arg: str) -> str:
    """T5X's quoting style for gin flags: --gin.NAME="'value'" (shlex.split gives back arg)."""
    if _SAFE.match(arg):
        return arg
    if arg.startswith("--gin.") and "=" in arg:
        name, value = arg.split("=", 1)
        if _SAFE.match(name) and not re.search(r'["$`\\!]', value):
            return f'{name}="{value}"'
    return shlex.quote(arg)


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["coda", *(shell_quote(a) for a in argv)])


def _argv_bindings(argv: Sequence[str]) -> dict[str, str]:
    """The --gin.NAME=VALUE bindings of a stage's argv (last one wins)."""
    out = {}
    for a in argv:
        if a.startswith("--gin.") and "=" in a:
            name, value = a[len("--gin."):].split("=", 1)
            out[name.strip()] = value.strip()
    return out


def _literal(text: str | None):
    if text is None:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ------------------------------------------------------------------------------ experiments
@dataclasses.dataclass
class Stage:
    kind: str                  # "pretrain" | "finetune" | "eval"
    argv: list[str]            # `coda <argv>`: ["train", "--gin_file=...", "--gin.X=Y", ...]
    directory: str             # MODEL_DIR (training) or EVAL_OUTPUT_DIR (eval)
    fingerprint: str

    @property
    def mode(self) -> str:
        return self.argv[0]

    @property
    def gin_files(self) -> list[str]:
        return [a.split("=", 1)[1] for a in self.argv if a.startswith("--gin_file=")]

    @property
    def bindings(self) -> dict[str, str]:
        return _argv_bindings(self.argv)

    def command(self) -> str:
        return command_line(self.argv)

    def done(self) -> bool:
        if self.kind == "eval":
            return _eval_done(self.directory, self.fingerprint)
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
    text = json.dumps([parent, [_gin_key(a) if a.endswith(".gin") else a for a in argv_head],
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
    return ["train", *(f"--gin_file={_gin_file_arg(f)}" for f in files),
            *(f"--gin.{n}={v}" for n, v in _merged(bindings))]


def expand(spec: Mapping[str, Any], output_dir: str = DEFAULT_OUTPUT, bindings: Iterable = (),
           pretrain_steps: int | None = None) -> list[Experiment]:
    """The table's experiments (row-major, one per cell with a metric column) with their stages.

    bindings: the user's gin bindings ('NAME = VALUE' or pairs), applied to every stage after
    the table's own; pretrain_steps: None = the table's CoDA pretraining, 0 = none (finetune
    straight from INITIAL_CHECKPOINT_PATH), N = N steps."""
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
    return experiments


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
    init = None if _literal(init) is None else init
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
    eval_argv = ["eval", f"--gin_file={_gin_file_arg(EVAL_GIN)}",
                 *(f"--gin.{n}={v}" for n, v in _merged(eval_b + user_b + owned))]
    eval_fp = _fingerprint(fp, ["eval", EVAL_GIN], eval_b + user_b)
    stages.append(Stage("eval", eval_argv, result_dir, eval_fp))

    config = dict(model_gin=model_gin, preset=preset, variant_gin=row["variant_gin"],
                  reduction=reduction, task=task, split=col["split"], metric=col["metric"],
                  feature_lengths=lengths, train_steps=col["train_steps"],
                  batch_size=col["batch_size"], learning_rate=col["learning_rate"],
                  schedule=col["schedule"],
                  pretrain=pre if parent else None)
    return Experiment(name=name, table=spec["id"], row=row["key"], column=col["key"],
                      labels=list(row["labels"]), column_label=_column_header(col), task=task,
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
                             f"{_title(spec)}; rows: {', '.join(rows)}; columns: "
                             f"{', '.join(cols)} (or ROW.COLUMN; * and ? patterns work).")
    return chosen


# ------------------------------------------------------------------------------ dry run
def _title(spec) -> str:
    return f"Table {spec.get('number', spec['id'])}"


def _missing_gin_files(stage: Stage) -> list[str]:
    return [_gin_file_path(f) for f in stage.gin_files if resolve_gin_file(f) is None]


def dry_run_text(spec, experiments: Sequence[Experiment], output_dir: str | None = None) -> str:
    """The experiments of a table with the exact commands a real run would execute."""
    n = len(experiments)
    lines = [f"{_title(spec)}: {spec.get('title', '')}",
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
            missing = _missing_gin_files(s)
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


# ------------------------------------------------------------------------------ prerequisites
def _default_tfds_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                           "tensorflow_datasets")


def _tfds_prepared_dir(data_dir: str, tfds_name: str) -> str:
    """TFDS's layout: <data_dir>/<name>[/<config>]/<version>/dataset_info.json."""
    name, _, version = tfds_name.partition(":")
    parts = [data_dir, *name.split("/")]
    return os.path.join(*parts, version) if version else os.path.join(*parts)


def _tfds_is_prepared(data_dir: str, tfds_name: str) -> bool:
    path = _tfds_prepared_dir(data_dir, tfds_name)
    if ":" in tfds_name:
        return os.path.exists(os.path.join(path, "dataset_info.json"))
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, v, "dataset_info.json")) for v in os.listdir(path))


_TFDS_NOTES = {
    "xsum": " XSum also needs its archive downloaded by hand first (tfds build xsum "
            "--manual_dir DIR; see the TFDS xsum page).",
    "c4": " C4 is ~800 GB, built with Apache Beam; copying a prepared c4/en/<version> folder is "
          "easier. To skip CoDA pretraining (finetune straight from the dense checkpoint, "
          "Figure 3's 0 steps) pass --pretrain-steps 0.",
}


def check_prerequisites(spec, experiments: Sequence[Experiment]) -> list[str]:
    """What the unfinished stages need and do not find, each with how to provide it ([] = ok)."""
    pending = [(e, s) for e in experiments if not e.finished() for s in e.stages if not s.done()]
    problems: list[str] = []
    seen: set = set()

    def add(key, text):
        if key not in seen:
            seen.add(key)
            problems.append(text)

    for _, s in pending:
        for f in _missing_gin_files(s):
            add(("gin", f), f"gin file {f} does not exist.")

    tfds_names = offline = None
    for e, s in pending:
        b = s.bindings
        task = _literal(b.get("MIXTURE_OR_TASK_NAME"))
        if task is None:
            continue
        if tfds_names is None:
            from coda_flax.tasks.paper import TFDS_NAMES as tfds_names  # noqa: N811
            from coda_flax.datasets import shakespeare as offline
        vocab = _literal(b.get("VOCAB_PATH"))
        if task in tfds_names:
            data_dir = _literal(b.get("TFDS_DATA_DIR")) or _default_tfds_dir()
            name = tfds_names[task]
            if "://" not in data_dir and not _tfds_is_prepared(data_dir, name):
                base = name.split(":")[0]
                add(("tfds", name, data_dir),
                    f"TFDS dataset '{name}' (task {task}) is not prepared in {data_dir} "
                    f"(looked for {_tfds_prepared_dir(data_dir, name)}/dataset_info.json; "
                    f"nothing is downloaded). On a machine with internet run `tfds build {base} "
                    f"--data_dir DIR`, copy DIR here and pass --gin.TFDS_DATA_DIR=\"'DIR'\" (or "
                    f"set $TFDS_DATA_DIR)." + _TFDS_NOTES.get(base.split("/")[0], ""))
            vocab = vocab or os.environ.get("CODA_VOCAB")
            if not vocab:
                add(("vocab", None),
                    "no vocabulary: the paper's tasks use T5's SentencePiece model "
                    "(gs://t5-data/vocabs/cc_all.32000/sentencepiece.model, also spiece.model in "
                    "the Hugging Face google/t5-v1_1-* repositories). Copy it here and pass "
                    "--gin.VOCAB_PATH=\"'/path/spiece.model'\" (or set $CODA_VOCAB).")
            elif "://" not in str(vocab) and not os.path.exists(vocab):
                add(("vocab", vocab), f"vocabulary {vocab} does not exist (VOCAB_PATH / "
                                      "$CODA_VOCAB): copy T5's SentencePiece model there.")
        elif task in OFFLINE_TASK_FILES:
            root = offline.corpus_dir(_literal(b.get("DATA_DIR")))
            path = os.path.join(root, OFFLINE_TASK_FILES[task])
            if not os.path.exists(path):
                add(("offline", path),
                    f"offline corpus file {path} (task {task}) does not exist: run `python "
                    f"scripts/prepare_data.py --data-dir DIR` and pass --gin.DATA_DIR=\"'DIR'\".")
            spm = os.path.join(root, "spm")
            if vocab is None and not (os.path.isdir(spm) and any(
                    f.endswith(".model") for f in os.listdir(spm))):
                add(("vocab", root), f"no vocabulary for {task}: none under {spm}; run "
                                     "scripts/prepare_data.py or pass --gin.VOCAB_PATH.")
            elif vocab is not None and not os.path.exists(vocab):
                add(("vocab", vocab), f"vocabulary {vocab} does not exist (VOCAB_PATH).")
        else:
            add(("task", task), f"task {task} is not one coda_flax registers (paper tasks: "
                                f"{', '.join(tfds_names)}; offline: "
                                f"{', '.join(OFFLINE_TASK_FILES)}).")

    required = spec.get("initial_checkpoint", {}).get("required")
    presets: dict[str, set] = {}
    for e in experiments:
        train_stage = e.stages[0]
        if train_stage.done() or e.finished():
            continue
        path = _literal(train_stage.bindings.get("INITIAL_CHECKPOINT_PATH"))
        if path is None:
            if required:
                add(("ckpt", None), f"no initial checkpoint: pass --gin.INITIAL_CHECKPOINT_PATH. "
                                    f"{_title(spec)} starts from "
                                    + spec["initial_checkpoint"]["help"])
            continue
        presets.setdefault(path, set()).add(e.preset)
        if "://" not in path and not os.path.exists(os.path.join(path, "config.json")):
            add(("ckpt", path), f"initial checkpoint {path} (preset {e.preset}) is not a coda_flax "
                                f"checkpoint directory (no config.json). "
                                + (f"{_title(spec)} starts from "
                                   + spec["initial_checkpoint"]["help"] if required else ""))
    for path, used_by in presets.items():
        if len(used_by) > 1:
            add(("ckpt-shared", path),
                f"one INITIAL_CHECKPOINT_PATH ({path}) for several model sizes "
                f"({', '.join(sorted(used_by))}): put {{preset}} in it (replaced per experiment) "
                f"or run one size at a time with --only.")
    return problems


# ------------------------------------------------------------------------------ running
def _run_stage(stage: Stage) -> None:
    """Runs `coda <argv>` in this process through the gin edge (coda_flax.train.cli)."""
    import gin
    from coda_flax.train import cli as train_cli
    gin.clear_config()
    try:
        rc = train_cli.main(list(stage.argv))
    finally:
        gin.clear_config()
    if rc:
        raise RuntimeError(f"`{stage.command()}` exited with status {rc}.")


def _write_json(path: str, data) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


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
    with open(md_path + ".tmp", "w") as f:
        f.write(write_table(spec, results))
    os.replace(md_path + ".tmp", md_path)
    _write_json(json_path, table_json(spec, experiments, results, failures))
    return md_path, json_path


def run_table(spec, output_dir: str = DEFAULT_OUTPUT, *, bindings: Iterable = (),
              only: Iterable[str] | None = None, pretrain_steps: int | None = None,
              check: bool = True, log: Callable[[str], None] = print) -> dict:
    """Runs the table's unfinished experiments in order; returns a summary dict with the paths
    of the written table, the experiments run / skipped / failed."""
    if spec["status"] != "ready":
        raise TableNotImplementedError(
            f"{_title(spec)} cannot run: it {spec.get('status_note') or 'is not implemented'}. "
            f"`coda reproduce --table {spec.get('number', '')} --dry-run` lists the planned "
            "experiments.")
    output_dir = os.path.abspath(output_dir)
    everything = expand(spec, output_dir, bindings, pretrain_steps)
    experiments = select(spec, everything, only)
    if check:
        problems = check_prerequisites(spec, experiments)
        if problems:
            todo = sum(not e.finished() for e in experiments)
            raise MissingPrerequisitesError(
                f"cannot run {_title(spec)}: {len(problems)} prerequisite(s) missing for the "
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
        _write_json(os.path.join(e.result_dir, "experiment.json"), dict(
            experiments_json([e])[0], fingerprint=e.eval_stage.fingerprint,
            started=time.strftime("%Y-%m-%d %H:%M:%S")))
        try:
            for s in e.stages:
                if s.kind != "eval" and s.done():
                    log(f"  {s.kind}: done already ({s.directory})")
                    continue
                log(f"  {s.kind}: {s.command()}")
                t0 = time.time()
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
    log(f"{_title(spec)}: {len(ran)} run, {len(skipped)} skipped, {len(failures)} failed; "
        f"table: {md_path} (+ {os.path.basename(json_path)})")
    return dict(table=spec["id"], markdown=md_path, json=json_path, ran=ran, skipped=skipped,
                failed=failures, experiments=[e.name for e in experiments])


# ------------------------------------------------------------------------------ the table
def _column_header(col) -> str:
    return " ".join(x for x in (col.get("group"), col["label"]) if x)


def _fmt_paper(row, col, decimals) -> str | None:
    text = row.get("paper_text", {}).get(col["key"])
    if text is not None:
        return text
    value = row.get("paper", {}).get(col["key"])
    if value is None:
        return None
    if col.get("kind", "metric") == "paper_only":
        return f"{value}{col.get('suffix', '')}"
    return f"{value:.{decimals}f}"


def format_delta(value: float, decimals: int = 1) -> str:
    """The paper's style: '± 0.0', '+0.2', '-2.1'."""
    if abs(value) < 0.5 * 10 ** -decimals:
        return f"± {0:.{decimals}f}"
    return f"{value:+.{decimals}f}"


def _ours(results: Mapping[str, Any], name: str, metric: str) -> float | None:
    value = results.get(name)
    if isinstance(value, Mapping):
        value = value.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _row_values(spec, row, results) -> dict[str, float | None]:
    return {c["key"]: _ours(results, f"{row['key']}.{c['key']}", c["metric"])
            for c in metric_columns(spec)}


def _delta(spec, row, results) -> float | None:
    base = {r["key"]: r for r in spec["rows"]}.get(row.get("delta_baseline"))
    if base is None:
        return None
    a, b = _row_values(spec, row, results), _row_values(spec, base, results)
    if not a or any(v is None for v in (*a.values(), *b.values())):
        return None
    return sum(a.values()) / len(a) - sum(b.values()) / len(b)


def write_table(table_spec: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """The table in the paper's layout as markdown: label columns, then one column per paper
    column (group + label, e.g. "Base MNLI"), then Δ Avg; each cell "ours (paper X)", "-" for
    ours where there is no result yet. results: {"<row>.<column>": eval_results dict (the
    column's metric is read from it) or a number}. Pure: no file or environment access."""
    spec = table_spec
    dec = spec.get("decimals", 1)
    delta = spec.get("delta_avg")
    cols = spec["columns"]
    labels = list(spec["label_columns"])
    header = labels + [_column_header(c) for c in cols] + ([delta["label"]] if delta else [])
    caption = spec["caption"]
    prefix = f"Table {spec.get('number')}."
    if caption.startswith(prefix):
        caption = caption[len(prefix):].strip()
    lines = [f"**{prefix}** {caption}", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(labels) + ["---:"] * (len(header) - len(labels)))
             + "|"]
    section = None
    for row in spec["rows"]:
        if row.get("section") and row["section"] != section:
            section = row["section"]
            lines.append("| " + " | ".join([f"**{section}**"] + [""] * (len(header) - 1)) + " |")
        cells = [str(x) for x in row.get("labels", [])]
        cells += [""] * (len(labels) - len(cells))
        for c in cols:
            paper = _fmt_paper(row, c, dec)
            if row.get("reference"):
                cells.append(paper if paper is not None else "-")
                continue
            ours = None
            if c.get("kind", "metric") == "metric":
                ours = _ours(results, f"{row['key']}.{c['key']}", c["metric"])
            elif isinstance(results.get(f"{row['key']}.{c['key']}"), (int, float)):
                ours = float(results[f"{row['key']}.{c['key']}"])
            cells.append(_cell(ours, paper, dec, c.get("suffix", "")
                               if c.get("kind") == "paper_only" else ""))
        if delta:
            d = delta.get("decimals", dec)
            paper_delta = row.get("paper_delta_avg")
            paper = None if paper_delta is None else format_delta(paper_delta, d)
            if row.get("reference"):
                cells.append(paper or "-")
            else:
                ours = _delta(spec, row, results)
                cells.append(_cell(ours, paper, d, delta=True))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: ours (paper X); \"-\": not run yet. Ours: the final checkpoint evaluated "
                 "on the column's split (`coda eval`).")
    if delta:
        lines.append(f"{delta['label']}: mean of a row's cells minus the mean of its baseline "
                     "row's, once both rows are complete.")
    if any(r.get("reference") for r in spec["rows"]):
        lines.append("Rows without ours are quoted from the paper (results of other work).")
    for note in spec.get("notes", ()):
        lines.append(f"Note: {note}")
    if spec.get("status") != "ready":
        lines.append(f"Not runnable yet: {spec.get('status_note', '')}.")
    return "\n".join(lines) + "\n"


def _cell(ours, paper, decimals, suffix="", delta=False) -> str:
    if ours is None:
        text = "-"
    elif delta:
        text = format_delta(ours, decimals)
    else:
        text = f"{ours:.{decimals}f}{suffix}"
    return text if paper is None else f"{text} (paper {paper})"


def table_json(spec, experiments: Sequence[Experiment], results: Mapping[str, Any],
               failures: Mapping[str, str] | None = None) -> dict:
    """The machine-readable companion of write_table."""
    failures = failures or {}
    exps = []
    for e in experiments:
        exps.append(dict(name=e.name, row=e.row, column=e.column, task=e.task, split=e.split,
                         metric=e.metric, preset=e.preset, paper=e.paper,
                         ours=_ours(results, e.name, e.metric),
                         status="finished" if e.name in results else
                         ("failed" if e.name in failures else "pending"),
                         error=failures.get(e.name), best_in_training=_best_in_training(e),
                         results_path=e.results_path(), run_dir=e.finetune_stage.directory,
                         commands=[s.command() for s in e.stages]))
    rows = {}
    for row in spec["rows"]:
        entry = dict(labels=row.get("labels"), reference=bool(row.get("reference")),
                     paper=row.get("paper", {}),
                     ours={} if row.get("reference") else _row_values(spec, row, results))
        if spec.get("delta_avg"):
            entry["delta_avg"] = dict(paper=row.get("paper_delta_avg"),
                                      ours=None if row.get("reference") else
                                      _delta(spec, row, results))
        rows[row["key"]] = entry
    return dict(table=spec["id"], number=spec.get("number"), title=spec.get("title"),
                caption=spec["caption"], status=spec["status"], rows=rows, experiments=exps,
                markdown=write_table(spec, results))
