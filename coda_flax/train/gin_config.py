"""gin edge of the training stack: parses gin files and bindings (strictly) and runs the
configured entry point (train / evaluate / infer). The command line that feeds it is
coda_flax/cli/train.py (`coda train|eval|infer`, `python -m coda_flax.train`).

A gin file is looked up as given, then in --gin_search_path, then in the packaged gin folder
(the repository's gin/, coda_flax/gin in the wheel; coda_flax.resources.resolve_gin_file;
earlier names, gin/models/tiny.gin and models/variants/dense.gin, still work).

Run files use T5X's macro names (MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS,
TRAIN_STEPS, BATCH_SIZE, INITIAL_CHECKPOINT_PATH, ...). This module is the only place that
reads gin; the functions it configures live in coda_flax.train.run. gin's `train` has one flat
argument per setting (`train.train_steps`, `train.model_dir`, ...: every field of run.train's
settings dataclasses, coda_flax/train/settings.py), which it groups into those dataclasses.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os

import gin

from coda_flax.config import CodaConfig, ModelConfig
from coda_flax.resources import GIN_DIR, resolve_gin_file
from coda_flax.train import run
from coda_flax.train.settings import (TRAIN_GROUPS, SettingError, check_settings,
                                      field_type_problems, train_arguments)


def _register_configurables():
    if getattr(_register_configurables, "done", False):
        return
    import coda_flax.train.gin_models  # noqa: F401  (registers model_config, CodaConfig)
    for fn in (flat_train(), run.evaluate, run.infer):
        gin.external_configurable(fn, fn.__name__)
    _register_configurables.done = True


def flat_train():
    """run.train with flat keyword arguments, as gin binds it: `train.NAME` for each field of
    the settings groups (train.train_steps, train.model_dir, ...; the run files' names) and for
    run.train's other arguments; `settings.train_arguments` groups them. The model config
    goes to run.train as gin built it."""
    def train(*, model_config, **flat):
        return run.train(model_config=model_config, **train_arguments(**flat))

    parameters = []
    for p in inspect.signature(run.train).parameters.values():
        if p.name not in TRAIN_GROUPS:
            parameters.append(p)
            continue
        for f in dataclasses.fields(TRAIN_GROUPS[p.name]):
            default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
            parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                                default=default))
    train.__signature__ = inspect.Signature(parameters)
    train.__doc__ = flat_train.__doc__
    return train


class GinConfigError(ValueError):
    """An unknown or unset gin macro."""


# Macros the run files define for T5X compatibility that nothing in coda_flax reads.
IGNORED_MACROS = frozenset({"USE_CACHED_TASKS"})


def _walk_references(value, found):
    import gin.config as gc
    if isinstance(value, gc.ConfigurableReference):
        found.add(value.scoped_selector)
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            _walk_references(v, found)
    elif isinstance(value, dict):
        for k, v in value.items():
            _walk_references(k, found)
            _walk_references(v, found)


def check_gin(gin_bindings=(), allow_unknown: bool = False) -> None:
    """Strict gin: every macro must be read by something, and none may be left %gin.REQUIRED.

    A macro that nothing references (`--gin.TRAIN_STEPZ=3`) is a typo that gin would accept
    silently; it is an error unless allow_unknown (--gin_allow_unknown). Bindings of unknown
    configurables or parameters are already errors in gin itself."""
    import gin.config as gc
    macros, references = {}, set()
    for (scope, selector), params in gc._CONFIG.items():        # gin's parsed bindings
        if selector == "gin.macro":
            macros[scope] = params.get("value")
        for v in params.values():
            _walk_references(v, references)
    unread = sorted(n for n in macros
                    if f"{n}/gin.macro" not in references and n not in IGNORED_MACROS)
    # A run file's own macro may be bypassed by a direct binding (BATCH_SIZE in eval.gin when
    # --gin.evaluate.batch_size=4 is passed): that is ordinary gin use, so only the macros set
    # on the command line must be read; unread ones from files are reported, not refused.
    from_flags = {b.split("=", 1)[0].strip() for b in gin_bindings}
    unused = [] if allow_unknown else [n for n in unread if n in from_flags]
    if unused:
        known = sorted(n for n in macros if f"{n}/gin.macro" in references)
        raise GinConfigError(
            f"unknown gin macro(s) {', '.join(unused)} (set on the command line) are read by "
            f"nothing; a typo? Known macros: {', '.join(known)}. Pass --gin_allow_unknown to "
            f"accept them.")
    if unread and not allow_unknown:
        logging.warning("gin macro(s) %s set in a gin file are read by nothing (bypassed by a "
                        "direct binding, or a typo in the file)", ", ".join(unread))
    undefined = sorted({r.rsplit("/", 1)[0] for r in references if r.endswith("/gin.macro")}
                       - set(macros))
    if undefined:
        raise GinConfigError(
            f"gin macro(s) {', '.join('%' + n for n in undefined)} are referenced but never set "
            f"(a typo in a gin file or binding?); set macros: {', '.join(sorted(macros))}.")
    required = sorted(name for name, v in macros.items()
                      if isinstance(v, gc.ConfigurableReference)
                      and v.scoped_selector == "gin.REQUIRED/gin.constant"
                      and f"{name}/gin.macro" in references)
    if required:
        raise GinConfigError(
            f"gin macro(s) {', '.join(required)} must be set: add "
            f"{' '.join(f'--gin.{n}=...' for n in required)} (strings in quotes, e.g. "
            f"--gin.{required[0]}=\"'value'\").")


def parse_gin(gin_files, gin_bindings, search_paths=(), allow_unknown: bool = False):
    """T5X-style flags: --gin_file (repeatable) and --gin.NAME=VALUE.

    A gin file is looked up as given, then in search_paths, then in the packaged GIN_DIR
    (coda_flax.resources.resolve_gin_file). Strict by default (check_gin): unknown macros and
    unset required ones are errors."""
    _register_configurables()
    for path in (*search_paths, os.getcwd(), GIN_DIR):
        gin.add_config_file_search_path(path)
    resolved = [resolve_gin_file(f, search_paths) for f in gin_files]
    missing = [f for f, r in zip(gin_files, resolved) if r is None]
    if missing:
        where = ", ".join(["the current directory", *search_paths, GIN_DIR])
        raise FileNotFoundError(f"gin file(s) not found: {missing}; looked in {where} "
                                f"(e.g. runs/finetune.gin, models/tiny.gin).")
    gin.clear_config()                # a second parse in one process starts from scratch
    gin.parse_config_files_and_bindings(resolved, list(gin_bindings),
                                        finalize_config=False)
    check_gin(gin_bindings, allow_unknown)


ENTRY_POINTS = {"train": "train", "eval": "evaluate", "infer": "infer"}      # mode -> gin name


def run_gin(mode: str, gin_files, gin_bindings=(), search_paths=(),
            allow_unknown: bool = False):
    """Parses the gin files and 'NAME = VALUE' bindings (parse_gin, strict) and runs the mode's
    configured function (run.train / run.evaluate / run.infer); returns what it returns.
    Training saves the operative config as MODEL_DIR/config.gin."""
    parse_gin(gin_files, gin_bindings, search_paths, allow_unknown)
    fn = gin.get_configurable(ENTRY_POINTS[mode])
    try:
        _check_model_bindings()
        if mode == "train":
            return fn(extra_files={"config.gin": gin.config_str()})
        return fn()
    except SettingError as e:          # raised before anything is written: name the gin setting
        raise SettingError([_setting(ENTRY_POINTS[mode], *p) for p in e.problems]) from None


def train_settings(gin_files, gin_bindings=(), search_paths=(),
                   allow_unknown: bool = False) -> tuple[dict, str]:
    """What `coda train` would run, without running it: run.train's flat keyword arguments as
    the gin files and 'NAME = VALUE' bindings set them (every argument of flat_train, bound or
    its default; model_config built) and the config text it saves as MODEL_DIR/config.gin.
    Parsed and checked as run_gin does (SettingError names the gin macro); gin is cleared
    after. `coda reproduce` declares its training runs from it (experiments/gin_runs.py)."""
    parse_gin(gin_files, gin_bindings, search_paths, allow_unknown)
    try:
        _check_model_bindings()
        defaults = {n: p.default for n, p in inspect.signature(flat_train()).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        flat = {**defaults, **gin.get_bindings(ENTRY_POINTS["train"])}
        train_arguments(**flat)          # TypeError naming a required setting left unset
        check_settings("train", flat)
        return flat, gin.config_str()
    except SettingError as e:
        raise SettingError([_setting(ENTRY_POINTS["train"], *p) for p in e.problems]) from None
    finally:
        gin.clear_config()


def _check_model_bindings() -> None:
    """SettingError for a model_config / CodaConfig binding of the wrong type, before gin builds
    the config (whose own range checks would fail on a string with a bare TypeError)."""
    import gin.config as gc
    problems = []
    for name, cls in (("model_config", ModelConfig), ("CodaConfig", CodaConfig)):
        values = {}
        for field in dataclasses.fields(cls):
            try:
                value = gin.query_parameter(f"{name}.{field.name}")
                while (isinstance(value, gc.ConfigurableReference) and
                       value.scoped_selector.endswith("/gin.macro")):
                    value = gin.query_parameter(f"%{value.scoped_selector.split('/')[0]}")
            except ValueError:         # not bound
                continue
            if not isinstance(value, gc.ConfigurableReference):
                values[field.name] = value
        problems += field_type_problems(cls, values, name)
    if problems:
        raise SettingError(problems)


def _setting(function: str, argument: str, value, allowed: str) -> tuple:
    """A SettingError problem named by the gin macro that set `function.argument` (TRAIN_STEPS,
    noting the binding it sets), or by the binding itself."""
    import gin.config as gc
    binding = argument if "." in argument else f"{function}.{argument}"   # model_config.d_model
    try:
        bound = gin.query_parameter(binding)
    except ValueError:                 # not bound in gin: the function's default
        return binding, value, allowed
    if isinstance(bound, gc.ConfigurableReference) and bound.scoped_selector.endswith(
            "/gin.macro"):
        return bound.scoped_selector.split("/")[0], value, allowed, binding
    return binding, value, allowed
