"""The packaged gin files and table configs: where they are and how --gin_file finds them."""

import configparser
import fnmatch
import os

from coda_flax import resources
from coda_flax.resources import GIN_DIR, packaged_gin_name, resolve_gin_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _packaged_files():
    return sorted(os.path.relpath(os.path.join(d, f), GIN_DIR).replace(os.sep, "/")
                  for d, _, files in os.walk(GIN_DIR) for f in files)


def test_gin_and_configs_live_in_the_package_and_setup_cfg_ships_every_gin_file():
    pkg = os.path.dirname(os.path.abspath(resources.__file__))
    assert GIN_DIR == os.path.join(pkg, "gin")
    files = _packaged_files()
    assert {"models/tiny.gin", "models/variants/coda_k_to_all.gin", "runs/finetune.gin",
            "runs/eval.gin", "runs/infer.gin", "runs/pretrain.gin"} <= set(files)
    assert all(f.endswith(".gin") for f in files)
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    globs = cfg["options.package_data"]["coda_flax"].replace(",", " ").split()
    assert all(any(fnmatch.fnmatch(f"gin/{f}", g) for g in globs) for f in files)
    assert os.path.isfile(os.path.join(pkg, "configs", "__init__.py"))   # a subpackage
    assert not os.path.exists(os.path.join(ROOT, "gin"))                 # one copy only
    assert not os.path.exists(os.path.join(ROOT, "configs"))


def test_packaged_names_and_the_old_repository_paths_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                       # away from the repository
    full = os.path.join(GIN_DIR, "models", "variants", "coda_k_to_all.gin")
    for arg in ("models/variants/coda_k_to_all.gin", "gin/models/variants/coda_k_to_all.gin",
                "./gin/models/variants/coda_k_to_all.gin", full):
        assert resolve_gin_file(arg) == full, arg
        assert packaged_gin_name(arg) == "models/variants/coda_k_to_all.gin", arg
    for arg in ("models/nope.gin", "gin/runs/nope.gin", "gin/gin/runs/eval.gin", "eval.gin",
                str(tmp_path / "runs" / "eval.gin")):
        assert resolve_gin_file(arg) is None, arg
        assert packaged_gin_name(arg) is None, arg


def test_a_file_as_given_or_in_a_search_path_comes_before_the_packaged_one(tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "eval.gin").write_text("# mine\n")
    assert resolve_gin_file("runs/eval.gin") == "runs/eval.gin"              # current dir first
    other = tmp_path / "search"
    (other / "models").mkdir(parents=True)
    (other / "models" / "tiny.gin").write_text("# mine\n")
    assert resolve_gin_file("models/tiny.gin", [str(other)]) == str(other / "models" / "tiny.gin")
    assert resolve_gin_file("models/tiny.gin") == os.path.join(GIN_DIR, "models", "tiny.gin")
