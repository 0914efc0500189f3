"""`coda claims` (issue 18): the verdict logic against hand-made numbers, the run specs behind
every claim, the seeds rule, the ink share against hand-computed patch masks, the page
generator (ink inside the word's box, white everywhere else), and (--slow) the tiny stand-in
end to end: stopped by SIGTERM, resumed, run again with nothing trained."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from coda_flax.analysis import claims as verdicts
from coda_flax.analysis.estimates import (NO, NOT_SEPARATED, YES, Estimate, at_least, at_most,
                                          combine, estimate, greater)
from coda_flax.datasets import ink_pages
from coda_flax.datasets.vision import find_fonts
from coda_flax.experiments import claims, claims_seeds


def E(mean, se, seeds=1):
    return Estimate(mean, se, (mean,) * seeds, 400)


# ----------------------------------------------------------------------------- verdicts
def test_verdict_primitives_by_hand():
    assert greater(0.07, 0.02) == YES                   # 3.5 SE
    assert greater(0.05, 0.02) == NOT_SEPARATED         # 2.5 SE: within 3 SE
    assert greater(-0.07, 0.02) == NO
    assert at_least(-0.05, 0.02) == YES and at_least(-0.07, 0.02) == NO
    assert at_most(0.005, 0.02, 0.01) == YES            # within the 1-point tolerance
    assert at_most(0.05, 0.02, 0.01) == NOT_SEPARATED   # 0.05 - 0.06 < 0.01
    assert at_most(0.08, 0.02, 0.01) == NO              # 0.08 - 0.06 > 0.01
    assert combine([YES, NOT_SEPARATED]) == NOT_SEPARATED and combine([YES, NO]) == NO
    assert combine([YES, YES]) == YES
    # two seeds that disagree more than sampling explains: SE = std / sqrt(2) = 0.1
    e = estimate([0.5, 0.7], 100)
    assert e.mean == pytest.approx(0.6) and e.se == pytest.approx(0.1)
    # one seed: Agresti-Coull, q = (0.6 * 100 + 2) / 104
    q = 62 / 104
    assert estimate([0.6], 100).se == pytest.approx(math.sqrt(q * (1 - q) / 104))


def test_claim_rows_by_hand():
    b = verdicts.claim_b({3: {"soft_topk": E(0.80, 0.02), "sigmoid": E(0.70, 0.02),
                              "first_k": E(0.69, 0.02)}})
    # soft - sigmoid = 0.10 = 3.5 SE of the difference (0.02 * sqrt 2); sigmoid - first_k = 0.35
    assert b["parts"] == {"r3: soft_topk > sigmoid": YES, "r3: sigmoid > first_k": NOT_SEPARATED}
    assert b["holds"] == NOT_SEPARATED
    a = verdicts.claim_a({"n = 512": {1: E(0.90, 0.01), 3: E(0.895, 0.01), 16: E(0.60, 0.02)}})
    assert a["holds"] == YES
    rising = verdicts.claim_a({"n": {1: E(0.9, 0.01), 3: E(0.5, 0.01), 16: E(0.8, 0.01)}})
    assert rising["parts"]["n: monotone"] == NO and rising["holds"] == NO
    c = verdicts.claim_c({3: (E(0.60, 0.02), E(0.65, 0.02))})      # k-to-k ahead by 1.8 SE
    assert c["holds"] == YES
    ties = verdicts.claim_e([("small", E(0.5, 0.02), E(0.49, 0.02)),
                             ("large", E(0.6, 0.02), E(0.6, 0.02))])
    assert ties["holds"] == NOT_SEPARATED and "no gap is separated" in ties["ours"]
    shrinks = verdicts.claim_e([("small", E(0.9, 0.01), E(0.7, 0.01)),
                                ("large", E(0.9, 0.01), E(0.88, 0.01))])
    assert shrinks["holds"] == YES
    assert verdicts.claim_f({0: E(0.5, 0.02), 100: E(0.4, 0.02)})["holds"] == NO
    g = verdicts.claim_g({512: {1: 1.0, 3: 2.0, 16: 4.0}, 1024: {1: 1.0, 3: 2.5, 16: 6.0}},
                         {512: (16, E(0.9, 0.01), E(0.89, 0.01))})
    assert g["holds"] == YES and "r16 89.0" in g["ours"]
    assert "n = 512: quality at r = 16 within 1 point" in g["parts"]
    fell = verdicts.claim_g({512: {1: 1.0, 16: 4.0}}, {512: (16, E(0.9, 0.01), E(0.6, 0.02))})
    assert fell["holds"] == NO
    f = verdicts.claim_f({0: E(0.5, 0.02), 100: E(0.65, 0.02)}, where="n = 512, r = 32")
    assert f["holds"] == YES and f["ours"].startswith("n = 512, r = 32: 0 steps: 50.0")
    speeds = {256: {1: 1.0, 16: 3.0, 32: 3.5, 64: 3.4}, 512: {1: 1.0, 16: 4.0, 32: 6.0, 64: 7.0}}
    past = verdicts.claim_g(speeds, {})                # r = 64 < r = 32 at n = 256: past 16
    assert past["holds"] == YES and "r64 3.40x" in past["ours"]
    assert verdicts.claim_g(speeds, {}, max_r=64)["parts"]["n = 256: speedup rises with r to 64"] \
        == NO
    slower = verdicts.claim_g({512: {1: 1.0, 16: 4.0}, 1024: {1: 1.0, 16: 3.0}}, {})
    assert slower["parts"]["n = 1024 faster than n = 512"] == NO
    d = verdicts.claim_d({16: ([(0.05, 0.01), (0.05, 0.01), (0.20, 0.02), (0.06, 0.01)],
                               (0.05, 0.0)),
                          8: ([(0.5, 0.01), (0.0, 0.0), (0.30, 0.02), (0.20, 0.01)], (0.05, 0.0))})
    assert d["parts"] == {"r8 layer 2: above chance": YES, "r8 layer 3: above chance": YES,
                          "r16 layer 2: above chance": YES,
                          "r16 layer 3: above chance": NOT_SEPARATED}
    assert d["holds"] == NOT_SEPARATED and d["ours"].startswith("r8: layer 0 50.0 ± 1.0%")
    # the schedule probe: 3 seeds over 20% (2 stalled), 3 over 50% at PA's level
    seeds = (lambda *a: estimate(a, 400))
    pa, runs, slow = seeds(0.99, 0.985, 0.99), seeds(0.62, 0.995, 0.615), seeds(0.98, 1.0, 0.99)
    probe = verdicts.schedule_probe(pa, runs, slow, (0.2, 0.5), "n = 512, r = 32")
    # gain 0.247 with SE ~0.126 (the stalled seeds' spread): 2 SE, not separated; PA - slow =
    # -0.002 ± ~0.006: within the point
    assert probe["parts"] == {"annealed over 50% > over 20%": NOT_SEPARATED,
                              "annealed over 50%: within 1 point of PA": YES}
    assert "62.0 / 99.5 / 61.5" in probe["text"] and "is the k schedule's" in probe["text"]
    short = verdicts.schedule_probe(pa, runs, seeds(0.7, 0.72, 0.69), (0.2, 0.5), "x")
    assert short["parts"]["annealed over 50%: within 1 point of PA"] == NO
    assert "not the k schedule's alone" in short["text"]
    table = verdicts.claims_markdown([a, b, c, d, ties, g])
    assert table.startswith("| claim | paper | ours (± SE, seeds) | holds? |")
    assert table.count("\n| ") == 6 and "| b. soft top-k > sigmoid > truncation |" in table


def test_speed_rows_keep_each_rounds_ratio(monkeypatch):
    """speed_table: medians over rounds, their ratio, and the lowest / highest within-round
    ratio (the claims' run table prints it beside the speedup), from hand-made rounds."""
    from coda_flax.analysis import timing
    from coda_flax.experiments import pipeline
    rounds = {"pa": {"encoder": [4.0, 6.0, 5.0]}, "r3": {"encoder": [1.0, 2.0, 2.5]}}
    monkeypatch.setattr(timing, "measure_models", lambda *a: rounds)
    rows = pipeline.speed_table({"pa": None, "r3": None}, {}, {}, 3, baseline="pa")
    assert rows["r3"]["encoder_seconds"] == 2.0 and rows["pa"]["encoder_seconds"] == 5.0
    assert rows["r3"]["encoder_speedup"] == 2.5                 # 5.0 / 2.0, the medians
    assert rows["r3"]["encoder_speedup_range"] == (2.0, 4.0)    # rounds: 4, 3, 2
    assert rows["pa"]["encoder_speedup_range"] == (1.0, 1.0)


def test_timings_are_keyed_by_the_runs_the_rounds_and_the_machine(monkeypatch):
    """claims_speed.timings_hash: the same runs, batch, rounds and machine give the same key;
    another machine (e.g. the output folder moved to a GPU host), another run, batch or rounds
    another, so cached timings are never read for what they did not time."""
    from coda_flax.experiments import claims_speed
    s = claims.SCALES["reduced"]
    runs = claims.finetune_runs(s, DATA, None)
    timed = [runs["n512/d64/pa"], runs["n512/d64/coda_r3"]]
    cpu = {"platform": "cpu", "device_kind": "cpu", "num_devices": 1, "cpu_count": 2}
    monkeypatch.setattr(claims_speed, "machine", lambda: dict(cpu))
    key = claims_speed.timings_hash(timed, 8, 5)
    assert claims_speed.timings_hash(list(timed), 8, 5) == key
    assert claims_speed.timings_hash(timed, 8, 3) != key
    assert claims_speed.timings_hash(timed, 4, 5) != key
    assert claims_speed.timings_hash([timed[0], runs["n512/d64/coda_r5"]], 8, 5) != key
    monkeypatch.setattr(claims_speed, "machine", lambda: {**cpu, "platform": "gpu",
                                                          "device_kind": "NVIDIA H100"})
    assert claims_speed.timings_hash(timed, 8, 5) != key


# ----------------------------------------------------------------------------- specs
DATA = {"vocab": "/v/sp.model", "vocab_size": 2100, "floors": {}, "pages": "/p",
        "page_words": list(ink_pages.WORDS)}


def test_specs_cover_every_claim():
    s = claims.SCALES["full"]
    runs = claims.finetune_runs(s, DATA, None)
    for n in s.lengths:                                      # the r sweep at both lengths
        for r in s.rates:
            run = runs[f"n{n}/{s.base}/{'pa' if r == 1 else f'coda_r{r}'}"]
            assert run.model.coda.reduction == r and run.task == claims.text_task(n)
            assert run.model.coda.k(n) == math.ceil(n / r) and run.trainable == "finetune"
    for x, y in claims.comparisons(s):                      # every comparison has both runs
        assert x in runs and y in runs
    for size, d in s.sizes:
        assert runs[f"n512/{size}/pa"].model.d_model == d
        assert runs[f"n512/{size}/pa"].init.name == f"backbone/{size}"
        assert runs[f"n512/{size}/pa"].init.trainable == "all"
        # backbones: Adafactor's relative steps, as the demo's backbone (which learns "who gave
        # it?" with them); finetuning: absolute steps
        assert dict(runs[f"n512/{size}/pa"].init.train_options)["parameter_scale"] is True
        assert dict(runs[f"n512/{size}/pa"].train_options)["parameter_scale"] is False
    soft = runs["n512/d64/soft_topk_r5_k_to_k"].model.coda
    assert (soft.attention, soft.router) == ("k_to_k", "soft_topk")
    assert runs["n512/d64/first_k_r3_k_to_k"].model.coda.router == "first_k"
    pre = runs["n512/d64/coda_r3_pretrained"].init           # claim f: backbone -> CoDA -> task
    assert pre.trainable == "all" and pre.steps == s.coda_pretrain_steps
    assert pre.model.coda.reduction == 3 and pre.init.name == "backbone/d64"
    assert all(r.seed == 0 and r.name.endswith("/seed0") for r in runs.values())
    # k annealed in 4 stages wherever the encoder routes: n, then down to ceil(n / r)
    from coda_flax.experiments.runner import Run
    from coda_flax.kplan import KPlan
    for g, run in runs.items():
        routed = run.model.coda.reduction > 1
        assert run.k_anneal_stages == (4 if routed else Run.k_anneal_stages), g
    plan = KPlan.for_run(runs["n512/d64/coda_r16"].model.coda, 512, s.finetune_steps, 0.2,
                         runs["n512/d64/coda_r16"].k_anneal_stages)
    assert [st.k for st in plan.stages] == [512, 352, 192, 32]   # linear, by hand
    assert pre.k_anneal_stages == 4
    two = claims.with_seed(runs["n512/d64/pa"], 2)
    assert (two.name, two.seed) == ("n512/d64/pa/seed2", 2)
    images = claims.image_runs(s, DATA, None)
    assert sorted(images) == ["images/coda_r16", "images/coda_r8", "images/pa"]
    assert images["images/coda_r16"].k_anneal_stages == 4
    assert images["images/pa"].k_anneal_stages == Run.k_anneal_stages
    assert images["images/coda_r16"].init.trainable == "all"
    assert claims.stage_of("n512/d64/pa/seed2") == "extra seeds"
    assert claims.stage_of("coda_pretrain/d64/r3") == "pretraining"
    assert claims.stage_of("n512/d64/sigmoid_r3_k_to_k/seed0") == "routers"
    assert claims.stage_of("n512/d64/coda_r3_anneal50/seed0") == "schedule"


def test_reduced_scale_judges_e_and_f_off_the_ceiling():
    """At the reduced scale r = 3 sits at 99-100% for every size and pretraining, so e and f are
    judged at gap_point (n = 512, r = 32), while the r = 3 runs stay in the table."""
    s = claims.SCALES["reduced"]
    assert s.gap_point == (512, 32) and claims.ef_points(s) == [(256, 3), (512, 32)]
    runs = claims.finetune_runs(s, DATA, None)
    for size, d in s.sizes:
        for g in (f"n512/{size}/pa", f"n512/{size}/coda_r32", f"n256/{size}/coda_r3"):
            assert runs[g].model.d_model == d and runs[g].init.name == f"backbone/{size}"
    assert runs["n512/d32/coda_r32"].model.coda.k(512) == 16
    pre = runs["n512/d64/coda_r32_pretrained"].init
    assert pre.name == "coda_pretrain/d64/r32" and pre.model.coda.reduction == 32
    assert runs["n256/d64/coda_r3_pretrained"].init.name == "coda_pretrain/d64/r3"
    pairs = claims.comparisons(s)
    assert ("n512/d32/pa", "n512/d32/coda_r32") in pairs
    assert ("n512/d32/coda_r32", "n512/d64/coda_r32") in pairs       # the sizes' CoDA (e)
    assert ("n512/d64/coda_r32_pretrained", "n512/d64/coda_r32") in pairs
    assert ("n256/d32/pa", "n256/d32/coda_r3") not in pairs           # at the ceiling: no seeds
    for x, y in pairs:
        assert x in runs and y in runs
    # the schedule probe: the gap point's base-size CoDA, k annealed over half the steps
    probe, runs32 = runs["n512/d64/coda_r32_anneal50"], runs["n512/d64/coda_r32"]
    assert (probe.k_anneal_fraction, runs32.k_anneal_fraction) == (0.5, 0.2)
    assert dataclasses.replace(probe, name=runs32.name, k_anneal_fraction=0.2) == runs32
    from coda_flax.kplan import KPlan
    plan = KPlan.for_run(probe.model.coda, 512, s.finetune_steps, probe.k_anneal_fraction,
                         probe.k_anneal_stages)   # over 500 of 1,000 steps: 512 -> 16, linear
    assert [(st.start_step, st.k) for st in plan.stages] == [(0, 512), (167, 347), (333, 182),
                                                             (500, 16)]
    assert claims.probes(s) == [(512, 32), (512, 64), (256, 64)]    # gap_point first
    assert [runs[f"n{n}/d64/coda_r{r}_anneal50"].k_anneal_fraction
            for n, r in claims.probes(s)] == [0.5] * 3
    with pytest.raises(ValueError, match="gap_point .* lengths"):
        claims.ClaimsScale(gap_point=(256, 3))
    with pytest.raises(ValueError, match=r"probe_points \(512, 7\) is not a point"):
        claims.ClaimsScale(probe_points=((512, 7),))


def test_text_floors_cover_every_rate_of_the_sweep(tmp_path):
    """Truncation bounds at r = 32 and 64 too (the dataset's stats stop at r = 16), each the
    brute-force share: a record whose needles all start before k = ceil(n / r) is read whole."""
    import dataclasses
    from coda_flax.datasets.records import write_jsonl
    text = "Hamlet gave it. Brutus gave it."
    recs = [{"split": "validation", "needle_starts": [1, 5], "text": text,
             "target": "Brutus Hamlet"},
            {"split": "validation", "needle_starts": [3, 40], "text": text,
             "target": "Brutus Hamlet"},
            {"split": "train", "needle_starts": [100, 101], "text": text, "target": "x"}]
    write_jsonl(str(tmp_path / "r.jsonl"), recs)
    s = dataclasses.replace(claims.SCALES["tiny"], rates=(1, 8, 64), gap_point=(128, 8))
    f = claims.text_floors(s, str(tmp_path / "r.jsonl"), 128)
    # k = 128, 16, 2 (1 / C(2h, h) for h needles hidden): record 1 whole at k = 16 and 128,
    # one hidden at k = 2 (1/2); record 2 whole at k = 128, one hidden at k = 16 (1/2), both
    # at k = 2 (1/6); the train record does not count
    assert f["majority"] == 1.0 and f["bag_of_words"] == 1.0
    assert f["truncation"] == pytest.approx({"1": 1.0, "8": (1 + 1 / 2) / 2,
                                             "64": (1 / 2 + 1 / 6) / 2})


def test_seeds_are_added_where_a_difference_is_within_3_se():
    def res(*accs):
        return [{"eval": {"accuracy": a, "num_examples": 400}} for a in accs]
    by_group = {"pa": res(90.0), "r3": res(88.0), "r16": res(40.0), "done": res(60, 61, 62)}
    # pa - r3 = 2 points, SE of the difference ~2.2 points: not separated -> both get seeds;
    # pa - r16 = 50 points: separated; a group with max_seeds seeds already is left alone
    pairs = [("pa", "r3"), ("pa", "r16"), ("done", "r3")]
    assert claims_seeds.seeds_needed(pairs, by_group, 3) == {"pa", "r3"}
    assert claims_seeds.seeds_needed([("pa", "r16")], by_group, 3) == set()
    # one round at a time: to 2 seeds, then to 3 where a pair is still within 3 SE
    assert claims_seeds.next_seeds(pairs, by_group, 2) == [("pa", 1), ("r3", 1)]
    assert claims_seeds.next_seeds(pairs, by_group, 3) == [("pa", 1), ("pa", 2), ("r3", 1),
                                                           ("r3", 2)]
    by_group["pa"] = res(90.0, 90.5)
    by_group["r3"] = res(80.0, 80.5)            # now 10 points apart with 2 seeds: separated
    assert claims_seeds.next_seeds(pairs, by_group, 3) == []
    assert claims_seeds.next_seeds(pairs, by_group, 3, always=["r16"]) == [("r16", 1), ("r16", 2)]
    s = claims.SCALES["reduced"]
    runs = claims.finetune_runs(s, DATA, None)
    results = {f"{g}/seed{k}": {} for g in ("n512/d64/coda_r32", "n256/d64/coda_r3")
               for k in range(3)}
    seeded = claims.seeded_runs(s, runs, results)     # every seed of a gap group, in order
    names = list(seeded)
    i = names.index("n512/d64/coda_r32")
    assert names[i + 1:i + 3] == ["n512/d64/coda_r32/seed1", "n512/d64/coda_r32/seed2"]
    assert seeded["n512/d64/coda_r32/seed2"].seed == 2
    assert "n256/d64/coda_r3/seed1" not in seeded and len(seeded) == len(runs) + 2
    # rounds repeat: soft and sigmoid are apart after one seed each; soft's third seed (for
    # its pair with k-to-all) brings them within 3 SE, so sigmoid gets its seeds too
    accs = {"n256/d64/soft_topk_r3_k_to_k": [98, 96, 60], "n256/d64/sigmoid_r3_k_to_k":
            [83, 84, 85], "n256/d64/coda_r3": [98, 99, 97]}
    start = {f"{g}/seed0": {"eval": {"accuracy": 50.0 if g.startswith("n512") else 99.0,
                                     "num_examples": 200}} for g in runs}
    for g, a in accs.items():
        start[f"{g}/seed0"]["eval"]["accuracy"] = a[0]
    for g in claims.gap_groups(s):                     # gap groups seeded whatever they show
        start[f"{g}/seed0"]["eval"]["accuracy"] = 99.0
    trained = []

    def fake(batch):
        trained.extend(r.name for r in batch)
        return {r.name: {"eval": {"accuracy": accs.get(claims.group(r.name), [99.0] * 3)[r.seed],
                                  "num_examples": 200}} for r in batch}
    out = claims_seeds.seed_rounds(runs, start, claims.comparisons(s), claims.gap_groups(s),
                             s.max_seeds, fake, log=lambda m: None)
    assert {"n256/d64/sigmoid_r3_k_to_k/seed1", "n256/d64/sigmoid_r3_k_to_k/seed2",
            "n256/d64/soft_topk_r3_k_to_k/seed2"} <= set(trained)
    assert len(trained) == len(set(trained)) and set(trained) <= set(out)
    assert "n256/d64/sigmoid_r3_k_to_k/seed1" not in trained[:trained.index(
        "n256/d64/soft_topk_r3_k_to_k/seed2")]        # sigmoid's seeds come in a later round
    assert claims.gap_groups(claims.SCALES["reduced"]) == [
        "n512/d32/pa", "n512/d32/coda_r32", "n512/d64/pa", "n512/d64/coda_r32",
        "n512/d64/coda_r32_pretrained", "n512/d64/coda_r32_anneal50", "n512/d64/coda_r64",
        "n512/d64/coda_r64_anneal50", "n256/d64/pa", "n256/d64/coda_r64",
        "n256/d64/coda_r64_anneal50"]


# ----------------------------------------------------------------------------- images
def test_ink_statistics_against_hand_computed_masks():
    selected = [np.array([[1, 1, 1, 0, 0, 0], [1, 0, 0, 1, 0, 1]], bool),
                np.array([[0, 0, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0]], bool)]
    ink = [np.array([1, 0, 0, 1, 0, 0], bool), np.array([0, 0, 0, 0, 1, 1], bool)]
    valid = [np.ones(6, bool), np.array([1, 1, 1, 1, 1, 0], bool)]      # page 2: one pad
    out = claims.ink_statistics(selected, ink, valid)
    # page 1: layer 0 routes 0-2 (ink at 0: 1/3), layer 1 routes 0, 3, 5 (ink 0, 3: 2/3);
    # page 2: layer 0 routes 4 (the padding 5 does not count): 1/1, layer 1 routes 0, 1: 0
    assert out["routed_ink_share"] == pytest.approx([(1 / 3 + 1) / 2, (2 / 3 + 0) / 2])
    assert out["routed_ink_share_se"][0] == pytest.approx(np.std([1 / 3, 1], ddof=1) / 2 ** .5)
    assert out["page_ink_share"] == pytest.approx((2 / 6 + 1 / 5) / 2)
    assert out["pages"] == 2


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pages"))
    font = find_fonts(None, download=False, log=lambda s: None)["sans"]
    counts = ink_pages.render_pages(out, font, num_train=8, num_validation=16,
                                    page_size=(128, 128), seed=3)
    return out, font, counts


def _records(root, split):
    with open(os.path.join(root, f"{split}.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_pages_hold_ink_in_the_word_box_only(pages):
    from PIL import Image
    root, font, counts = pages
    assert counts == {"train": 8, "validation": 16}
    records = _records(root, "validation")
    assert sorted(r["text"] for r in records) == sorted(ink_pages.WORDS * 2)   # stratified
    for r in records:
        with Image.open(os.path.join(root, r["image"])) as img:
            grey = np.asarray(img.convert("L"))
        x0, y0, x1, y1 = r["bbox"]
        inside = np.zeros(grey.shape, bool)
        inside[y0:y1, x0:x1] = True
        assert (grey[~inside] == 255).all()                 # blank outside the word's box
        assert (grey[inside] < 128).sum() > 10              # the word is there, in ink
        assert inside.mean() < 0.1                          # a small region of the page
    again = str(os.path.join(root, "again"))
    ink_pages.render_pages(again, font, num_train=8, num_validation=16, page_size=(128, 128),
                           seed=3)
    assert _records(again, "validation") == [dict(r) for r in records]     # deterministic


def test_routing_report_ink_mask_is_the_hand_computed_one(pages):
    """The mask claims.routed_ink reads (routing_report.image_input) against 16 x 16 blocks of
    the page checked by hand (a 128 x 128 page at 64 patches: no resize, an 8 x 8 grid)."""
    from PIL import Image
    from coda_flax.analysis import routing_report as rr
    s = claims.SCALES["tiny"]
    cfg = claims.image_model(s, claims.coda(s, 4))
    root = pages[0]
    for r in _records(root, "validation")[:4]:
        with Image.open(os.path.join(root, r["image"])) as img:
            rgb = np.asarray(img.convert("RGB"), np.uint8)
        hand = (rgb.mean(-1) / 255 < 0.5).reshape(8, 16, 8, 16).any(axis=(1, 3)).reshape(-1)
        inp = rr.image_input(cfg, rgb, max_patches=64)
        assert inp.ink.tolist() == hand.tolist() and 0 < hand.sum() < 16


def test_pages_registered_as_a_task_with_their_ink(pages):
    from coda_flax.tasks import get_task_or_mixture
    from coda_flax.tasks.vision import register_page_task
    root = pages[0]
    register_page_task("test_claims_pages", root, max_patches=64)
    task = get_task_or_mixture("test_claims_pages")
    exs = list(task.get_dataset({"inputs": 64, "targets": 8}, split="validation",
                                shuffle=False, num_epochs=1).as_numpy_iterator())
    records = _records(root, "validation")
    assert [e["targets_pretokenized"].decode() for e in exs] == [r["text"] for r in records]
    assert exs[0]["inputs"].shape == (64, 2 + 16 * 16 * 3)
    assert all(0 < e["ink"].sum() < 16 for e in exs)


def test_two_chain_lengths_registered_side_by_side(tmp_path):
    from corpus_helpers import prepared_corpus
    from coda_flax.datasets import multi_needle
    from coda_flax.datasets.provenance import bound
    from coda_flax.tasks import get_task_or_mixture
    from coda_flax.tasks.offline import register_chain_task
    vocab = prepared_corpus(tmp_path, vocab_size=300, num_scenes=12)
    for n in (160, 192):
        chain = multi_needle.prepare_chain(str(tmp_path), vocab, input_length=n, num_needles=2,
                                           num_train=8, num_validation=8, log=lambda s: None)
        register_chain_task(f"test_claims_chain_{n}", chain["dir"], vocab)
        assert bound(f"test_claims_chain_{n}")[0] == chain["dir"]
    for n in (160, 192):                    # each name reads its own length's examples
        name = f"test_claims_chain_{n}"
        recs = [r for r in multi_needle.read_jsonl(os.path.join(bound(name)[0], "chain.jsonl"))
                if r["split"] == "validation"]
        exs = list(get_task_or_mixture(name).get_dataset(
            {"inputs": n, "targets": 4}, split="validation", shuffle=False,
            num_epochs=1).as_numpy_iterator())
        assert [e["targets_pretokenized"].decode() for e in exs] == [r["target"] for r in recs]
        assert [e["inputs_pretokenized"].decode() for e in exs] == [r["text"] for r in recs]
        assert len(exs) == 8 and max(len(e["inputs"]) for e in exs) <= n


# ----------------------------------------------------------------------------- the command
def test_pilot_names_an_unknown_run_and_the_choices(tmp_path):
    from corpus_helpers import synthetic_source
    synthetic_source(tmp_path / "data", num_plays=3, num_scenes=12)
    with pytest.raises(ValueError, match=r"unknown runs \['n128/d16/nope'\]; choose from .*"
                                         r"'n128/d16/coda_r3'"):
        claims.run_pilot(str(tmp_path / "out"), "tiny", ["n128/d16/pa", "n128/d16/nope"],
                         data_dir=str(tmp_path / "data"), log=lambda m: None)
    assert not os.path.exists(tmp_path / "out" / "runs")          # nothing trained


def test_cli_rejects_an_unknown_scale_a_missing_data_dir_and_no_jobs(tmp_path, capsys):
    from coda_flax.cli import main
    with pytest.raises(SystemExit) as e:
        main(["claims", "--scale", "huge"])
    assert e.value.code == 2
    assert main(["claims", "--data-dir", str(tmp_path / "nope")]) == 2
    assert "is not an existing directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["claims", "--jobs", "0"])
    assert e.value.code == 2
    assert "--jobs: expected an integer >= 1 (worker processes), got 0" in \
        capsys.readouterr().err


def _results(root):
    out = {}
    for folder, _, files in os.walk(root):
        if "result.json" in files:
            out[os.path.relpath(folder, root)] = os.path.getmtime(os.path.join(folder,
                                                                                "result.json"))
    return out


@pytest.mark.slow
def test_tiny_claims_stop_resume_and_reuse(tmp_path):
    """SIGTERM mid-run (two runs side by side: --jobs 2): one line, exit 143; run again (one
    by one): the finished runs are reused and the rest trained, the table has one row per
    claim; a third run trains nothing."""
    from corpus_helpers import synthetic_source
    from coda_flax.cli import main
    data, out = tmp_path / "data", tmp_path / "out"
    synthetic_source(data, num_plays=3, num_scenes=12)
    cmd = [sys.executable, "-m", "coda_flax.cli", "claims", "--scale", "tiny", "--output",
           str(out), "--data-dir", str(data), "--jobs", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900
    while len(_results(out / "runs")) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert [ln for ln in err.splitlines() if "stopped" in ln] == \
        [ln for ln in err.splitlines() if ln.startswith("coda claims: stopped by SIGTERM")]
    before = _results(out / "runs")
    assert len(before) >= 2
    assert main(["claims", "--scale", "tiny", "--output", str(out), "--data-dir",
                 str(data), "--jobs", "1"]) == 0
    after = _results(out / "runs")
    assert all(after[k] == t for k, t in before.items())          # reused, not retrained
    summary = json.load(open(out / "claims.json"))
    assert [r["claim"] for r in summary["claims"]] == list("abcdefg")
    assert all(r["holds"] in (YES, NO, NOT_SEPARATED) for r in summary["claims"])
    table = open(out / "claims.md").read()
    n = claims.SCALES["tiny"].lengths[0]
    # 16 validation answers, each a set of 2 of the 8 names (28 sets): at most once each;
    # bag of words: the 2 givers among the 4 names, 1 / C(4, 2)
    assert f"Floors at n = {n}: majority 6.2%, bag of words 16.7%" in table
    assert all(f"| {g} | " in table for g in summary["accuracy"])    # every run, with floors
    assert os.path.getsize(out / "tradeoff.png") > 1000
    assert os.path.getsize(out / "figure7" / "routing_image.png") > 1000
    # first_k routes the first k tokens: the needle tokens it routes, counted from the records
    k = math.ceil(n / 3)
    stats = [p for p in data.rglob("givers_stats.json")
             if json.load(open(p))["input_length"] == n]
    val = [r for r in _records(str(stats[0].parent), "givers") if r["split"] == "validation"]
    recall = np.mean([sum(min(e, k) - min(s, k) for s, e in zip(r["needle_starts"],
                                                                 r["needle_ends"]))
                      / sum(e - s for s, e in zip(r["needle_starts"], r["needle_ends"]))
                      for r in val])
    first = summary["needles"][f"n{n}/d16/first_k_r3_k_to_k"]["evidence_recall"]
    assert first == pytest.approx([recall] * len(first))
    assert "| run | k | needle tokens routed % (per layer)" in table
    assert "The k schedule, measured (n = 128, r = 3, d16; e and f are judged here)" in table
    assert summary["schedule"][0]["parts"] and f"| n{n}/d16/coda_r3_anneal50 | " in table
    timed = {p.name: p.stat().st_mtime_ns for p in (out / "speed").iterdir()}
    assert sorted(timed) == ["n128_d16.json", "n128_d32.json", "n160_d16.json"]  # the sizes' runs
    assert main(["claims", "--scale", "tiny", "--output", str(out), "--data-dir",
                 str(data)]) == 0
    assert _results(out / "runs") == after                         # nothing trained again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "speed").iterdir()} == timed
    again = json.load(open(out / "claims.json"))                   # nor timed: the same rows
    assert again["speed"] == summary["speed"]
    assert not [p for p in os.listdir(out / "runs") if "set-aside" in p]
