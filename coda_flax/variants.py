"""The model variants by name, declared once: the gin variant files (gin/variants/<name>.gin
bind exactly these settings; tests/test_variants.py parses each), the paper tables' rows
(configs/tableN.py name a variant's gin file; experiments/paper_tables.validate_table refuses any
other) and `coda bench`'s rows (each names its attention and router's variant, name_of; one outside
the list by a derived name) are these; the demo's variants are these at its r
(experiments/demo_runs.demo_variant).

    VARIANTS                      name -> Variant, in the papers' order
    Variant.coda(reduction)       its CodaConfig at r = reduction (None: dense); a variant with
                                  a fixed r (the Parallel Adapter, r = 1) ignores the argument
    Variant.gin_file              "variants/<name>.gin" (a file of the packaged gin folder)
    by_gin_file(path)             the Variant a table's variant_gin names
    routed(attention, router)     the routed variant with this attention and router, if listed
    coda_at(r, attention, router, **fields)   its CodaConfig at r (r = 1: the Parallel
                                  Adapter) with other fields set (the claims' runs)
    name_of(attention, router)    that variant's name, else "<router>_<attention>" (`coda bench`'s
                                  grid rows: every row names what ran)

A variant that takes r reads it from the gin macro REDUCTION (DEFAULT_REDUCTION when unset).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from coda_flax.config import CodaConfig

DEFAULT_REDUCTION = 3            # REDUCTION in the gin variant files


@dataclasses.dataclass(frozen=True)
class Variant:
    """One named model variant: CodaConfig fields (None: dense, no adapters), and r when the
    variant fixes it (None: set per run, gin's REDUCTION)."""

    name: str
    fields: Mapping[str, Any] | None
    reduction: float | None = None
    summary: str = ""

    @property
    def gin_file(self) -> str:
        return f"variants/{self.name}.gin"

    def coda(self, reduction: float | None = None) -> CodaConfig | None:
        if self.fields is None:
            return None
        r = self.reduction if self.reduction is not None else (
            DEFAULT_REDUCTION if reduction is None else reduction)
        return CodaConfig(reduction=r, **self.fields)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("dense", None, summary="the backbone alone (no adapters)"),
    Variant("parallel_adapter", {}, reduction=1,
            summary="Parallel Adapter: an adapter on every token (r = 1)"),
    Variant("coda_k_to_all", dict(attention="k_to_all", router="soft_topk"),
            summary="CoDA, k-to-all attention, soft top-k router (the default)"),
    Variant("coda_k_to_k", dict(attention="k_to_k", router="soft_topk"),
            summary="CoDA, k-to-k attention, soft top-k router"),
    Variant("coda_sigmoid", dict(attention="k_to_k", router="sigmoid"),
            summary="router ablation: a sigmoid gate as f(s), k-to-k"),
    Variant("coda_first_k", dict(attention="k_to_k", router="first_k"),
            summary="router ablation: truncation to the first k tokens, k-to-k"),
    Variant("coda_k_to_k_exact", dict(attention="k_to_k", router="soft_topk", solver="exact"),
            summary="CoDA, k-to-k, soft top-k solved exactly instead of by coordinate descent"),
)}


def by_gin_file(path: str) -> Variant:
    """The Variant whose gin file `path` is ("variants/coda_k_to_k.gin"; the older
    "gin/variants/..." spelling too); ValueError naming the listed ones otherwise."""
    parts = os.path.normpath(path).split(os.sep)
    name = os.path.splitext(parts[-1])[0]
    if len(parts) < 2 or parts[-2] != "variants" or name not in VARIANTS:
        raise ValueError(f"{path!r} is not a listed variant's gin file; use one of "
                         f"{', '.join(v.gin_file for v in VARIANTS.values())} "
                         f"(coda_flax/variants.py).")
    return VARIANTS[name]


def routed(attention: str, router: str) -> Variant | None:
    """The listed routed variant (r set per run) with this attention and router and no other
    setting (the exact solver's variant is not one); None when the combination is not one of
    the list (e.g. a sigmoid gate with k-to-all attention)."""
    for v in VARIANTS.values():
        if v.reduction is None and v.fields == dict(attention=attention, router=router):
            return v
    return None


def coda_at(r: float, attention: str = "k_to_all", router: str = "soft_topk", **fields
            ) -> CodaConfig:
    """The CodaConfig of the listed variant with this attention and router at r (r = 1: the
    Parallel Adapter), other CodaConfig fields (adapter_dim, ...) replaced by `fields`;
    ValueError for a combination outside the list."""
    listed = VARIANTS["parallel_adapter"] if r == 1 else routed(attention, router)
    if listed is None:
        raise ValueError(f"router {router!r} with {attention!r} attention is not a listed "
                         f"variant; use one of {sorted(VARIANTS)} (coda_flax/variants.py).")
    return dataclasses.replace(listed.coda(r), **fields)


def name_of(attention: str, router: str) -> str:
    """The name of the routed variant with this attention and router: the listed one's
    (routed), else "<router>_<attention>" ("sigmoid_k_to_all")."""
    listed = routed(attention, router)
    return listed.name if listed else f"{router}_{attention}"


__all__ = ["Variant", "VARIANTS", "DEFAULT_REDUCTION", "by_gin_file", "routed", "coda_at",
           "name_of"]
