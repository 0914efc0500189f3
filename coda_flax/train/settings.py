"""Type and range checks of the `train` / `evaluate` / `infer` arguments, run first thing, before
anything (MODEL_DIR, its lock, checkpoints/, config.gin, outputs) is written.

    check_settings("train", {"train_steps": 2.5, ...})
        -> SettingError: train_steps=2.5: must be an integer >= 1

Plain arguments only: the gin edge (coda_flax/train/gin_config.py) catches `SettingError` and
names the macro that set the argument (TRAIN_STEPS) instead. bool is not an integer here
(TRAIN_STEPS=True is refused), an int is a float, and a float must be finite.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from coda_flax.checkpoints.peft import MODES
from coda_flax.train.optimizer import SCHEDULES


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


__all__ = ["SettingError", "Rule", "RULES", "check_settings", "config_type_problems",
           "field_type_problems"]
