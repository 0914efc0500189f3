"""Settings are checked before a run touches disk: wrong types and out-of-range values of every
documented macro and train / evaluate / infer argument are refused in one line naming the
setting, its value and the allowed range; MODEL_DIR is not created."""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coda_flax.cli import main
from coda_flax.train.settings import RULES, SettingError, check_settings


@pytest.mark.parametrize("entry,name,value,message", [
    ("train", "train_steps", 2.5, "train_steps=2.5: must be an integer >= 1"),
    ("train", "train_steps", -3, "train_steps=-3: must be an integer >= 1"),
    ("train", "train_steps", True, "train_steps=True: must be an integer >= 1"),
    ("train", "learning_rate", "fast", "learning_rate='fast': must be a finite number > 0"),
    ("train", "learning_rate", float("inf"), "learning_rate=inf: must be a finite number > 0"),
    ("train", "batch_size", 0, "batch_size=0: must be an integer >= 1"),
    ("train", "task_feature_lengths", "64", "task_feature_lengths='64': must be a dict "
                                            "{'inputs': int >= 1, 'targets': int >= 1}"),
    ("train", "task_feature_lengths", {"inputs": 64}, "task_feature_lengths={'inputs': 64}"),
    ("train", "k_anneal_fraction", 1.5, "k_anneal_fraction=1.5: must be a finite number in "
                                        "[0, 1]"),
    ("train", "schedule", "linear", "schedule='linear': must be one of 'constant', 'rsqrt', "
                                    "'cosine'"),
    ("train", "model_dir", "", "model_dir='': must be a non-empty string"),
    ("evaluate", "max_examples", 0, "max_examples=0: must be an integer >= 1 (or None)"),
    ("infer", "inputs", "a string", "inputs='a string': must be a non-empty list of strings"),
    ("infer", "inputs", [], "inputs=[]: must be a non-empty list of strings"),
    ("infer", "inputs", ["ok", 3], "inputs=['ok', 3]: must be a non-empty list of strings"),
])
def test_a_wrong_argument_is_named_with_its_value_and_the_allowed_range(entry, name, value,
                                                                        message):
    with pytest.raises(SettingError) as e:
        check_settings(entry, {name: value})
    assert message in str(e.value)


def test_good_values_pass_and_every_problem_is_listed():
    check_settings("train", {"train_steps": 1, "learning_rate": 1, "k_anneal_fraction": 0,
                             "task_feature_lengths": {"inputs": 1, "targets": 1},
                             "eval_max_examples": None, "progress": False})
    with pytest.raises(SettingError) as e:
        check_settings("train", {"train_steps": 0, "batch_size": "8"})
    assert [p[0] for p in e.value.problems] == ["train_steps", "batch_size"]


def _wrong(kind, rule):
    """Values a macro of this rule must refuse (gin literals: repr() parses back)."""
    text = st.text("abcxyz", min_size=1, max_size=4)
    if kind == "int":
        low = int(rule.low)
        return st.one_of(st.integers(max_value=low - 1), text, st.booleans(),
                         st.floats(allow_nan=False, allow_infinity=False).filter(
                             lambda x: not float(x).is_integer()),
                         st.lists(st.integers(1, 9), max_size=2))
    if kind == "float":
        return st.one_of(st.floats(max_value=0.0, allow_nan=False, allow_infinity=False), text,
                         st.booleans(), st.lists(st.integers(), max_size=2))
    if kind == "str":
        return st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.just(""), st.booleans(), st.lists(text, max_size=2))
    if kind == "lengths":
        return st.one_of(text, st.integers(), st.lists(st.integers(1, 9), max_size=2),
                         st.fixed_dictionaries({"inputs": st.integers(max_value=0),
                                                "targets": st.integers(1, 9)}),
                         st.fixed_dictionaries({"inputs": st.integers(1, 9)}),
                         st.fixed_dictionaries({"inputs": st.integers(1, 9),
                                                "targets": text}))
    if kind == "strings":
        return st.one_of(text, st.just([]), st.integers(),
                         st.lists(st.integers(), min_size=1, max_size=2))
    raise AssertionError(kind)


