"""Golden parameter trees: every parameter's path, shape, dtype and logical axis names for each
preset x variant, built with `jax.eval_shape` (no parameter memory is allocated).

The files under tests/golden/ are reviewed data, not code output that tests re-derive: a change
that renames, reshapes or re-partitions a parameter breaks checkpoints, adapter-only files and
sharding rules, so it must show up as a diff of a checked-in file. Regenerate deliberately with
`python scripts/update_golden.py` (see the README, "Parameter-tree golden files").
"""

from __future__ import annotations

import json
from pathlib import Path

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"

# name -> CodaConfig keyword arguments (None = dense T5). The preset's own adapter_dim / epsilon
# apply (ModelConfig.from_preset fills them in when the CodaConfig leaves the defaults).
VARIANTS: dict[str, dict | None] = {
    "dense": None,
    "parallel_adapter": {"reduction": 1},
    "coda": {"reduction": 3},
}


def golden_path(preset: str, variant: str) -> Path:
    return GOLDEN_DIR / f"param_tree_{preset}_{variant}.json"


def model_config(preset: str, variant: str):
    from coda_flax.config import CodaConfig, ModelConfig

    coda = VARIANTS[variant]
    return ModelConfig.from_preset(preset, coda=None if coda is None else CodaConfig(**coda))


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def live_tree(preset: str, variant: str) -> dict[str, dict]:
    """{"collection/path/to/param": {"shape": [...], "dtype": "float32", "axes": [...]}} of
    `build_module(config).init`, traced abstractly. Every leaf must carry logical axis names."""
    import flax.linen as nn
    import jax

    from coda_flax.model import build_module, init_args

    config = model_config(preset, variant)
    variables = jax.eval_shape(build_module(config).init, jax.random.key(0),
                               *init_args(config, decoder_length=1, abstract=True))
    tree = {}
    leaves = jax.tree_util.tree_leaves_with_path(
        variables, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))
    for path, leaf in leaves:
        name = "/".join(_key(k) for k in path)
        if not isinstance(leaf, nn.Partitioned):   # LogicallyPartitioned subclasses Partitioned
            raise AssertionError(f"{preset}/{variant}: parameter {name} has no logical axis "
                                 f"names (got {type(leaf).__name__}, not nn.Partitioned).")
        value = leaf.value
        tree[name] = {"shape": [int(d) for d in value.shape], "dtype": str(value.dtype),
                      "axes": list(leaf.names)}
    return dict(sorted(tree.items()))


def render(preset: str, variant: str, tree: dict[str, dict]) -> str:
    """The golden file's text: one parameter per line, so review diffs read line by line."""
    count = sum(_numel(v["shape"]) for v in tree.values())
    lines = ["{",
             f'  "preset": {json.dumps(preset)},',
             f'  "variant": {json.dumps(variant)},',
             f'  "coda": {json.dumps(VARIANTS[variant])},',
             f'  "num_params": {count},',
             '  "params": {']
    items = sorted(tree.items())
    for i, (name, spec) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        lines.append(f"    {json.dumps(name)}: {json.dumps(spec)}{comma}")
    lines += ["  }", "}", ""]
    return "\n".join(lines)


def load(preset: str, variant: str) -> dict:
    return json.loads(golden_path(preset, variant).read_text())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def diff(golden: dict[str, dict], live: dict[str, dict], limit: int = 10) -> list[str]:
    """Readable differences (removed / added / changed parameters), first `limit` of each kind;
    [] when the trees agree."""
    removed = [k for k in golden if k not in live]
    added = [k for k in live if k not in golden]
    changed = [k for k in golden if k in live and golden[k] != live[k]]
    out = []
    for label, sign, names in (("removed (in the golden file, not in the model)", "-", removed),
                               ("added (in the model, not in the golden file)", "+", added),
                               ("changed", "~", changed)):
        if not names:
            continue
        out.append(f"{len(names)} {label}:")
        for name in names[:limit]:
            if sign == "~":
                g, l = golden[name], live[name]
                fields = [f"{f} {g.get(f)} -> {l.get(f)}" for f in ("shape", "dtype", "axes")
                          if g.get(f) != l.get(f)]
                out.append(f"  ~ {name}: " + "; ".join(fields))
            else:
                spec = (golden if sign == "-" else live)[name]
                out.append(f"  {sign} {name} {spec['shape']} {spec['dtype']} {spec['axes']}")
        if len(names) > limit:
            out.append(f"  ... and {len(names) - limit} more")
    return out
