"""The package's layering, read from the source: every `import` / `from ... import` of every
coda_flax module and every scripts/*.py launcher (with ast, imports inside functions included)
must point down the layer table, the import graph has no cycles (between modules, and so between
packages), tools do not import tools, only coda_flax/cli parses argv, and no module grows past
~600 lines unless it is listed below with a reason.

LAYERS lists one layer per package (a top-level module counts as one), bottom first; a module
may import its own package and the layers below it. The README's Architecture section shows the
same table (tests/test_import_graph.py::test_readme_architecture_is_the_layer_table).
"""

from __future__ import annotations

import ast
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, "coda_flax")
SCRIPTS = os.path.join(REPO, "scripts")

# Bottom first. "" is coda_flax/__init__.py, the public API (docs/design.md section 3).
LAYERS = (
    # the model core, in the order its modules build on each other
    "soft_topk", "routing", "layers", "config", "variants", "kplan", "inputs", "ctc", "coda_layer", "model",
    # checkpoints, then the public API that exports the core and the checkpoint entry points
    "checksums", "checkpoints", "",
    # data, tasks and training
    "frontends", "datasets", "tasks", "resources", "train", "t5x",
    # routing plots, analysis (numbers, reports), benchmarks
    "viz", "analysis", "bench",
    # end-to-end runs, the command line, the launchers
    "experiments", "cli", "scripts",
)
RANK = {name: i for i, name in enumerate(LAYERS)}
# Modules that sit in another layer than their package, and why.
ENTRY_POINTS = {
    # `python -m coda_flax.train` / `python -m coda_flax.t5x` are documented commands (and
    # tests/test_wheel.py runs the first); Python needs these files inside the packages, but
    # they are command lines: nothing imports them, and they only call coda_flax.cli.
    "train.__main__": "cli",
    "t5x.__main__": "cli",
}
# experiments modules that are not tools: the steps the tools share.
EXPERIMENT_HELPERS = {"pipeline", "runner", "demo_runs", "paper_tables", "gin_commands",
                      "prerequisites", "gin_runs", "claims_images", "claims_needles",
                      "claims_seeds", "claims_speed"}
# Tool -> tool imports still there, and why (each must still exist: see the test below).
KNOWN_TOOL_IMPORTS: dict[tuple[str, str], str] = {}

MAX_LINES = 600
# module (dotted, below coda_flax; the last component alone matches too, so that a module
# that moves between packages keeps its entry) -> why it may be longer
LONG_MODULES = {
    "bench": "one concern, the two benchmarks (the PA vs CoDA sweep and the soft top-k "
             "micro-benchmark) with their settings; timing, random weights, tables and plots "
             "live in analysis/",
}


def _walk(root: str, prefix: str) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                if rel.endswith("__init__"):
                    rel = rel[: -len("__init__")].rstrip(".")
                out[prefix + rel] = path
    return out


MODULES = _walk(ROOT, "")                     # "" = coda_flax/__init__.py
SCRIPT_MODULES = _walk(SCRIPTS, "scripts.")


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
            rel = module[len("coda_flax."):] if module.startswith("coda_flax.") else None
            names = [a.name for a in node.names]
            if rel is not None and all(f"{rel}.{n}" in MODULES for n in names):
                # `from pkg import module`: the modules (the package is their parent, which
                # Python loads anyway; counting it would make every sibling import a cycle).
                out.update(f"{module}.{n}" for n in names)
            else:
                out.add(module)
                out.update(f"{module}.{n}" for n in names)
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


def _script_imports(path: str) -> set[str]:
    """The coda_flax modules and the other scripts a launcher imports."""
    imported = _imports("scripts.x", path)
    return _internal(imported) | {f"scripts.{m}" for m in imported
                                  if f"scripts.{m}" in SCRIPT_MODULES}


GRAPH = {rel: _internal(_imports(rel, path)) for rel, path in MODULES.items()}
GRAPH.update({rel: _script_imports(path) for rel, path in SCRIPT_MODULES.items()})