# the macros of runs/finetune.gin and the argument each sets
MACROS = {"TRAIN_STEPS": "train_steps", "BATCH_SIZE": "batch_size",
          "LEARNING_RATE": "learning_rate", "TASK_FEATURE_LENGTHS": "task_feature_lengths",
          "MIXTURE_OR_TASK_NAME": "mixture_or_task_name", "MODEL_DIR": "model_dir",
          "NUM_PARTITIONS": "num_partitions"}
GOOD = {"TRAIN_STEPS": "1", "BATCH_SIZE": "2", "LEARNING_RATE": "0.01",
        "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 4}",
        "MIXTURE_OR_TASK_NAME": "'coda_shakespeare_play'", "NUM_PARTITIONS": "1"}


@st.composite
def _bad_macro(draw):
    macro = draw(st.sampled_from(sorted(MACROS)))
    rule = RULES["train"][MACROS[macro]]
    return macro, draw(_wrong(rule.kind, rule))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bad=_bad_macro())
def test_random_wrong_macros_exit_1_naming_the_setting_and_write_nothing(bad, tmp_path, capsys):
    macro, value = bad
    model_dir = tmp_path / "run"
    flags = {**GOOD, "MODEL_DIR": repr(str(model_dir)), macro: repr(value)}
    assert main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
                 *[f"--gin.{k}={v}" for k, v in flags.items()]]) == 1
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith("coda train: error: SettingError: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert f"{macro}={value!r}: must be " in lines[0], lines[0]
    assert f"(sets train.{MACROS[macro]})" in lines[0]
    assert not os.path.exists(model_dir)


# runs/eval.gin's and runs/infer.gin's macros: mode -> (function, {macro: argument}, good flags)
OTHER_MODES = {
    "eval": ("evaluate", {"BATCH_SIZE": "batch_size", "SPLIT": "split",
                          "TASK_FEATURE_LENGTHS": "task_feature_lengths",
                          "MIXTURE_OR_TASK_NAME": "mixture_or_task_name",
                          "CHECKPOINT_PATH": "checkpoint_path"},
             {"CHECKPOINT_PATH": "'/nowhere'", "MIXTURE_OR_TASK_NAME": "'coda_shakespeare_play'",
              "TASK_FEATURE_LENGTHS": "{'inputs': 8, 'targets': 4}", "BATCH_SIZE": "2"}),
    "infer": ("infer", {"INPUT_LENGTH": "input_length", "TARGET_LENGTH": "target_length",
                        "NUM_DECODES": "num_decodes", "INPUTS": "inputs",
                        "CHECKPOINT_PATH": "checkpoint_path"},
              {"CHECKPOINT_PATH": "'/nowhere'", "INPUTS": "['a']"}),
}


@st.composite
def _bad_eval_or_infer_macro(draw):
    mode = draw(st.sampled_from(sorted(OTHER_MODES)))
    function, macros, _ = OTHER_MODES[mode]
    macro = draw(st.sampled_from(sorted(macros)))
    rule = RULES[function][macros[macro]]
    return mode, macro, draw(_wrong(rule.kind, rule))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(bad=_bad_eval_or_infer_macro())
def test_random_wrong_eval_and_infer_macros_exit_1_naming_the_setting(bad, tmp_path, capsys):
    mode, macro, value = bad
    function, macros, good = OTHER_MODES[mode]
    out = tmp_path / "out"
    where = {"eval": "EVAL_OUTPUT_DIR", "infer": "OUTPUT_PATH"}[mode]
    flags = {**good, where: repr(str(out)), macro: repr(value)}
    assert main([mode, f"--gin_file=runs/{mode}.gin",
                 *[f"--gin.{k}={v}" for k, v in flags.items()]]) == 1
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.startswith(f"coda {mode}: error: SettingError: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert f"{macro}={value!r}: must be " in lines[0], lines[0]
    assert f"(sets {function}.{macros[macro]})" in lines[0]
    assert not os.path.exists(out)


@pytest.mark.parametrize("binding,message", [
    ("model_config.d_model=2.5", "model_config.d_model=2.5: must be an integer"),
    ("REDUCTION='x'", "REDUCTION='x': must be a finite number (sets CodaConfig.reduction)"),
    ("CodaConfig.adapter_dim='8'", "CodaConfig.adapter_dim='8': must be an integer"),
])
def test_model_macros_of_the_wrong_type_are_named(binding, message, tmp_path, capsys):
    assert main(["train", "--gin_file=models/tiny.gin",
                 "--gin_file=models/variants/coda_k_to_all.gin", "--gin_file=runs/finetune.gin",
                 *[f"--gin.{k}={v}" for k, v in GOOD.items()],
                 f"--gin.MODEL_DIR='{tmp_path / 'run'}'", f"--gin.{binding}"]) == 1
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "run")


# run.train's flat keyword arguments before they were grouped into dataclasses, with their
# defaults (REQUIRED: none): the names gin binds as `train.NAME` in the run files and flags
REQUIRED = object()
FLAT_TRAIN = {
    "model_config": REQUIRED, "mixture_or_task_name": REQUIRED,
    "task_feature_lengths": REQUIRED, "train_steps": REQUIRED, "batch_size": REQUIRED,
    "model_dir": REQUIRED, "initial_checkpoint_path": None, "learning_rate": 1e-3,
    "schedule": "constant", "warmup_steps": 0, "trainable": "finetune", "checkpoint_every": 1000,
    "keep_checkpoints": 3, "log_every": 50, "eval_every": 0, "eval_split": "validation",
    "eval_batch_size": 32, "eval_max_examples": None, "k_anneal_fraction": 0.1,
    "k_anneal_stages": 4, "num_partitions": 1, "seed": 0, "z_loss": 1e-4,
    "label_smoothing": 0.0, "data_dir": None, "vocab_path": None, "tfds_data_dir": None,
    "progress": True, "parameter_scale": True, "extra_files": None, "max_abs_param": 1e6,
    "max_update_ratio": 10.0}


def test_gin_binds_train_by_the_same_flat_names_with_the_same_defaults():
    import inspect

    from coda_flax.train.gin_config import flat_train
    params = inspect.signature(flat_train()).parameters.values()
    assert {p.name: REQUIRED if p.default is p.empty else p.default for p in params} == \
        FLAT_TRAIN
    assert set(RULES["train"]) <= set(FLAT_TRAIN)


def test_train_arguments_group_flat_names_into_the_settings_dataclasses():
    from coda_flax.train.settings import (CheckpointSettings, DataSettings, EvalSettings,
                                          GuardSettings, OptimizerSettings, ScheduleSettings,
                                          flat_settings, train_arguments)
    lengths = {"inputs": 8, "targets": 4}
    args = train_arguments(model_config=None, mixture_or_task_name="coda_toy",
                           task_feature_lengths=lengths, batch_size=8, train_steps=10,
                           model_dir="/tmp/run", learning_rate=0.5, trainable="all",
                           eval_every=3, max_abs_param=5.0, seed=2)
    assert args == {
        "model_config": None, "seed": 2, "data": DataSettings("coda_toy", lengths, 8),
        "schedule": ScheduleSettings(10, learning_rate=0.5),
        "checkpoints": CheckpointSettings("/tmp/run"),
        "optimizer": OptimizerSettings(trainable="all"), "evaluation": EvalSettings(3),
        "guard": GuardSettings(max_abs_param=5.0)}
    flat = flat_settings(**args)
    assert flat["learning_rate"] == 0.5 and flat["eval_split"] == "validation"
    assert train_arguments(**flat) == args
    with pytest.raises(TypeError, match="batch_size given both flat and in data="):
        train_arguments(data=args["data"], batch_size=4)
    with pytest.raises(TypeError, match="task_feature_lengths, batch_size not given"):
        train_arguments(mixture_or_task_name="coda_toy", train_steps=1, model_dir="/tmp/run")


def test_run_train_checks_its_settings_before_touching_model_dir(tmp_path):
    from coda_flax import tiny_config
    from coda_flax.train import run
    from coda_flax.train.settings import CheckpointSettings, DataSettings, ScheduleSettings
    model_dir = tmp_path / "run"
    good = dict(model_config=tiny_config(), checkpoints=CheckpointSettings(str(model_dir)),
                data=DataSettings("coda_toy", {"inputs": 8, "targets": 4}, 0))
    with pytest.raises(SettingError) as e:
        run.train(schedule=ScheduleSettings(2.5), **good)
    assert [p[0] for p in e.value.problems] == ["train_steps", "batch_size"]
    with pytest.raises(TypeError, match="schedule must be a ScheduleSettings"):
        run.train(schedule={"train_steps": 3}, **good)
    assert not os.path.exists(model_dir)
