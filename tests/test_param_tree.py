"""The parameter tree (names, shapes, dtypes, logical axes) of every preset x variant against
the checked-in golden files in tests/golden/, plus checks written from public facts rather than
from the code: the T5 v1.1 checkpoints' layout and sizes, and what CoDA adds to a dense model.

A rename or reshape breaks saved checkpoints and adapter-only files, and a changed axis name
changes sharding: all of them fail here. If the change is deliberate, regenerate with
`python scripts/update_golden.py [PRESET ...]` and review `git diff tests/golden/`.
"""

import re

import pytest

import golden_tree
from coda_flax.config import PRESETS

VARIANTS = list(golden_tree.VARIANTS)
# One preset per module shape (T5 MHA, paper MQA text, Pix2Struct patches, speech CTC) runs in
# the default suite (~0.5 s each to trace); the larger sizes of the same shapes are slow tests.
FAST_PRESETS = ("t5_1_1_small", "paper_text_base", "pix2struct", "speech_base")


def _cases():
    for preset in PRESETS:
        marks = () if preset in FAST_PRESETS else (pytest.mark.slow,)
        for variant in VARIANTS:
            yield pytest.param(preset, variant, id=f"{preset}-{variant}", marks=marks)


def test_every_preset_and_variant_has_a_golden_file():
    expected = {golden_tree.golden_path(p, v).name for p in PRESETS for v in VARIANTS}
    present = {p.name for p in golden_tree.GOLDEN_DIR.glob("param_tree_*.json")}
    assert not expected - present, (
        f"missing golden files {sorted(expected - present)}: a new preset? run "
        f"`python scripts/update_golden.py` and review the new files.")
    assert not present - expected, (
        f"golden files of no preset {sorted(present - expected)}: remove them "
        f"(`python scripts/update_golden.py` does).")


@pytest.mark.parametrize("preset,variant", list(_cases()))
def test_param_tree_matches_golden(preset, variant):
    golden = golden_tree.load(preset, variant)
    assert (golden["preset"], golden["variant"]) == (preset, variant)
    live = golden_tree.live_tree(preset, variant)
    problems = golden_tree.diff(golden["params"], live)
    if problems:
        where = golden_tree.golden_path(preset, variant).relative_to(
            golden_tree.GOLDEN_DIR.parent.parent)
        pytest.fail(f"the parameter tree of {preset} / {variant} differs from {where} (this "
                    f"breaks saved checkpoints and adapter files):\n" + "\n".join(problems) +
                    f"\nIf deliberate: python scripts/update_golden.py {preset}  (then review "
                    f"git diff tests/golden/).", pytrace=False)


def test_diff_names_renames_reshapes_and_axis_changes():
    golden = {"params/a/kernel": {"shape": [4, 8], "dtype": "float32", "axes": ["embed", "mlp"]},
              "params/b/scale": {"shape": [4], "dtype": "float32", "axes": ["embed"]},
              "params/c/kernel": {"shape": [8, 4], "dtype": "float32", "axes": ["mlp", "embed"]}}
    assert golden_tree.diff(golden, dict(golden)) == []
    live = dict(golden)
    live["params/a2/kernel"] = live.pop("params/a/kernel")                      # rename
    live["params/b/scale"] = {**golden["params/b/scale"], "shape": [5]}         # reshape
    live["params/c/kernel"] = {**golden["params/c/kernel"], "axes": ["mlp", None]}  # axes
    text = "\n".join(golden_tree.diff(golden, live))
    assert "- params/a/kernel" in text and "+ params/a2/kernel" in text
    assert "~ params/b/scale: shape [4] -> [5]" in text
    assert "~ params/c/kernel: axes ['mlp', 'embed'] -> ['mlp', None]" in text
    many = {f"params/x{i}": golden["params/b/scale"] for i in range(30)}
    lines = golden_tree.diff(many, {}, limit=3)
    assert lines[0].startswith("30 removed") and lines[-1] == "  ... and 27 more"


