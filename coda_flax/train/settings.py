"""run.train's settings as a few frozen dataclasses, and the type and range checks of the
`train` / `evaluate` / `infer` arguments, run first thing, before anything (MODEL_DIR, its lock,
checkpoints/, config.gin, outputs) is written.

    DataSettings        the task or mixture, feature lengths, batch size, where the data is
    ScheduleSettings    steps, learning rate and its schedule, the k plan's annealing
    OptimizerSettings   what trains (finetune | all), Adafactor's parameter scale, z-loss,
                        label smoothing
    CheckpointSettings  MODEL_DIR, the initial checkpoint, how often to save and how many to keep
    EvalSettings        how often, on which split, how many examples
    GuardSettings       the divergence guard's limits (coda_flax/train/trainer.py)

A field keeps the name of the gin binding that sets it (`train.train_steps`, via TRAIN_STEPS in
the run files): gin binds `train` with one flat argument per field (coda_flax/train/
gin_config.py), and `train_arguments` groups such flat names into run.train's arguments.

    check_settings("train", {"train_steps": 2.5, ...})
        -> SettingError: train_steps=2.5: must be an integer >= 1

Flat names only: the gin edge catches `SettingError` and names the macro that set the argument
(TRAIN_STEPS) instead. bool is not an integer here (TRAIN_STEPS=True is refused), an int is a
float, and a float must be finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from coda_flax.checkpoints.peft import MODES
from coda_flax.train.optimizer import SCHEDULES


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The training data: a SeqIO task or mixture (registered on first use) at fixed feature
    lengths, the global batch size, and where the task's files are (None: the defaults)."""

    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    batch_size: int
    data_dir: str | None = None
    vocab_path: str | None = None
    tfds_data_dir: str | None = None


@dataclasses.dataclass(frozen=True)
class ScheduleSettings:
    """How long and how fast: train_steps updates, the learning rate and its schedule
    (constant | rsqrt | cosine, coda_flax/train/optimizer.py), and the k plan's annealing over
    the first k_anneal_fraction of the steps in k_anneal_stages stages (coda_flax/kplan.py)."""

    train_steps: int
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    k_anneal_fraction: float = 0.1
    k_anneal_stages: int = 4


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """What is optimised: the trained parameters ("finetune": adapters, routers, layer norms;
    "all"), Adafactor's relative step size (parameter_scale), and the loss's z_loss and
    label_smoothing."""

    trainable: str = "finetune"
    parameter_scale: bool = True
    z_loss: float = 1e-4
    label_smoothing: float = 0.0


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """MODEL_DIR (checkpoints/, metrics, final/; locked for the run), the checkpoint to start
    from (a `coda convert` / training checkpoint; a dense one is converted to CoDA), and how
    often to save (every checkpoint_every steps and the last) and how many to keep."""

    model_dir: str
    initial_checkpoint_path: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """Evaluation every eval_every steps (0: only at the end) on eval_split, in batches of
    eval_batch_size, on at most eval_max_examples examples (None: all)."""

    eval_every: int = 0
    eval_split: str = "validation"
    eval_batch_size: int = 32
    eval_max_examples: int | None = None


@dataclasses.dataclass(frozen=True)
class GuardSettings:
    """The divergence guard: no trained parameter above max_abs_param in magnitude, no update
    above max_update_ratio times the parameters' norm (0: off; coda_flax/train/trainer.py)."""

    max_abs_param: float = 1e6
    max_update_ratio: float = 10.0


# run.train's argument -> its settings class
TRAIN_GROUPS: dict[str, type] = {
    "data": DataSettings, "schedule": ScheduleSettings, "checkpoints": CheckpointSettings,
    "optimizer": OptimizerSettings, "evaluation": EvalSettings, "guard": GuardSettings}


