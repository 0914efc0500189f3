"""The package's public API: every name in coda_flax.__all__ imports, the names that the README
and docs/design.md section 3 use are exported, generic helpers are not, and `import coda_flax` stays
light (no TensorFlow, PyTorch, orbax or seqio)."""

import re
import subprocess
import sys
from pathlib import Path

import coda_flax

ROOT = Path(__file__).resolve().parents[1]
# docs/design.md section 3 (binding) and the README's library use.
REQUIRED = {"soft_topk", "Router", "CodaEncoderLayer", "EncoderDecoder", "ModelConfig",
            "CodaConfig", "SoftTopkConfig", "build_module", "load_hf_t5", "dense_to_coda", "EncoderCtc"}
GENERIC_HELPERS = {"gather", "scatter_add", "RoutingDecision", "relative_position_bias",
                   "model_config", "sha256_file"}


def test_every_exported_name_imports():
    assert len(set(coda_flax.__all__)) == len(coda_flax.__all__), "duplicates in __all__"
    namespace = {}
    exec(f"from coda_flax import {', '.join(coda_flax.__all__)}", namespace)
    for name in coda_flax.__all__:
        assert namespace[name] is getattr(coda_flax, name)
    namespace = {}
    exec("from coda_flax import *", namespace)
    assert set(coda_flax.__all__) <= set(namespace)


def test_readme_and_design_names_are_exported_and_helpers_are_not():
    missing = REQUIRED - set(coda_flax.__all__)
    assert not missing, f"public names missing from coda_flax.__all__: {sorted(missing)}"
    readme = (ROOT / "README.md").read_text()
    used = set()
    for names in re.findall(r"^from coda_flax import \(?([^)\n]+)\)?", readme, re.M):
        used |= {n.strip() for n in names.split(",") if n.strip()}
    assert used and not used - set(coda_flax.__all__), sorted(used - set(coda_flax.__all__))
    assert not GENERIC_HELPERS & set(coda_flax.__all__)
    assert not any(hasattr(coda_flax, name) for name in GENERIC_HELPERS)


def test_exports_are_the_documented_objects():
    from coda_flax.checkpoints.convert import dense_to_coda
    from coda_flax.checkpoints.hf import load_hf_t5
    from coda_flax.model import EncoderCtc, build_module

    assert coda_flax.load_hf_t5 is load_hf_t5 and coda_flax.dense_to_coda is dense_to_coda
    assert coda_flax.EncoderCtc is EncoderCtc and coda_flax.build_module is build_module
    speech = coda_flax.ModelConfig.from_preset("speech_base")
    assert type(coda_flax.build_module(speech)) is EncoderCtc


def test_import_is_light():
    heavy = ("tensorflow", "torch", "orbax.checkpoint", "seqio", "transformers", "gin",
             "matplotlib", "tensorstore")
    code = ("import sys, coda_flax; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.strip()
    assert out == "", f"`import coda_flax` loads {out}"
