"""The packaged gin files and table configs: where they are and how --gin_file finds them."""

import configparser
import os

from coda_flax import resources
from coda_flax.resources import GIN_DIR, packaged_gin_name, resolve_gin_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _packaged_files():
    return sorted(os.path.relpath(os.path.join(d, f), GIN_DIR).replace(os.sep, "/")
                  for d, _, files in os.walk(GIN_DIR) for f in files)


def test_gin_and_configs_live_at_the_top_level_and_setup_cfg_ships_every_gin_file():
    """One source: the repository's gin/ and configs/ (nothing under coda_flax/ in git), mapped
    into the package by setup.cfg's package_dir with package_data globs covering every file."""
    assert GIN_DIR == os.path.join(ROOT, "gin") and resources.CONFIGS_DIR == os.path.join(
        ROOT, "configs")                                  # a source checkout: the top level
    files = _packaged_files()
    assert {"models/tiny.gin", "variants/coda_k_to_all.gin", "runs/finetune.gin",
            "runs/eval.gin", "runs/infer.gin", "runs/pretrain.gin",
            "t5x/model.gin", "t5x/runs/pretrain.gin"} <= set(files)
    assert all(f.endswith(".gin") for f in files)
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    package_dir = dict(line.split(" = ") for line in
                       cfg["options"]["package_dir"].strip().splitlines())
    assert package_dir == {"coda_flax.gin": "gin", "coda_flax.configs": "configs"}
    globs = cfg["options.package_data"]["coda_flax.gin"].replace(",", " ").split()
    assert all(any(_glob_match(f, g) for g in globs) for f in files), files
    assert os.path.isfile(os.path.join(ROOT, "configs", "__init__.py"))  # coda_flax.configs
    pkg = os.path.dirname(os.path.abspath(resources.__file__))
    assert not os.path.exists(os.path.join(pkg, "gin"))                  # one copy only
    assert not os.path.exists(os.path.join(pkg, "configs"))
    import coda_flax.configs                        # the editable install maps the package
    assert os.path.dirname(coda_flax.configs.__file__) == resources.CONFIGS_DIR


def test_packaged_names_and_the_old_repository_paths_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                       # away from the repository
    full = os.path.join(GIN_DIR, "variants", "coda_k_to_all.gin")
    for arg in ("variants/coda_k_to_all.gin", "gin/variants/coda_k_to_all.gin",
                "./gin/variants/coda_k_to_all.gin", full,
                # the names of earlier versions (variants were under models/)
                "models/variants/coda_k_to_all.gin", "gin/models/variants/coda_k_to_all.gin"):
        assert resolve_gin_file(arg) == full, arg
        assert packaged_gin_name(arg) == "variants/coda_k_to_all.gin", arg
    for arg in ("models/nope.gin", "gin/runs/nope.gin", "gin/gin/runs/eval.gin", "eval.gin",
                "variants/variants/dense.gin", "runs/variants/dense.gin",
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


def _glob_match(path, pattern):
    """setuptools' package_data glob: '*' stays within one folder (fnmatch's crosses '/')."""
    import fnmatch
    parts, globs = path.split("/"), pattern.split("/")
    return len(parts) == len(globs) and all(map(fnmatch.fnmatch, parts, globs))


def test_every_model_and_variant_file_registers_its_names_for_either_engine():
    """Each model / variant file imports coda_flax.train.gin_models (model_config, CodaConfig),
    so that it parses first under T5X's train.py too (coda train registers them itself); in a
    fresh process plain gin parses a model + variant pair with nothing registered beforehand."""
    import subprocess
    import sys

    line = "import coda_flax.train.gin_models"
    for folder in ("models", "variants"):
        for name in sorted(os.listdir(os.path.join(GIN_DIR, folder))):
            text = open(os.path.join(GIN_DIR, folder, name)).read()
            assert any(l.startswith(line) for l in text.splitlines()), f"{folder}/{name}"
    code = ("import gin, os, sys; d = sys.argv[1]\n"
            "gin.parse_config_files_and_bindings([os.path.join(d, 'models', 'tiny.gin'), "
            "os.path.join(d, 'variants', 'coda_k_to_k.gin')], ['REDUCTION = 4'])\n"
            "c = gin.query_parameter('%MODEL_CONFIG').scoped_configurable_fn()\n"
            "assert (c.d_model, c.coda.reduction, c.coda.attention) == (128, 4, 'k_to_k'), c\n")
    subprocess.run([sys.executable, "-c", code, GIN_DIR], check=True, cwd="/")