def train_arguments(**flat: Any) -> dict[str, Any]:
    """run.train's keyword arguments from flat names (gin's `train.NAME` bindings, an
    experiment's keyword dict): each settings field goes into its group's dataclass, the other
    names (model_config, seed, num_partitions, log_every, progress, extra_files) pass through.

    Example: train_arguments(model_config=c, mixture_or_task_name="coda_toy",
    task_feature_lengths={"inputs": 8, "targets": 4}, batch_size=8, train_steps=10,
    model_dir="/tmp/run") -> {"model_config": c, "data": DataSettings(...),
    "schedule": ScheduleSettings(train_steps=10), "checkpoints": CheckpointSettings("/tmp/run"),
    "optimizer": OptimizerSettings(), "evaluation": EvalSettings(), "guard": GuardSettings()}.
    """
    args = dict(flat)
    for name, cls in TRAIN_GROUPS.items():
        fields = {f.name: args.pop(f.name) for f in dataclasses.fields(cls) if f.name in args}
        if name in args and fields:
            raise TypeError(f"train_arguments: {', '.join(fields)} given both flat and in "
                            f"{name}={cls.__name__}(...); give each setting once.")
        if name in args:
            continue
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in fields]
        if missing:
            raise TypeError(f"train: {', '.join(missing)} not given ({cls.__name__}'s required "
                            f"settings; in gin: train.{missing[0]}, set by the run file's "
                            f"macro).")
        args[name] = cls(**fields)
    return args


def flat_settings(**args: Any) -> dict[str, Any]:
    """run.train's keyword arguments as flat names (the reverse of train_arguments): what
    check_settings reads and its errors name. TypeError when a group is not its dataclass."""
    flat = {}
    for name, value in args.items():
        cls = TRAIN_GROUPS.get(name)
        if cls is None:
            flat[name] = value
            continue
        if not isinstance(value, cls):
            raise TypeError(f"train: {name} must be a {cls.__name__} (coda_flax.train.settings)"
                            f", got {type(value).__name__}.")
        flat.update({f.name: getattr(value, f.name) for f in dataclasses.fields(cls)})
    return flat


class SettingError(ValueError):
    """Arguments of the wrong type or out of range; `problems` = [(name, value, allowed)], or
    (name, value, allowed, note) where the note says what the setting sets."""

    def __init__(self, problems: list[tuple]):
        self.problems = problems
        super().__init__("; ".join(f"{p[0]}={p[1]!r}: must be {p[2]}" +
                                   (f" (sets {p[3]})" if len(p) > 3 else "") for p in problems))


@dataclasses.dataclass(frozen=True)
class Rule:
    """kind: int | float | str | bool | lengths ({"inputs": int, "targets": int}) | strings (a
    non-empty list of strings); low / high: the closed range (low_open: low excluded)."""
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    optional: bool = False

    def allowed(self) -> str:
        what = {"int": "an integer", "float": "a finite number", "str": "a non-empty string",
                "bool": "True or False",
                "lengths": "a dict {'inputs': int >= 1, 'targets': int >= 1}",
                "strings": "a non-empty list of strings"}[self.kind]
        if self.choices:
            what = f"one of {', '.join(map(repr, self.choices))}"
        if self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        return what + (" (or None)" if self.optional else "")

    def ok(self, value) -> bool:
        if value is None:
            return self.optional
        if self.kind in ("int", "float"):
            number = isinstance(value, int) or (self.kind == "float" and isinstance(value, float))
            if isinstance(value, bool) or not number or not math.isfinite(value):
                return False
            return not ((self.low is not None and (value < self.low or (
                self.low_open and value == self.low))) or
                (self.high is not None and value > self.high))
        if self.kind == "str":
            return isinstance(value, str) and bool(value) and (
                not self.choices or value in self.choices)
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "lengths":
            return (isinstance(value, Mapping) and {"inputs", "targets"} <= set(value) and
                    all(Rule("int", 1).ok(v) for v in value.values()))
        if self.kind == "strings":
            return (isinstance(value, (list, tuple)) and len(value) > 0 and
                    all(isinstance(v, str) for v in value))
        raise ValueError(f"unknown rule kind {self.kind!r}")


_PATH, _OPTIONAL_PATH = Rule("str"), Rule("str", optional=True)
_COMMON = {"mixture_or_task_name": Rule("str"), "task_feature_lengths": Rule("lengths"),
           "data_dir": _OPTIONAL_PATH, "vocab_path": _OPTIONAL_PATH,
           "tfds_data_dir": _OPTIONAL_PATH}