def test_golden_file_text_is_what_the_update_script_writes():
    """A hand edit of a golden file that the script would not reproduce (reordering, a stale
    num_params) is caught without tracing anything."""
    for preset in PRESETS:
        for variant in VARIANTS:
            golden = golden_tree.load(preset, variant)
            text = golden_tree.golden_path(preset, variant).read_text()
            assert text == golden_tree.render(preset, variant, golden["params"]), (
                f"{preset}/{variant}: golden file not in the update script's form; regenerate "
                f"with python scripts/update_golden.py {preset}")


# --- Independent facts (not derived from coda_flax) -------------------------------------------

# google/t5-v1_1-{small,base,large,xl} config.json: d_model, num_heads, d_kv, d_ff, num_layers
# (= num_decoder_layers), vocab 32128, 32 relative-attention buckets, gated-gelu, untied head.
# The counts are T5ForConditionalGeneration.num_parameters() of the public checkpoints.
T5_1_1 = {
    "t5_1_1_small": dict(d=512, heads=6, kv=64, ff=1024, layers=8, count=76_961_152),
    "t5_1_1_base": dict(d=768, heads=12, kv=64, ff=2048, layers=12, count=247_577_856),
    "t5_1_1_large": dict(d=1024, heads=16, kv=64, ff=2816, layers=24, count=783_150_080),
    "t5_1_1_xl": dict(d=2048, heads=32, kv=64, ff=5120, layers=24, count=2_849_757_184),
}


def _t5x_v1_1_tree(d, heads, kv, ff, layers, vocab=32128, buckets=32, **_):
    """The T5X minimal-T5 parameter tree of a T5 v1.1 checkpoint, written out by hand:
    path -> (shape, logical axes). Attention kernels keep heads and head_dim as separate axes
    (T5X's ('embed', 'heads', 'kv')); a checkpoint's joined [d, heads * kv] reshapes to them."""
    heads_axis = ("heads", "kv_heads")   # key/value kernels: either name partitions heads
    tree = {"token_embedder/embedding": ((vocab, d), ("vocab", "embed"))}

    def attention(prefix):
        for proj in ("query", "key", "value"):
            tree[f"{prefix}/{proj}/kernel"] = ((d, heads, kv),
                                               ("embed", "heads" if proj == "query" else
                                                heads_axis, "kv"))
        tree[f"{prefix}/out/kernel"] = ((heads, kv, d), ("heads", "kv", "embed"))

    def mlp(prefix):
        tree[f"{prefix}/wi_0/kernel"] = ((d, ff), ("embed", "mlp"))
        tree[f"{prefix}/wi_1/kernel"] = ((d, ff), ("embed", "mlp"))
        tree[f"{prefix}/wo/kernel"] = ((ff, d), ("mlp", "embed"))

    norm = ((d,), ("embed",))
    for stack in ("encoder", "decoder"):
        tree[f"{stack}/relpos_bias/rel_embedding"] = ((heads, buckets), ("heads", "relpos_buckets"))
        tree[f"{stack}/{stack}_norm/scale"] = norm
    for i in range(layers):
        e, dd = f"encoder/layers_{i}", f"decoder/layers_{i}"
        tree[f"{e}/pre_attention_layer_norm/scale"] = norm
        attention(f"{e}/attention")
        tree[f"{e}/pre_mlp_layer_norm/scale"] = norm
        mlp(f"{e}/mlp")
        tree[f"{dd}/pre_self_attention_layer_norm/scale"] = norm
        attention(f"{dd}/self_attention")
        tree[f"{dd}/pre_cross_attention_layer_norm/scale"] = norm
        attention(f"{dd}/encoder_decoder_attention")
        tree[f"{dd}/pre_mlp_layer_norm/scale"] = norm
        mlp(f"{dd}/mlp")
    tree["decoder/logits_dense/kernel"] = ((d, vocab), ("embed", "vocab"))
    return {f"params/{k}": v for k, v in tree.items()}