def _package(rel: str) -> str:
    return rel.split(".")[0] if rel else ""


def _layer(rel: str) -> str | None:
    """The layer of a module: its entry point's, else its package's (None: not in the table)."""
    name = ENTRY_POINTS.get(rel, _package(rel))
    return name if name in RANK else None


def test_the_layer_table_names_every_module_and_only_packages_that_exist():
    unplaced = sorted(rel for rel in GRAPH if _layer(rel) is None)
    assert not unplaced, (f"modules outside the layer table: {unplaced}; add their package to "
                          f"LAYERS in {__file__}")
    tops = {_package(rel) for rel in GRAPH}
    missing = sorted(set(LAYERS) - tops)
    assert not missing, f"the layer table names packages that do not exist: {missing}"
    assert set(ENTRY_POINTS) <= set(MODULES), sorted(set(ENTRY_POINTS) - set(MODULES))


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a module above the importer's layer (its own package is always allowed)."""
    bad = []
    for rel, deps in sorted(graph.items()):
        own = _layer(rel)
        for dep in sorted(deps):
            if _package(dep) != _package(rel) and RANK[_layer(dep)] > RANK[own]:
                bad.append(f"{rel or '__init__'} ({own or 'public API'}) imports "
                           f"{dep or 'coda_flax'} ({_layer(dep) or 'public API'})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_down_the_layers():
    bad = upward_imports(GRAPH)
    assert not bad, "imports against the layering:\n  " + "\n  ".join(bad)


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, "import cycles (modules that import each other, directly or not):\n  " + (
        "\n  ".join(" <-> ".join(c) for c in found))


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {rel: set(deps) for rel, deps in GRAPH.items()}
    graph["soft_topk"].add("model")                  # core's bottom importing the model
    assert any(m.startswith("soft_topk (soft_topk) imports model") for m in
               upward_imports(graph))
    assert any({"soft_topk", "model"} <= set(c) for c in cycles(graph))
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_tools_do_not_import_tools():
    def tool(rel):
        parts = rel.split(".")
        return parts[0] == "experiments" and len(parts) > 1 and parts[1] not in EXPERIMENT_HELPERS
    bad = []
    for rel, deps in GRAPH.items():
        if _package(rel) not in ("experiments", "scripts"):
            continue
        for dep in deps:
            if ((tool(dep) and dep != rel) or (_package(dep) == "scripts" and dep != rel)) \
                    and (rel, dep) not in KNOWN_TOOL_IMPORTS:
                bad.append(f"{rel} imports the tool {dep}")
    stale = sorted(f"{a} -> {b}" for a, b in KNOWN_TOOL_IMPORTS if b not in GRAPH.get(a, ()))
    assert not stale, f"KNOWN_TOOL_IMPORTS lists imports that are gone: {stale}; drop them"
    assert not bad, ("tools import tools (share the step through experiments/pipeline.py or "
                     "analysis/ instead):\n  " + "\n  ".join(sorted(bad)))


def test_only_the_cli_parses_argv():
    offenders = sorted(f"coda_flax.{rel}" for rel, path in MODULES.items()
                       if _package(rel) != "cli"
                       and ({"argparse", "optparse", "absl.flags"} & _imports(rel, path)))
    assert not offenders, f"argv parsing outside coda_flax/cli: {offenders}"


def test_readme_architecture_is_the_layer_table():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    drawn = [re.sub(r"[/(].*", "", line).strip() for line in block.splitlines()
             if line.strip() and not set(line.strip()) <= set("|^v-")]
    names = [n.strip() for line in drawn for n in line.split(",")]
    want = [("__init__" if name == "" else name) for name in reversed(LAYERS)]
    assert names == want, ("README's Architecture diagram must list LAYERS top first, one line "
                           f"per group:\n  drawn {names}\n  table {want}")


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
