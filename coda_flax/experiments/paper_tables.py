"""The paper's result tables as data (configs/tableN.py, the module coda_flax.configs): loading and checking a
table spec, and writing ours next to the paper's numbers in the paper's layout.

    load_table(2) -> spec                      the TABLE dict, validated (validate_table)
    metric_columns(spec)                       the columns that are experiments
    write_table(spec, results) -> markdown     each cell "ours (paper X)", pure

Used by coda_flax.experiments.reproduce (`coda reproduce`).
"""

from __future__ import annotations

import copy
import importlib
import math
from typing import Any, Mapping

from coda_flax import resources
from coda_flax.variants import by_gin_file

CONFIGS_PACKAGE = "coda_flax.configs"      # configs/, shipped in the package (setup.py)
CONFIGS_DIR = resources.CONFIGS_DIR
TABLE_NUMBERS = (2, 3, 4, 5, 6, 9)


class ReproduceError(Exception):
    """A usage or configuration problem: nothing was run (exit status 2)."""


# ------------------------------------------------------------------------------ tables (data)
def table_title(spec) -> str:
    return f"Table {spec.get('number', spec['id'])}"


def _configs_package() -> str:
    """The package of the table configs (configs/, shipped in the wheel as coda_flax.configs)."""
    return CONFIGS_PACKAGE


def table_id(which) -> str:
    text = str(which).strip().lower()
    text = text[len("table"):] if text.startswith("table") else text
    if not text.isdigit() or int(text) not in TABLE_NUMBERS:
        raise ReproduceError(f"unknown table {which!r}; the paper's tables with experiment grids "
                             f"are {', '.join(map(str, TABLE_NUMBERS))}.")
    return f"table{int(text)}"


def load_table(which) -> dict:
    """The TABLE dict of configs/tableN.py (a deep copy), validated.
    which: 2, "2" or "table2"."""
    package = _configs_package()
    module = importlib.import_module(f"{package}.{table_id(which)}")
    spec = copy.deepcopy(module.TABLE)
    validate_table(spec)
    return spec


def load_table8():
    return importlib.import_module(f"{_configs_package()}.table8")


_TRAIN_FIELDS = ("task", "metric", "split", "feature_lengths", "train_steps", "batch_size",
                 "learning_rate", "schedule")


def validate_table(spec: Mapping[str, Any]) -> None:
    """Structural checks of a table spec; raises ReproduceError naming the problem."""
    where = f"table spec {spec.get('id', '?')!r}"
    for key in ("id", "caption", "status", "label_columns", "columns", "rows"):
        if key not in spec:
            raise ReproduceError(f"{where}: missing key {key!r}.")
    if spec["status"] not in ("ready", "not_implemented"):
        raise ReproduceError(f"{where}: status must be 'ready' or 'not_implemented'.")
    cols = {c["key"]: c for c in spec["columns"]}
    rows = {r["key"]: r for r in spec["rows"]}
    if len(cols) != len(spec["columns"]) or len(rows) != len(spec["rows"]):
        raise ReproduceError(f"{where}: duplicate column or row keys.")
    for c in spec["columns"]:
        kind = c.get("kind", "metric")
        if kind not in ("metric", "paper_only"):
            raise ReproduceError(f"{where}: column {c['key']!r} has unknown kind {kind!r}.")
        missing = [f for f in _TRAIN_FIELDS if kind == "metric" and f not in c]
        if missing:
            raise ReproduceError(f"{where}: column {c['key']!r} lacks {missing}.")
    for r in spec["rows"]:
        unknown = set(r.get("paper", {})) - set(cols)
        if unknown:
            raise ReproduceError(f"{where}: row {r['key']!r} has paper numbers for unknown "
                                 f"columns {sorted(unknown)}.")
        if len(r.get("labels", ())) != len(spec["label_columns"]):
            raise ReproduceError(f"{where}: row {r['key']!r} needs one label per label column "
                                 f"{spec['label_columns']}.")
        if r.get("reference"):
            continue
        if "variant_gin" not in r:
            raise ReproduceError(f"{where}: row {r['key']!r} lacks variant_gin.")
        for gin_file in (r["variant_gin"], (r.get("pretrain") or {}).get("variant_gin")):
            try:
                if gin_file:
                    by_gin_file(gin_file)
            except ValueError as e:
                raise ReproduceError(f"{where}: row {r['key']!r}: {e}") from None
        if r.get("delta_baseline") and r["delta_baseline"] not in rows:
            raise ReproduceError(f"{where}: row {r['key']!r}: delta_baseline "
                                 f"{r['delta_baseline']!r} is not a row.")
        for c in spec["columns"]:
            if c.get("kind", "metric") != "metric":
                continue
            owners = [x for x in (r, c) if "model_gin" in x]
            if len(owners) != 1:
                raise ReproduceError(f"{where}: cell ({r['key']}, {c['key']}): exactly one of the "
                                     f"row and the column must give model_gin.")


