"""The repository is self-contained: nothing cites a design file outside it, every `docs/*.md`
that code, tests or docs cite exists, and docs/design.md's public API import line names what
coda_flax exports."""

import os
import re
from pathlib import Path

import coda_flax

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".gin", ".sh", ".cfg", ".toml"}


def _skipped(folder: str) -> bool:
    return folder.startswith(".") or folder.endswith(".egg-info") or folder in {
        "outputs", "__pycache__"}


def _files():
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not _skipped(d)]
        for name in names:
            path = Path(folder) / name
            if path.suffix in SUFFIXES:
                yield (path.relative_to(ROOT),
                       path.read_text(encoding="utf-8", errors="replace"))


def test_nothing_cites_a_design_file_outside_the_repository():
    marker = "DESIGN" + ".md"                          # split so this file does not match
    bad = [str(rel) for rel, text in _files() if marker in text]
    assert not bad, f"files citing {marker} (cite docs/design.md instead): {bad}"


def test_cited_docs_exist():
    missing = sorted({f"{rel}: {m}" for rel, text in _files()
                      for m in re.findall(r"\bdocs/[\w./-]+?\.(?:md|png)\b", text)
                      if not (ROOT / m).exists()})
    assert not missing, f"cited documents that are not in the repository: {missing}"


def test_design_public_api_names_are_exported():
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    block = re.search(r"from coda_flax import \(([^)]*)\)", text)
    assert block, "docs/design.md section 3 lost its `from coda_flax import (...)` line"
    names = {n.strip() for n in block.group(1).replace("\n", " ").split(",") if n.strip()}
    assert {"soft_topk", "Router", "CodaConfig", "ModelConfig"} <= names
    assert names <= set(coda_flax.__all__), sorted(names - set(coda_flax.__all__))
