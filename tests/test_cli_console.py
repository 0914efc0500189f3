"""The quiet console of the `coda` commands (coda_flax/cli/console.py) and the bench / eval
output at the command-line edge."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

from coda_flax.cli import console
from coda_flax.cli.train import format_metrics
from coda_flax.train import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(pathname: str, msg: str) -> logging.LogRecord:
    return logging.LogRecord("absl", logging.WARNING, pathname, 1, msg, (), None)


def test_seqio_cache_warnings_are_dropped_and_other_warnings_kept():
    drop = quiet._DropSeqioCacheWarnings()
    seqio = "/site-packages/seqio/dataset_providers.py"
    assert not drop.filter(_record(seqio, "Using an uncached FunctionDataset for training is "
                                          "not recommended since ..."))
    assert not drop.filter(_record(seqio, "Task '%s' does not support caching. Switching to "
                                          "on-the-fly preprocessing."))
    assert drop.filter(_record(seqio, "Task %s has no '%s' split, skipping."))
    assert drop.filter(_record("/coda_flax/train/gin_config.py", "uncached FunctionDataset"))


def _run(code: str, tmp_path, module_source: str) -> subprocess.CompletedProcess:
    (tmp_path / "noisy_native.py").write_text(textwrap.dedent(module_source))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    env.pop("CODA_VERBOSE", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_native_start_up_lines_are_silenced_and_replayed_when_the_import_fails(tmp_path):
    code = """
        from coda_flax.train import quiet
        quiet._import_quietly("noisy_native")
        import sys
        print("after", file=sys.stderr)
        """
    quiet = _run(code, tmp_path, """
        import os
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\\n")
        """)
    assert quiet.returncode == 0, quiet.stderr
    assert "cuda drivers" not in quiet.stderr and "after" in quiet.stderr
    failing = _run(code, tmp_path, """
        import os
        os.write(2, b"native detail of the failure\\n")
        raise ImportError("broken build")
        """)
    assert failing.returncode != 0
    assert "native detail of the failure" in failing.stderr and "broken build" in failing.stderr


def test_quiet_startup_sets_tensorflow_log_level_unless_verbose(tmp_path):
    code = """
        import os
        from coda_flax.cli import console
        console.quiet_startup(tensorflow=False)
        print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
        """
    out = _run(code, tmp_path, "")
    assert out.stdout.strip() == "3", out.stderr
    env_verbose = dict(os.environ, CODA_VERBOSE="1", PYTHONPATH=ROOT)
    env_verbose.pop("TF_CPP_MIN_LOG_LEVEL", None)
    verbose = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env_verbose,
                             capture_output=True, text=True, timeout=120)
    assert verbose.stdout.strip() != "3", verbose.stderr      # jax's own default, or none


def test_eval_metrics_are_printed_one_per_line():
    text = format_metrics({"loss_per_token": 1.234567, "num_examples": 8, "accuracy": 50.0})
    assert text.splitlines() == ["  loss_per_token   1.2346", "  num_examples     8",
                                 "  accuracy         50.0000"]


def test_a_full_disk_in_demo_compare_reproduce_is_one_line_and_other_errors_keep_traceback(
        capsys):
    """run_stoppable (coda demo / compare / reproduce): ENOSPC -> one line naming the path, exit
    1; any other error is not swallowed."""
    import pytest

    def full():
        raise OSError(28, "No space left on device", "/out/demo/results.json")
    assert console.run_stoppable("coda demo", "finished stages are kept.", full) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["coda demo: error: disk full: no space left on device writing "
                     "/out/demo/results.json; free some space or choose another directory, then "
                     "run again (checkpoints already saved are intact); finished stages are "
                     "kept."]

    def broken():
        raise ValueError("a bug")
    with pytest.raises(ValueError, match="a bug"):
        console.run_stoppable("coda demo", "finished stages are kept.", broken)
