"""coda_flax as a library: the wheel, installed in a fresh venv outside the repository, carries
its gin files and table configs (the repository's top-level gin/ and configs/, mapped into the
package), and `coda summary`, `coda reproduce --dry-run` and a tiny
`coda train` from the packaged gin files work from a directory that is not the repository.

The fresh venv reuses the project venv's dependencies without downloading anything: a .pth file
puts the project venv's site-packages on its path (a plain path line, so the project's editable
install of coda_flax, which needs its own .pth to be processed, is not activated), and the wheel
goes in with `pip install --no-deps`."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a source distribution of the project holds (the build runs on a copy, so that nothing is
# written into the repository and no stale build/ folder leaks old files into the wheel).
SOURCE = ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "coda_flax", "gin", "configs")
TINY = ["--gin.model_config.vocab_size=400", "--gin.model_config.d_model=32",
        "--gin.model_config.num_heads=2", "--gin.model_config.head_dim=16",
        "--gin.model_config.d_ff=64"]


def _run(cmd, cwd, env, timeout=300):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python, bin dir, env, working directory outside the repository, wheel path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in SOURCE:
        if os.path.isdir(os.path.join(ROOT, name)):
            shutil.copytree(os.path.join(ROOT, name), src / name, ignore=shutil.ignore_patterns(
                "__pycache__", "*.pyc", "*.egg-info"))
        else:
            os.makedirs(src, exist_ok=True)
            shutil.copy(os.path.join(ROOT, name), src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INDEX"] = "1"                                      # nothing is downloaded
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(tmp / "dist"), str(src)], cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("coda_flax-*.whl")

    venv = tmp / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    python = str(venv / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=tmp, env=env).strip()
    with open(os.path.join(site, "project_venv_deps.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")        # the project venv's packages
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
          str(wheel)], cwd=tmp, env=env)
    work = tmp / "elsewhere"
    work.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return python, str(venv / "bin"), env, str(work), str(wheel)


def test_the_wheel_ships_gin_files_and_table_configs(installed):
    *_, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("coda_flax/gin/models/tiny.gin", "coda_flax/gin/variants/coda_k_to_all.gin",
              "coda_flax/gin/runs/finetune.gin", "coda_flax/gin/runs/eval.gin",
              "coda_flax/gin/t5x/model.gin", "coda_flax/gin/t5x/runs/pretrain.gin",
              "coda_flax/configs/__init__.py",
              "coda_flax/configs/table2.py", "coda_flax/configs/table8.py"):
        assert f in names, f
    # every file of the top-level gin/ and configs/ (one source), and nothing else of theirs
    for folder, suffix in (("gin", ".gin"), ("configs", ".py")):
        shipped = {n for n in names if n.startswith(f"coda_flax/{folder}/")}
        on_disk = {"coda_flax/" + os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
                   for d, _, files in os.walk(os.path.join(ROOT, folder)) for f in files
                   if f.endswith(suffix)}
        assert shipped == on_disk, folder
    assert not any(n.startswith(("tests/", "gin/", "configs/", "scripts/")) for n in names)


def test_installed_wheel_outside_the_repository_finds_its_files(installed):
    python, bindir, env, work, _ = installed
    venv = os.path.dirname(bindir)
    out = _run([python, "-c", "import coda_flax, coda_flax.resources as r, "
                "coda_flax.experiments.paper_tables as pt, coda_flax.configs as c; "
                "print(coda_flax.__file__); print(r.GIN_DIR); print(pt.CONFIGS_DIR); "
                "print(c.__file__)"],
               cwd=work, env=env).split()
    assert all(p.startswith(venv + os.sep) for p in out), out      # the wheel, not the repo
    summary = json.loads(_run([os.path.join(bindir, "coda"), "summary", "--preset",
                               "t5_1_1_small", "--reduction", "3", "--json"], cwd=work, env=env))
    assert summary["preset"] == "t5_1_1_small" and summary["config"]["coda"]["reduction"] == 3
    assert summary["speedup"] > 1
    dry = _run([os.path.join(bindir, "coda"), "reproduce", "--table", "2", "--dry-run",
                "--output", os.path.join(work, "out")], cwd=work, env=env)
    assert "--gin_file=models/t5_1_1_base.gin" in dry and "--gin_file=runs/eval.gin" in dry
    assert "missing gin file" not in dry and "[45/45]" in dry


def test_tiny_train_from_packaged_gin_files_outside_the_repository(installed, tmp_path):
    python, bindir, env, work, _ = installed
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from corpus_helpers import prepared_corpus
    vocab = prepared_corpus(tmp_path)
    run = os.path.join(work, "run")
    gin_dir = _run([python, "-m", "coda_flax.train", "--gin-dir"], cwd=work, env=env).strip()
    assert gin_dir.startswith(os.path.dirname(bindir) + os.sep)
    t5x_dir = _run([python, "-m", "coda_flax.t5x", "--gin-dir"], cwd=work, env=env).strip()
    assert t5x_dir == gin_dir                     # one gin folder for both engines
    for name in ("t5x/model.gin", "t5x/runs/pretrain.gin", "t5x/tasks/rte.gin"):
        assert os.path.isfile(os.path.join(t5x_dir, name)), name
    _run([os.path.join(bindir, "coda"), "train", "--gin_file=models/tiny.gin",
          "--gin_file=variants/coda_k_to_all.gin", "--gin_file=runs/finetune.gin", *TINY,
          f"--gin.MODEL_DIR='{run}'", f"--gin.DATA_DIR='{tmp_path}'", f"--gin.VOCAB_PATH='{vocab}'",
          "--gin.MIXTURE_OR_TASK_NAME='coda_shakespeare_play'",
          "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 8}", "--gin.TRAIN_STEPS=2",
          "--gin.BATCH_SIZE=4", "--gin.train.eval_max_examples=4", "--gin.train.eval_batch_size=4",
          "--gin.train.log_every=1", "--gin.train.progress=False"], cwd=work, env=env)
    assert os.path.isfile(os.path.join(run, "final", "config.json"))
    rows = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["split"] == "train"][-1] == 2
    assert "REDUCTION = 3" in open(os.path.join(run, "config.gin")).read()
