"""`coda summary`: parameter counts and analytic encoder FLOPs, checked against hand arithmetic."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import pytest

from coda_flax import CodaConfig, EncoderDecoder, ModelConfig, tiny_config
from coda_flax.cli import main
from coda_flax.analysis.summary import encoder_flops, flop_speedup, flop_table, parameter_table
from coda_flax.checkpoints.peft import GROUPS, param_group

# tiny_config: V=64, d=16, h=4 query heads, g=2 kv heads, dh=8, f=32, gated MLP (wi_0, wi_1, wo),
# 2 encoder + 2 decoder layers, 8 relative-position buckets. Adapter width a=4.
V, D, H, G, DH, F, LE, LD, B, A = 64, 16, 4, 2, 8, 32, 2, 2, 8, 4


def tiny(reduction=3, **coda):
    return tiny_config(CodaConfig(reduction=reduction, adapter_dim=A, **coda))


# --------------------------------------------------------------------------------- parameters


def test_tiny_parameter_counts_by_hand():
    embedding = V * D                                   # 64 * 16            = 1024 (shared)
    attention = D * H * DH + 2 * D * G * DH + H * DH * D  # q 512 + k,v 2*256 + out 512 = 1536
    mlp = 2 * D * F + F * D                             # wi_0, wi_1 2*512 + wo 512 = 1536
    adapter = D * A + A * D                             # down 64 + up 64  = 128
    router = D                                          # w in R^d         = 16
    enc_layer_norms, dec_layer_norms = 2 * D, 3 * D     # 32, 48
    enc_layer = enc_layer_norms + attention + mlp + adapter + router     # 3248
    dec_layer = dec_layer_norms + 2 * attention + mlp + adapter          # 4784
    relpos = H * B                                      # 32, encoder and decoder each
    final_norm = D                                      # encoder_norm, decoder_norm
    logits = D * V                                      # 1024 (untied head)
    total = (embedding + LE * enc_layer + relpos + final_norm
             + LD * dec_layer + relpos + final_norm + logits)
    assert (enc_layer, dec_layer, total) == (3248, 4784, 18208)

    adapters = (LE + LD) * adapter                      # 512
    routers = LE * router                               # 32
    norms = LE * enc_layer_norms + LD * dec_layer_norms + 2 * final_norm   # 64 + 96 + 32 = 192
    backbone = total - adapters - routers - norms       # 17472

    table = parameter_table(tiny())
    assert table["groups"] == {"backbone": 17472, "adapters": 512, "routers": 32,
                               "layer_norms": 192, "lora": 0}
    assert table["groups"] == {"backbone": backbone, "adapters": adapters, "routers": routers,
                               "layer_norms": norms, "lora": 0}
    assert table["total"] == total == 18208
    assert table["trainable"] == adapters + routers + norms == 736
    assert table["trainable_fraction"] == pytest.approx(736 / 18208)


def test_parameter_table_matches_a_real_init():
    config = tiny(reduction=2)
    init = jax.jit(EncoderDecoder(config).init)      # jit: op-by-op init is slower
    params = init(jax.random.key(0), jnp.ones((1, 8), jnp.int32), jnp.ones((1, 3), jnp.int32))
    leaves = jax.tree_util.tree_leaves(params["params"])
    assert parameter_table(config)["total"] == sum(x.size for x in leaves)


def test_lora_parameters_are_their_own_group():
    rank = 2   # LoRA on query (a: d x r, b: r x h*dh) and value (a: d x r, b: r x g*dh)
    per_attention = (D * rank + rank * H * DH) + (D * rank + rank * G * DH)   # 96 + 64 = 160
    num_attentions = LE + 2 * LD        # encoder self; decoder self + cross
    table = parameter_table(tiny(lora_rank=rank, lora_targets=("query", "value")))
    assert table["groups"]["lora"] == num_attentions * per_attention == 960
    assert table["groups"]["backbone"] == 17472          # LoRA leaves the backbone unchanged
    assert table["trainable"] == 736 + 960


def test_parallel_adapter_and_first_k_have_no_router_parameters():
    assert parameter_table(tiny(reduction=1))["groups"]["routers"] == 0
    assert parameter_table(tiny(router="first_k"))["groups"]["routers"] == 0
    # The router exists whenever r > 1, even when r is barely above 1.
    assert parameter_table(tiny(reduction=1.01))["groups"]["routers"] == LE * D


def test_dense_t5_1_1_small_matches_the_public_checkpoint_size():
    # google/t5-v1_1-small has 76,961,152 parameters (untied head, 8 + 8 layers, MHA).
    table = parameter_table(ModelConfig.from_preset("t5_1_1_small"))
    assert table["total"] == 76_961_152
    assert table["groups"]["adapters"] == table["groups"]["routers"] == 0


@pytest.mark.parametrize("path, group", [
    ("encoder/layers_0/adapter/down/kernel", "adapters"),
    ("params/decoder/layers_1/adapter/up/kernel", "adapters"),
    ("encoder/layers_3/router/kernel", "routers"),
    ("encoder/layers_0/attention/query/lora_a", "lora"),
    ("decoder/layers_0/mlp/wo/lora_b", "lora"),
    ("encoder/layers_0/pre_attention_layer_norm/scale", "layer_norms"),
    ("decoder/decoder_norm/scale", "layer_norms"),
    ("encoder/encoder_norm/scale", "layer_norms"),
    ("encoder/layers_0/attention/query/kernel", "backbone"),
    ("decoder/layers_0/encoder_decoder_attention/key/kernel", "backbone"),
    ("encoder/relpos_bias/rel_embedding", "backbone"),
    ("token_embedder/embedding", "backbone"),
    ("decoder/logits_dense/kernel", "backbone"),
])
def test_param_group(path, group):
    assert group in GROUPS
    assert param_group(path) == group
    assert param_group(path.split("/")) == group


# --------------------------------------------------------------------------------------- FLOPs

# n = 8 tokens, r = 3 -> k = ceil(8 / 3) = 3; T = 20 soft top-k iterations at ~10 FLOPs/token.
N, K = 8, 3
DENSE = {"q_projection": 2 * N * D * H * DH,              # 2*8*16*4*8      = 8192
         "kv_projection": 2 * 2 * N * D * G * DH,         # 2*2*8*16*2*8    = 8192
         "attention_scores": 2 * N * N * H * DH,          # 2*8*8*4*8       = 4096
         "attention_values": 2 * N * N * H * DH,          #                 = 4096
         "out_projection": 2 * N * H * DH * D,            #                 = 8192
         "mlp": 2 * N * D * F * 2 + 2 * N * F * D,        # 16384 + 8192    = 24576
         "adapter": 0, "router_score": 0, "soft_topk": 0}
PA = dict(DENSE, adapter=2 * N * D * A + 2 * N * A * D)  # 1024 + 1024     = 2048
ROUTER = {"router_score": 2 * N * D, "soft_topk": 20 * 10 * N}   # 256, 1600
K_TO_ALL = dict(PA, **ROUTER,
                q_projection=2 * K * D * H * DH,          # 3072
                attention_scores=2 * K * N * H * DH,      # 1536
                attention_values=2 * K * N * H * DH,      # 1536
                out_projection=2 * K * H * DH * D,        # 3072
                mlp=2 * K * D * F * 2 + 2 * K * F * D)    # 6144 + 3072 = 9216
K_TO_K = dict(K_TO_ALL,
              kv_projection=2 * 2 * K * D * G * DH,       # 3072
              attention_scores=2 * K * K * H * DH,        # 576
              attention_values=2 * K * K * H * DH)        # 576
LAYER = {"dense": 57344, "parallel_adapter": 59392, "k_to_all": 30528, "k_to_k": 23488}


@pytest.mark.parametrize("variant, terms", [("dense", DENSE), ("parallel_adapter", PA),
                                            ("k_to_all", K_TO_ALL), ("k_to_k", K_TO_K)])
def test_tiny_flops_by_hand(variant, terms):
    out = encoder_flops(tiny(reduction=3), N, variant)
    assert out["terms"] == terms
    assert out["layer"] == sum(terms.values()) == LAYER[variant]
    assert out["encoder"] == LE * LAYER[variant]
    k = K if variant in ("k_to_all", "k_to_k") else N
    assert (out["n"], out["k"], out["num_layers"]) == (N, k, LE)


def test_tiny_speedups_by_hand():
    config = tiny(reduction=3)
    assert flop_speedup(config, N, 3, "k_to_all") == pytest.approx(59392 / 30528)
    assert flop_speedup(config, N, 3, "k_to_k") == pytest.approx(59392 / 23488)
    table = flop_table(config, N)
    assert table["k"] == K
    assert table["speedup_vs_parallel_adapter"] == pytest.approx(
        {v: LAYER["parallel_adapter"] / LAYER[v] for v in LAYER})


@pytest.mark.parametrize("preset", ["paper_text_base", "t5_1_1_small", "paper_text_xl"])
@pytest.mark.parametrize("n", [1, 7, 512, 4096])
def test_speedup_is_one_at_r1_and_k_to_k_is_faster(preset, n):
    config = ModelConfig.from_preset(preset, coda=CodaConfig(reduction=3))
    for attention in ("k_to_all", "k_to_k"):
        assert flop_speedup(config, n, 1, attention) == 1.0
        # r = 1: CoDA is the Parallel Adapter, term for term (no router).
        assert (encoder_flops(config, n, attention, reduction=1)
                == dict(encoder_flops(config, n, "parallel_adapter"), variant=attention))
    if n > 1:
        for r in (2, 3, 5, 8):
            k_to_all, k_to_k = flop_speedup(config, n, r), flop_speedup(config, n, r, "k_to_k")
            assert 1.0 < k_to_all < k_to_k
        assert flop_speedup(config, n, 3) < flop_speedup(config, n, 5)    # fewer routed tokens


def test_num_routed_override_and_first_k_router():
    config = tiny(reduction=3, num_routed=5)
    assert encoder_flops(config, N, "k_to_all")["k"] == 5
    assert encoder_flops(config, N, "k_to_all", reduction=2)["k"] == 4     # explicit r wins
    first_k = encoder_flops(tiny(router="first_k"), N, "k_to_all")["terms"]
    assert first_k["router_score"] == first_k["soft_topk"] == 0


def test_flop_errors():
    config = tiny()
    with pytest.raises(ValueError, match="length"):
        encoder_flops(config, 0, "dense")
    with pytest.raises(ValueError, match="variant"):
        encoder_flops(config, 8, "k_to_some")
    with pytest.raises(ValueError, match="reduction"):
        flop_speedup(config, 8, 0.5)


# ----------------------------------------------------------------------------------------- CLI


def hand_count(V, d, h, g, dh, f, num_wi, le, ld, buckets, a):
    """Parameter groups of a T5 v1.1-style CoDA model with r > 1, written out independently."""
    attention = d * h * dh + 2 * d * g * dh + h * dh * d
    mlp = num_wi * d * f + f * d
    adapters = (le + ld) * 2 * d * a
    routers = le * d
    norms = le * 2 * d + ld * 3 * d + 2 * d
    backbone = (V * d + le * (attention + mlp) + ld * (2 * attention + mlp)
                + 2 * h * buckets + d * V)
    return backbone, adapters, routers, norms


def test_cli_summary_text(capsys):
    assert main(["summary", "--preset", "paper_text_base", "--reduction", "3"]) == 0
    out = capsys.readouterr().out
    # paper_text_base (Table 7): V=32128, d=768, 12 heads, MQA, dh=128, f=3072 gated,
    # 12 + 6 layers, 32 buckets, adapter 64.
    backbone, adapters, routers, norms = hand_count(32128, 768, 12, 1, 128, 3072, 2, 12, 6, 32, 64)
    total = backbone + adapters + routers + norms
    assert total == 239_905_536
    for value in (backbone, adapters, routers, norms, total, adapters + routers + norms):
        assert f"{value:,}" in out
    assert f"{100 * (adapters + routers + norms) / total:.3f}%" in out
    # Per-layer dense MLP at n = 512: 2*512*768*3072*2 + 2*512*3072*768; k = 171 for CoDA.
    n, k = 512, 171
    assert f"{2 * n * 768 * 3072 * 2 + 2 * n * 3072 * 768:,}" in out
    assert f"{2 * k * 768 * 3072 * 2 + 2 * k * 3072 * 768:,}" in out
    assert "k = ceil(n / r) = 171" in out
    dense_q_kv_o_mlp = (2 * n * 768 * 1536 + 4 * n * 768 * 128 + 2 * n * 1536 * 768
                        + 2 * n * 768 * 3072 * 3)
    attn = 4 * n * n * 1536
    pa_layer = dense_q_kv_o_mlp + attn + 4 * n * 768 * 64
    assert f"{12 * pa_layer:,}" in out
    k_to_all_layer = (2 * k * 768 * 1536 + 4 * n * 768 * 128 + 2 * k * 1536 * 768
                      + 2 * k * 768 * 3072 * 3 + 4 * k * n * 1536 + 4 * n * 768 * 64
                      + 2 * n * 768 + 10 * 20 * n)
    assert f"{k_to_all_layer:,}" in out
    assert f"{pa_layer / k_to_all_layer:.3f}x" in out
    assert "over the Parallel Adapter" in out


def test_cli_summary_json(capsys):
    argv = ["summary", "--preset", "t5_1_1_small", "--reduction", "4", "--attention", "k_to_k",
            "--length", "100", "--adapter-dim", "32", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    backbone, adapters, routers, norms = hand_count(32128, 512, 6, 6, 64, 1024, 2, 8, 8, 32, 32)
    p = result["parameters"]
    assert p["groups"] == {"backbone": backbone, "adapters": adapters, "routers": routers,
                           "layer_norms": norms, "lora": 0}
    assert p["total"] == backbone + adapters + routers + norms
    assert p["trainable"] == adapters + routers + norms
    assert backbone + norms == 76_961_152          # the dense public checkpoint
    fl = result["flops"]
    assert (fl["n"], fl["k"], fl["reduction"]) == (100, 25, 4)
    config = ModelConfig.from_preset("t5_1_1_small",
                                     coda=CodaConfig(reduction=4, attention="k_to_k",
                                                     adapter_dim=32))
    for v in ("dense", "parallel_adapter", "k_to_all", "k_to_k"):
        assert fl["variants"][v] == encoder_flops(config, 100, v)
    assert result["speedup"] == fl["speedup_vs_parallel_adapter"]["k_to_k"] == pytest.approx(
        flop_speedup(config, 100, 4, "k_to_k"))
    assert fl["variants"]["k_to_k"]["terms"]["adapter"] == 4 * 100 * 512 * 32


@pytest.mark.parametrize("argv, message", [
    (["--preset", "paper_text_base", "--reduction", "3", "--length", "0"], "length must be"),
    (["--preset", "paper_text_base", "--reduction", "0.5"], "reduction must be >= 1"),
    (["--preset", "paper_text_base", "--reduction", "x"], "reduction must be a number"),
    (["--preset", "paper_text_base", "--reduction", "2", "--adapter-dim", "0"], "adapter-dim"),
    (["--preset", "t5_base", "--reduction", "3"], "paper_text_base"),   # lists the presets
])
def test_cli_summary_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["summary", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_summary_fractional_reduction(capsys):
    assert main(["summary", "--preset", "paper_text_base", "--reduction", "2.5",
                 "--length", "10", "--json"]) == 0
    fl = json.loads(capsys.readouterr().out)["flops"]
    assert (fl["k"], fl["reduction"]) == (math.ceil(10 / 2.5), 2.5)
