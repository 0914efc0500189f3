"""The one variant list (coda_flax/variants.py) against what uses it: each gin variant file
binds exactly its variant's settings, every paper-table row names a listed variant (a table
naming another is refused), and `coda bench`'s rows name theirs."""

import copy
import os

import gin
import pytest

from coda_flax.config import ATTENTION_VARIANTS, CodaConfig
from coda_flax.experiments import paper_tables as pt
from coda_flax.resources import GIN_DIR
from coda_flax.routing import ROUTERS
from coda_flax.variants import VARIANTS, by_gin_file, coda_at, name_of, routed

# what each gin file should bind, written out by hand (the variant files' own comments)
EXPECTED = {
    "dense": None,
    "parallel_adapter": dict(reduction=1),
    "coda_k_to_all": dict(attention="k_to_all", router="soft_topk"),
    "coda_k_to_k": dict(attention="k_to_k", router="soft_topk"),
    "coda_sigmoid": dict(attention="k_to_k", router="sigmoid"),
    "coda_first_k": dict(attention="k_to_k", router="first_k"),
    "coda_k_to_k_exact": dict(attention="k_to_k", router="soft_topk", solver="exact"),
}


def _coda_of(gin_file, bindings=()):
    from coda_flax.train.gin_config import parse_gin
    try:
        parse_gin(["models/tiny.gin", gin_file], list(bindings))
        return gin.get_configurable("model_config")().coda
    finally:
        gin.clear_config()


def test_the_gin_variant_files_are_the_listed_variants():
    files = sorted(f[:-4] for f in os.listdir(os.path.join(GIN_DIR, "variants"))
                   if f.endswith(".gin"))
    assert files == sorted(VARIANTS) == sorted(EXPECTED)
    for name, v in VARIANTS.items():
        fields = EXPECTED[name]
        expected = None if fields is None else CodaConfig(**{"reduction": 3, **fields})
        assert _coda_of(v.gin_file) == v.coda() == expected, name
        if v.reduction is None and fields is not None:           # r from REDUCTION
            assert _coda_of(v.gin_file, ["REDUCTION = 5"]) == v.coda(5) == CodaConfig(
                reduction=5, **fields), name


def test_table_rows_name_listed_variants_and_others_are_refused():
    named = set()
    for number in pt.TABLE_NUMBERS:
        for row in pt.load_table(number)["rows"]:       # load_table validates
            if not row.get("reference"):
                named.add(by_gin_file(row["variant_gin"]).name)
    assert named == {"parallel_adapter", "coda_k_to_all", "coda_k_to_k", "coda_sigmoid",
                     "coda_first_k"}
    assert by_gin_file("gin/variants/coda_k_to_k.gin") is VARIANTS["coda_k_to_k"]
    spec = copy.deepcopy(pt.load_table(3))
    spec["rows"][1]["variant_gin"] = "variants/coda_gate.gin"
    with pytest.raises(pt.ReproduceError, match="sigmoid_r3.*coda_gate.gin.*variants/dense.gin"):
        pt.validate_table(spec)


def test_bench_models_and_rows_are_the_listed_variants():
    from coda_flax import bench
    for attention, router, name in (("k_to_all", "soft_topk", "coda_k_to_all"),
                                    ("k_to_k", "sigmoid", "coda_sigmoid")):
        config = bench.bench_config("t5_1_1_base", 5, attention, router=router)
        assert routed(attention, router).name == name
        assert config.coda == CodaConfig(reduction=5, attention=attention, router=router,
                                         adapter_dim=config.coda.adapter_dim)
        assert name_of(attention, router) == name
    assert routed("k_to_all", "sigmoid") is None              # not a listed variant
    # the exact solver's variant sets a third field: not the plain k-to-k soft top-k one
    assert routed("k_to_k", "soft_topk").name == "coda_k_to_k"


def test_every_bench_grid_combination_has_a_name_listed_or_derived():
    # by hand: the listed routed variants by their names, the rest <router>_<attention>
    want = {("k_to_all", "soft_topk"): "coda_k_to_all", ("k_to_k", "soft_topk"): "coda_k_to_k",
            ("k_to_k", "sigmoid"): "coda_sigmoid", ("k_to_k", "first_k"): "coda_first_k",
            ("k_to_all", "sigmoid"): "sigmoid_k_to_all",
            ("k_to_all", "first_k"): "first_k_k_to_all"}
    assert {(a, r) for a in ATTENTION_VARIANTS for r in ROUTERS} == set(want)
    for (attention, router), name in want.items():
        assert name_of(attention, router) == name


def test_coda_at_builds_the_listed_variant_at_r_with_other_fields_set():
    # by hand: the CodaConfig each claims run wrote out field by field before coda_at
    assert coda_at(1, adapter_dim=16) == CodaConfig(reduction=1, adapter_dim=16)
    assert coda_at(5, "k_to_k", "sigmoid", adapter_dim=8) == CodaConfig(
        reduction=5, attention="k_to_k", router="sigmoid", adapter_dim=8)
    assert coda_at(3) == CodaConfig(reduction=3, attention="k_to_all", router="soft_topk")
    with pytest.raises(ValueError, match="'sigmoid' with 'k_to_all'.*not a listed variant"):
        coda_at(3, "k_to_all", "sigmoid")