RULES: dict[str, dict[str, Rule]] = {
    "train": {
        **_COMMON, "model_dir": _PATH, "initial_checkpoint_path": _OPTIONAL_PATH,
        "train_steps": Rule("int", 1), "batch_size": Rule("int", 1),
        "learning_rate": Rule("float", 0, low_open=True),
        "schedule": Rule("str", choices=SCHEDULES),
        "warmup_steps": Rule("int", 0), "trainable": Rule("str", choices=MODES),
        "checkpoint_every": Rule("int", 1), "keep_checkpoints": Rule("int", 1),
        "log_every": Rule("int", 1), "eval_every": Rule("int", 0), "eval_split": Rule("str"),
        "eval_batch_size": Rule("int", 1), "eval_max_examples": Rule("int", 1, optional=True),
        "k_anneal_fraction": Rule("float", 0, 1), "k_anneal_stages": Rule("int", 1),
        "num_partitions": Rule("int", 1), "seed": Rule("int", 0), "z_loss": Rule("float", 0),
        "label_smoothing": Rule("float", 0, 1), "progress": Rule("bool"),
        "parameter_scale": Rule("bool"), "max_abs_param": Rule("float", 0),
        "max_update_ratio": Rule("float", 0)},
    "evaluate": {
        **_COMMON, "checkpoint_path": _PATH, "output_dir": _PATH, "split": Rule("str"),
        "batch_size": Rule("int", 1), "max_examples": Rule("int", 1, optional=True)},
    "infer": {
        "checkpoint_path": _PATH, "inputs": Rule("strings"), "output_path": _PATH,
        "input_length": Rule("int", 1), "target_length": Rule("int", 1),
        "vocab_path": _OPTIONAL_PATH, "data_dir": _OPTIONAL_PATH, "num_decodes": Rule("int", 1),
        "allow_truncation": Rule("bool")},
}


def check_settings(entry: str, args: Mapping[str, Any]) -> None:
    """SettingError listing every argument of `entry` (train / evaluate / infer) in `args`
    whose type or range is wrong, each with its value and what is allowed; a model_config's
    fields are checked against their declared types (model_config.d_model=2.5 is refused)."""
    rules = RULES[entry]
    problems = [(name, args[name], rule.allowed()) for name, rule in rules.items()
                if name in args and not rule.ok(args[name])]
    config = args.get("model_config")
    if dataclasses.is_dataclass(config):
        problems += config_type_problems(config, "model_config")
        if dataclasses.is_dataclass(getattr(config, "coda", None)):
            problems += config_type_problems(config.coda, "CodaConfig")
    if problems:
        raise SettingError(problems)


_TYPES = {"int": Rule("int"), "float": Rule("float"), "str": Rule("str"), "bool": Rule("bool")}


def config_type_problems(config, prefix: str) -> list[tuple]:
    """(prefix.field, value, allowed) for each field of a config dataclass whose value is not of
    its declared type (int, float, str, bool, or one of them | None; other fields unchecked)."""
    return field_type_problems(type(config), {f.name: getattr(config, f.name)
                                              for f in dataclasses.fields(config)}, prefix)


def field_type_problems(cls, values: Mapping[str, Any], prefix: str) -> list[tuple]:
    """config_type_problems for field values not yet built into `cls` (a dataclass type)."""
    problems = []
    for field in dataclasses.fields(cls):
        kind = str(field.type).replace(" | None", "")
        if kind not in _TYPES or field.name not in values:
            continue
        rule = dataclasses.replace(_TYPES[kind], optional=str(field.type).endswith("| None"))
        if not rule.ok(values[field.name]):
            problems.append((f"{prefix}.{field.name}", values[field.name], rule.allowed()))
    return problems


__all__ = ["DataSettings", "ScheduleSettings", "OptimizerSettings", "CheckpointSettings",
           "EvalSettings", "GuardSettings", "TRAIN_GROUPS", "train_arguments", "flat_settings",
           "SettingError", "Rule", "RULES", "check_settings", "config_type_problems",
           "field_type_problems"]
