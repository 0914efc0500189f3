"""The package's layering, read from the source: every `import` / `from ... import` of every
coda_flax module (with ast, imports inside functions included) must point down the layer table,
tools must not import tools, only coda_flax/cli parses argv, and no module grows past ~600 lines
unless it is listed below with a reason.

    cli            argv: one module per `coda` subcommand, console set-up
    experiments    end-to-end runs (tools) and the steps they share (pipeline)
    analysis       FLOPs, timing, routing statistics, plots, benchmarks (+ bench.py, viz.py)
    I/O            checkpoints, train, tasks, t5x, frontends, datasets, resources
    core           the model: soft_topk, routing, layers, coda_layer, model, config, inputs, ctc

A module imports its own layer and the layers below it. `__main__` modules are entry points
(`python -m coda_flax.train`) and may import cli. The package's own __init__ is the public
API (DESIGN.md section 3): core and checkpoints.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "coda_flax")

CORE, IO, ANALYSIS, EXPERIMENTS, CLI = range(5)
LAYER_NAMES = {CORE: "core", IO: "I/O", ANALYSIS: "analysis", EXPERIMENTS: "experiments",
               CLI: "cli"}

# First dotted component below coda_flax -> layer.
LAYERS = {
    "soft_topk": CORE, "routing": CORE, "layers": CORE, "coda_layer": CORE, "model": CORE,
    "config": CORE, "inputs": CORE, "ctc": CORE,
    "checkpoints": IO, "train": IO, "tasks": IO, "t5x": IO, "frontends": IO, "datasets": IO,
    "resources": IO, "checksums": IO,
    "analysis": ANALYSIS, "bench": ANALYSIS, "viz": ANALYSIS,
    "experiments": EXPERIMENTS,
    "cli": CLI,
}
MAY_BE_MISSING: set = set()
PUBLIC_API_MAX = IO                      # coda_flax/__init__.py: core + checkpoints

# experiments modules that are not tools: the steps the tools share.
EXPERIMENT_HELPERS = {"pipeline", "paper_tables", "gin_commands", "prerequisites"}

MAX_LINES = 600
# module (dotted, below coda_flax; the last component alone matches too, so that a module
# that moves between packages keeps its entry) -> why it may be longer
LONG_MODULES = {
    "datasets.speech": "one concern, building the offline speech corpora (read prompts, LibriVox "
                       "clips, espeak-ng synthesis) into features; fetching lives in "
                       "datasets/fetch.py",
    "bench": "one concern, the two benchmarks of DESIGN's bench.py (the PA vs CoDA sweep and "
             "the soft top-k micro-benchmark) with their settings; timing, random weights, "
             "tables and plots live in analysis/",
    "viz": "one concern, DESIGN's routing plots (heatmaps, highlights, images, audio); the "
           "decisions and statistics live in analysis/routing_stats.py",
}


def _modules() -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                if rel.endswith("__init__"):
                    rel = rel[: -len("__init__")].rstrip(".")
                out[rel] = path
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> set[str]:
    """Absolute dotted names this module imports (any depth of the tree, relative resolved)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = ("coda_flax." + name if name else "coda_flax")
    if not path.endswith("__init__.py"):
        package = package.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.add(module)
            out.update(f"{module}.{a.name}" for a in node.names)   # `from pkg import module`
    return out


def _internal(imported: set[str]) -> set[str]:
    """The coda_flax modules among imported names (below coda_flax; "" = the package)."""
    out = set()
    for dotted in imported:
        if dotted == "coda_flax":
            out.add("")
        elif dotted.startswith("coda_flax."):
            rel = dotted[len("coda_flax."):]
            if rel in MODULES:
                out.add(rel)
            elif rel.rsplit(".", 1)[0] in MODULES:            # from module import NAME
                out.add(rel.rsplit(".", 1)[0])
    return out


def _layer(rel: str) -> int | None:
    return LAYERS.get(rel.split(".")[0])


GRAPH = {rel: _internal(_imports(rel, path)) for rel, path in MODULES.items()}


def test_the_layer_table_names_every_module_and_only_packages_that_exist():
    unplaced = sorted(rel for rel in MODULES if rel and _layer(rel) is None)
    assert not unplaced, (f"modules outside the layer table: {unplaced}; add their package to "
                          f"LAYERS in {__file__}")
    tops = {rel.split(".")[0] for rel in MODULES if rel}
    missing = sorted(set(LAYERS) - tops - MAY_BE_MISSING)
    assert not missing, f"the layer table names packages that do not exist: {missing}"


def test_imports_point_down_the_layers():
    bad = []
    for rel, deps in sorted(GRAPH.items()):
        if rel == "":
            allowed = PUBLIC_API_MAX
        elif rel.endswith("__main__"):
            allowed = CLI                                   # entry points call the cli
        else:
            allowed = _layer(rel)
        for dep in sorted(deps):
            if dep == "":
                if rel and _layer(rel) == CORE:
                    bad.append(f"coda_flax.{rel} (core) imports the coda_flax package")
                continue
            if _layer(dep) > allowed:
                where = LAYER_NAMES[_layer(rel)] if rel else "public API"
                bad.append(f"coda_flax.{rel or '__init__'} ({where}) imports coda_flax.{dep} "
                           f"({LAYER_NAMES[_layer(dep)]})")
    assert not bad, "imports against the layering:\n  " + "\n  ".join(bad)


def test_core_imports_only_core():
    for rel, deps in GRAPH.items():
        if rel and _layer(rel) == CORE:
            others = sorted(d for d in deps if d and _layer(d) != CORE)
            assert not others, f"core module coda_flax.{rel} imports {others}"


def test_tools_do_not_import_tools():
    def tool(rel):
        parts = rel.split(".")
        return parts[0] == "experiments" and len(parts) > 1 and parts[1] not in EXPERIMENT_HELPERS
    bad = []
    for rel, deps in GRAPH.items():
        if rel.split(".")[0] != "experiments":
            continue
        for dep in deps:
            if tool(dep) and dep != rel:
                bad.append(f"coda_flax.{rel} imports the tool coda_flax.{dep}")
    assert not bad, ("tools import tools (share the step through experiments/pipeline.py or "
                     "analysis/ instead):\n  " + "\n  ".join(sorted(bad)))


def test_only_the_cli_parses_argv():
    offenders = sorted(f"coda_flax.{rel}" for rel, path in MODULES.items()
                       if rel.split(".")[0] != "cli"
                       and ({"argparse", "optparse", "absl.flags"} & _imports(rel, path)))
    assert not offenders, f"argv parsing outside coda_flax/cli: {offenders}"


def test_modules_stay_small():
    def allowed(rel):
        return rel in LONG_MODULES or rel.rsplit(".", 1)[-1] in LONG_MODULES
    long = []
    for rel, path in sorted(MODULES.items()):
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES and not allowed(rel):
            long.append(f"coda_flax.{rel}: {n} lines")
    assert not long, (f"modules over {MAX_LINES} lines (split them by concern, or list them in "
                      f"LONG_MODULES with the reason):\n  " + "\n  ".join(long))


@pytest.mark.parametrize("name", sorted(k for k, v in LONG_MODULES.items()))
def test_long_module_exceptions_are_still_needed(name):
    sizes = [sum(1 for _ in open(path, encoding="utf-8")) for rel, path in MODULES.items()
             if rel == name or rel.rsplit(".", 1)[-1] == name]
    if not sizes:
        pytest.skip(f"{name} is not in the package (yet)")
    assert max(sizes) > MAX_LINES, f"{name} is back under {MAX_LINES} lines: drop its exception"