def _check_public_layout(tree, expected):
    assert sorted(tree) == sorted(expected), (
        f"paths differ from the public T5 v1.1 layout: missing "
        f"{sorted(set(expected) - set(tree))[:5]}, extra {sorted(set(tree) - set(expected))[:5]}")
    for name, (shape, axes) in expected.items():
        got = tree[name]
        assert tuple(got["shape"]) == shape, (name, got["shape"], shape)
        assert got["dtype"] == "float32", (name, got["dtype"])
        for have, want in zip(got["axes"], axes, strict=True):
            assert have in (want if isinstance(want, tuple) else (want,)), (name, got["axes"])


def test_t5_1_1_small_is_the_public_checkpoint_layout():
    """The live dense tree, path for path, against the T5X layout of google/t5-v1_1-small."""
    spec = T5_1_1["t5_1_1_small"]
    tree = golden_tree.live_tree("t5_1_1_small", "dense")
    _check_public_layout(tree, _t5x_v1_1_tree(**spec))
    assert sum(_numel(v["shape"]) for v in tree.values()) == spec["count"]


@pytest.mark.parametrize("preset", [p for p in T5_1_1 if p != "t5_1_1_small"])
def test_larger_t5_1_1_golden_trees_are_the_public_layout(preset):
    """base / large / xl from their golden files (which the slow tests tie to the live tree)."""
    spec = T5_1_1[preset]
    tree = golden_tree.load(preset, "dense")["params"]
    _check_public_layout(tree, _t5x_v1_1_tree(**spec))
    assert sum(_numel(v["shape"]) for v in tree.values()) == spec["count"]


# Table 7 / appendix: adapter widths of the paper's models (text 64, vision and speech 256).
ADAPTER_DIM = {"t5_1_1": 64, "paper_text": 64, "pix2struct": 256, "speech": 256}
ADAPTER = re.compile(r"^params/(encoder|decoder)/layers_(\d+)/adapter/(down|up)/kernel$")
ROUTER = re.compile(r"^params/encoder/layers_(\d+)/router/kernel$")


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _layers(tree, stack):
    return {int(m.group(1)) for k in tree
            if (m := re.match(rf"^params/{stack}/layers_(\d+)/", k))}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_coda_adds_only_adapters_and_routers(preset):
    """Relative to dense, the Parallel Adapter adds exactly adapter/{down,up} in every encoder
    and decoder layer, and CoDA adds exactly one router/kernel [d] per encoder layer on top;
    every backbone parameter is unchanged (so dense checkpoints load into CoDA)."""
    dense, pa, coda = (golden_tree.load(preset, v)["params"]
                       for v in ("dense", "parallel_adapter", "coda"))
    d = dense["params/encoder/encoder_norm/scale"]["shape"][0]
    width = next(w for prefix, w in ADAPTER_DIM.items() if preset.startswith(prefix))
    enc, dec = _layers(dense, "encoder"), _layers(dense, "decoder")
    assert enc and enc == set(range(len(enc))) and dec == set(range(len(dec)))

    for tree in (pa, coda):
        assert {k: tree[k] for k in dense} == dense, "a backbone parameter changed"
    adapters = set(pa) - set(dense)
    assert adapters == {f"params/{stack}/layers_{i}/adapter/{p}/kernel"
                        for stack, ids in (("encoder", enc), ("decoder", dec)) for i in ids
                        for p in ("down", "up")}
    for name in adapters:
        which = ADAPTER.match(name).group(3)
        want = [d, width] if which == "down" else [width, d]
        axes = ["embed", "adapter"] if which == "down" else ["adapter", "embed"]
        assert pa[name]["shape"] == want and pa[name]["axes"] == axes, (name, pa[name])
    assert {k: coda[k] for k in pa} == pa
    routers = set(coda) - set(pa)
    assert routers == {f"params/encoder/layers_{i}/router/kernel" for i in enc}
    for name in routers:
        assert ROUTER.match(name) and coda[name]["shape"] == [d], (name, coda[name])