def metric_columns(spec) -> list[dict]:
    return [c for c in spec["columns"] if c.get("kind", "metric") == "metric"]


# ------------------------------------------------------------------------------ the paper's layout
def column_header(col) -> str:
    return " ".join(x for x in (col.get("group"), col["label"]) if x)


def _fmt_paper(row, col, decimals) -> str | None:
    text = row.get("paper_text", {}).get(col["key"])
    if text is not None:
        return text
    value = row.get("paper", {}).get(col["key"])
    if value is None:
        return None
    if col.get("kind", "metric") == "paper_only":
        return f"{value}{col.get('suffix', '')}"
    return f"{value:.{decimals}f}"


def format_delta(value: float, decimals: int = 1) -> str:
    """The paper's style: '± 0.0', '+0.2', '-2.1'."""
    if abs(value) < 0.5 * 10 ** -decimals:
        return f"± {0:.{decimals}f}"
    return f"{value:+.{decimals}f}"


def our_value(results: Mapping[str, Any], name: str, metric: str) -> float | None:
    value = results.get(name)
    if isinstance(value, Mapping):
        value = value.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def row_values(spec, row, results) -> dict[str, float | None]:
    return {c["key"]: our_value(results, f"{row['key']}.{c['key']}", c["metric"])
            for c in metric_columns(spec)}


def row_delta(spec, row, results) -> float | None:
    base = {r["key"]: r for r in spec["rows"]}.get(row.get("delta_baseline"))
    if base is None:
        return None
    a, b = row_values(spec, row, results), row_values(spec, base, results)
    if not a or any(v is None for v in (*a.values(), *b.values())):
        return None
    return sum(a.values()) / len(a) - sum(b.values()) / len(b)


def write_table(table_spec: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """The table in the paper's layout as markdown: label columns, then one column per paper
    column (group + label, e.g. "Base MNLI"), then Δ Avg; each cell "ours (paper X)", "-" for
    ours where there is no result yet. results: {"<row>.<column>": eval_results dict (the
    column's metric is read from it) or a number}. Pure: no file or environment access."""
    spec = table_spec
    dec = spec.get("decimals", 1)
    delta = spec.get("delta_avg")
    cols = spec["columns"]
    labels = list(spec["label_columns"])
    header = labels + [column_header(c) for c in cols] + ([delta["label"]] if delta else [])
    caption = spec["caption"]
    prefix = f"Table {spec.get('number')}."
    if caption.startswith(prefix):
        caption = caption[len(prefix):].strip()
    lines = [f"**{prefix}** {caption}", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(labels) + ["---:"] * (len(header) - len(labels)))
             + "|"]
    section = None
    for row in spec["rows"]:
        if row.get("section") and row["section"] != section:
            section = row["section"]
            lines.append("| " + " | ".join([f"**{section}**"] + [""] * (len(header) - 1)) + " |")
        cells = [str(x) for x in row.get("labels", [])]
        cells += [""] * (len(labels) - len(cells))
        for c in cols:
            paper = _fmt_paper(row, c, dec)
            if row.get("reference"):
                cells.append(paper if paper is not None else "-")
                continue
            ours = None
            if c.get("kind", "metric") == "metric":
                ours = our_value(results, f"{row['key']}.{c['key']}", c["metric"])
            elif isinstance(results.get(f"{row['key']}.{c['key']}"), (int, float)):
                ours = float(results[f"{row['key']}.{c['key']}"])
            cells.append(_cell(ours, paper, dec, c.get("suffix", "")
                               if c.get("kind") == "paper_only" else ""))
        if delta:
            d = delta.get("decimals", dec)
            paper_delta = row.get("paper_delta_avg")
            paper = None if paper_delta is None else format_delta(paper_delta, d)
            if row.get("reference"):
                cells.append(paper or "-")
            else:
                ours = row_delta(spec, row, results)
                cells.append(_cell(ours, paper, d, delta=True))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: ours (paper X); \"-\": not run yet. Ours: the final checkpoint evaluated "
                 "on the column's split (`coda eval`).")
    if delta:
        lines.append(f"{delta['label']}: mean of a row's cells minus the mean of its baseline "
                     "row's, once both rows are complete.")
    if any(r.get("reference") for r in spec["rows"]):
        lines.append("Rows without ours are quoted from the paper (results of other work).")
    for note in spec.get("notes", ()):
        lines.append(f"Note: {note}")
    if spec.get("status") != "ready":
        lines.append(f"Not runnable yet: {spec.get('status_note', '')}.")
    return "\n".join(lines) + "\n"


def _cell(ours, paper, decimals, suffix="", delta=False) -> str:
    if ours is None:
        text = "-"
    elif delta:
        text = format_delta(ours, decimals)
    else:
        text = f"{ours:.{decimals}f}{suffix}"
    return text if paper is None else f"{text} (paper {paper})"
