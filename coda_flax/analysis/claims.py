"""The claims table of `coda claims` (issue 18): the paper's trade-off claims, each checked
against measured accuracies with their standard errors (analysis.estimates) and measured
speedups; and the Figure-5-style plot, one line per model size.

    claim_a .. claim_g   one row each: {"claim", "what", "paper", "ours", "holds", "parts"}
    claims_markdown      `| claim | paper | ours (± SE, seeds) | holds? |`
    schedule_probe       one point trained with two k schedules beside PA: is a fall there the
                         routers' capacity or the k schedule's? (schedule_markdown: its lines)
    plot_tradeoff        accuracy (± SE) against measured speedup, one line per model size

"holds" is "yes", "no" or "not separated" (a difference within 3 standard errors:
estimates.SEPARATION); a claim of several parts is "no" if any part is, "not separated" if any
part is (estimates.combine). The functions take plain numbers, so that the verdicts can be
checked against hand-made ones.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from coda_flax.analysis.estimates import (NO, NOT_SEPARATED, YES, Estimate, at_least, at_most,
                                          combine, difference, greater)

PAPER = {
    "a": ("quality vs r falls gradually; r = 3 within ~1 point of PA", "Table 2, Figure 5 left"),
    "b": ("soft top-k > sigmoid > truncation",
          "Table 3: -2.0 / -4.4 points at r = 3, -1.6 / -12.9 at r = 5"),
    "c": ("k-to-all >= k-to-k", "Table 2"),
    "d": ("on images the router picks ink over background", "Figure 7"),
    "e": ("the CoDA-vs-PA gap shrinks as the model grows", "Figure 4, Table 9"),
    "f": ("a short CoDA pretraining improves finetuning", "Figure 3 (0 vs 20K-100K steps)"),
    "g": ("speedup grows with input length and r, quality held",
          "Tables 1 and 6 (8x-13x at 4,096 patches)"),
}
TOLERANCE = 0.01        # claim a's "within ~1 point", as a fraction
PAPER_MAX_R = 16        # the paper's largest r (Table 6: 1/16 of the patches, ~13x): g's quality


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}"


def _diff_text(d: float, se: float) -> str:
    return f"{_pct(d)} ± {100 * se:.1f}"


def _row(claim: str, ours: str, parts: Mapping[str, str]) -> dict:
    what, paper = PAPER[claim]
    return {"claim": claim, "what": what, "paper": paper, "ours": ours,
            "holds": combine(parts.values()), "parts": dict(parts)}


def claim_a(curves: Mapping[str, Mapping[float, Estimate]], tolerance: float = TOLERANCE
            ) -> dict:
    """curves: {label (e.g. "n = 512"): {r: accuracy}}, r = 1 the Parallel Adapter. Parts per
    curve: r = 3 within `tolerance` of PA (at_most), quality falls from r = 1 to the largest r
    (greater), and never rises by more than 3 SE from one r to the next (monotone)."""
    parts, texts = {}, []
    for label, curve in curves.items():
        rs = sorted(curve)
        pa, last = curve[rs[0]], curve[rs[-1]]
        if 3 in curve:
            d, se = difference(pa, curve[3])
            parts[f"{label}: PA - r3 <= {100 * tolerance:g} point"] = at_most(d, se, tolerance)
        d, se = difference(pa, last)
        parts[f"{label}: falls from r = {rs[0]:g} to {rs[-1]:g}"] = greater(d, se)
        rises = [(a, b) for a, b in zip(rs, rs[1:])
                 if greater(*difference(curve[b], curve[a])) == YES]
        parts[f"{label}: monotone"] = NO if rises else YES
        texts.append(f"{label}: " + ", ".join(f"r{r:g} {100 * curve[r].mean:.1f}" for r in rs)
                     + f" (± {100 * max(e.se for e in curve.values()):.1f} or less)"
                     + (f"; PA - r3 {_diff_text(*difference(pa, curve[3]))}" if 3 in curve
                        else "")
                     + (f"; rises at r = {', '.join(f'{a:g}->{b:g}' for a, b in rises)}"
                        if rises else ""))
    return _row("a", "; ".join(texts), parts)


def claim_b(routers: Mapping[float, Mapping[str, Estimate]]) -> dict:
    """routers: {r: {"soft_topk", "sigmoid", "first_k": accuracy}}: soft top-k > sigmoid and
    sigmoid > first_k at every r (greater)."""
    parts, texts = {}, []
    for r, acc in routers.items():
        for hi, lo in (("soft_topk", "sigmoid"), ("sigmoid", "first_k")):
            parts[f"r{r:g}: {hi} > {lo}"] = greater(*difference(acc[hi], acc[lo]))
        texts.append(f"r{r:g}: soft top-k {acc['soft_topk'].text()}, sigmoid "
                     f"{acc['sigmoid'].text()}, first_k {acc['first_k'].text()}")
    return _row("b", "; ".join(texts), parts)


def claim_c(pairs: Mapping[float, tuple[Estimate, Estimate]]) -> dict:
    """pairs: {r: (k-to-all, k-to-k)}: k-to-all is not worse by more than 3 SE (at_least)."""
    parts = {f"r{r:g}: k-to-all >= k-to-k": at_least(*difference(a, b))
             for r, (a, b) in pairs.items()}
    ours = "; ".join(f"r{r:g}: k-to-all {a.text()}, k-to-k {b.text()} (difference "
                     f"{_diff_text(*difference(a, b))})" for r, (a, b) in pairs.items())
    return _row("c", ours, parts)


def _at(where: str) -> str:
    return f"{where}: " if where else ""


def claim_e(gaps: Sequence[tuple[str, Estimate, Estimate]], where: str = "") -> dict:
    """gaps: [(size label, PA, CoDA)], smallest model first: the gap PA - CoDA of the
    smallest minus that of the largest is > 0 (greater). When no gap is separated from 0 the
    claim cannot show (every size ties): not separated. where: the point measured (text)."""
    (small, pa_s, coda_s), (large, pa_l, coda_l) = gaps[0], gaps[-1]
    g_small, g_large = difference(pa_s, coda_s), difference(pa_l, coda_l)
    d, se = g_small[0] - g_large[0], (g_small[1] ** 2 + g_large[1] ** 2) ** 0.5
    ties = all(greater(*difference(pa, coda)) == NOT_SEPARATED for _, pa, coda in gaps)
    parts = {f"gap {small} - gap {large} > 0": NOT_SEPARATED if ties else greater(d, se)}
    ours = _at(where) + "; ".join(f"{label}: PA {pa.text()}, CoDA {coda.text()}, gap "
                                  f"{_diff_text(*difference(pa, coda))}"
                                  for label, pa, coda in gaps)
    return _row("e", ours + ("; no gap is separated from 0" if ties else ""), parts)


def claim_f(by_steps: Mapping[int, Estimate], where: str = "") -> dict:
    """by_steps: {CoDA pretraining steps: finetuned accuracy}: the most steps beat 0 steps.
    where: the point measured (text)."""
    most = max(by_steps)
    d, se = difference(by_steps[most], by_steps[0])
    ours = _at(where) + "; ".join(f"{s} steps: {e.text()}" for s, e in sorted(by_steps.items())) \
        + f" (difference {_diff_text(d, se)})"
    return _row("f", ours, {f"{most} steps > 0 steps": greater(d, se)})


def claim_g(speedups: Mapping[int, Mapping[float, float]],
            quality: Mapping[int, tuple[float, Estimate, Estimate]],
            tolerance: float = TOLERANCE, max_r: float = PAPER_MAX_R) -> dict:
    """speedups: {input length: {r: measured encoder speedup over PA}}; quality: {length:
    (r, PA, CoDA at r)}, r the sweep's largest up to max_r. Parts, over the paper's rates
    (r <= max_r; past them the routed layers' share of the time is small, the speedups are
    shown and claim a has the quality): the speedup rises with r at every length, is larger at
    the longest length than at the shortest for every r > 1 (judged on the medians over the
    timing rounds: these parts are yes / no; the run table shows each speedup's range over the
    rounds), and quality at r is within `tolerance` of PA (at_most)."""
    lengths = sorted(speedups)
    parts = {}
    for n in lengths:
        rs = sorted(r for r in speedups[n] if r <= max_r)
        parts[f"n = {n}: speedup rises with r to {max(rs):g}"] = \
            YES if all(speedups[n][b] > speedups[n][a] for a, b in zip(rs, rs[1:])) else NO
    short, long_ = lengths[0], lengths[-1]
    common = sorted(r for r in speedups[short] if r in speedups[long_] and 1 < r <= max_r)
    parts[f"n = {long_} faster than n = {short}"] = \
        YES if all(speedups[long_][r] > speedups[short][r] for r in common) else NO
    for n, (r, pa, coda) in quality.items():
        parts[f"n = {n}: quality at r = {r:g} within {100 * tolerance:g} point"] = \
            at_most(*difference(pa, coda), tolerance)
    ours = "; ".join(
        f"n = {n}: " + ", ".join(f"r{r:g} {s:.2f}x" for r, s in sorted(speedups[n].items()))
        + (f" (quality PA {quality[n][1].text()}, r{quality[n][0]:g} {quality[n][2].text()})"
           if n in quality else "") for n in lengths)
    return _row("g", ours, parts)


def claim_d(by_rate: Mapping[float, tuple[Sequence[tuple[float, float]], tuple[float, float]]]
            ) -> dict:
    """by_rate: {r: (shares, chance)}; shares: per encoder layer, (mean share of routed
    patches holding ink, its SE); chance: (the page's ink share, its SE). At every r the
    later half of the layers routes ink above chance (greater)."""
    parts, texts = {}, []
    for r, (shares, chance) in sorted(by_rate.items()):
        num = len(shares)
        for i in range(num // 2, num):
            parts[f"r{r:g} layer {i}: above chance"] = greater(
                shares[i][0] - chance[0], (shares[i][1] ** 2 + chance[1] ** 2) ** 0.5)
        texts.append(f"r{r:g}: " + ", ".join(f"layer {i} {100 * m:.1f} ± {100 * e:.1f}%"
                                             for i, (m, e) in enumerate(shares)))
    chance = next(iter(by_rate.values()))[1]
    ours = ("; ".join(texts) + f" of routed patches hold ink; chance (the page's share) "
            f"{100 * chance[0]:.1f} ± {100 * chance[1]:.1f}%")
    return _row("d", ours, parts)


def _seeds(e: Estimate) -> str:
    return " / ".join(f"{100 * a:.1f}" for a in e.seeds)


def schedule_probe(pa: Estimate, runs: Estimate, slow: Estimate, fractions: tuple[float, float],
                   where: str, tolerance: float = TOLERANCE) -> dict:
    """CoDA at one point with k annealed from n to ceil(n / r) over fractions[0] of the steps
    (the runs' schedule) and over fractions[1] (slower), beside PA at the same point. Parts:
    the slower anneal beats the runs' (greater) and is within `tolerance` of PA (at_most).
    Where the slower anneal reaches PA, a fall of CoDA at this point is the k schedule's, not
    the routers' capacity. Returns {"text", "parts"}."""
    (fast, slow_f), gain = fractions, difference(slow, runs)
    near = at_most(*difference(pa, slow), tolerance)
    parts = {f"annealed over {100 * slow_f:g}% > over {100 * fast:g}%": greater(*gain),
             f"annealed over {100 * slow_f:g}%: within {100 * tolerance:g} point of PA": near}
    reached = near == YES
    text = (f"The k schedule, measured ({where}): CoDA with k annealed over {100 * fast:g}% of "
            f"the steps (every other run's schedule) {runs.text()}, per seed {_seeds(runs)}; "
            f"over {100 * slow_f:g}% {slow.text()}, per seed {_seeds(slow)} (difference "
            f"{_diff_text(*gain)}); PA {pa.text()}. "
            + ("The slower anneal reaches PA here, so CoDA's fall at this point is the k "
               "schedule's, not the routers' capacity."
               if reached else "The slower anneal does not reach PA here: the fall at this "
               "point is not the k schedule's alone."))
    return {"text": text, "parts": parts}


def claims_markdown(rows: Sequence[dict]) -> str:
    """The table `| claim | paper | ours (± SE, seeds) | holds? |`, then each claim's parts."""
    lines = ["| claim | paper | ours (± SE, seeds) | holds? |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['claim']}. {row['what']} | {row['paper']} | {row['ours']} | "
                     f"{row['holds']} |")
    lines += ["", "Parts (a claim holds when every part does; \"not separated\": within "
                  "3 standard errors):", ""]
    lines += [f"- {row['claim']}: {_parts_text(row['parts'])}" for row in rows]
    return "\n".join(lines) + "\n"


def _parts_text(parts: Mapping[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in parts.items())


def schedule_markdown(probes: Sequence[dict]) -> str:
    """schedule_probe's lines, each with its parts, a paragraph each."""
    return "".join(f"{p['text']} Parts: {_parts_text(p['parts'])}.\n\n" for p in probes)


def plot_tradeoff(lines: Mapping[str, Sequence[tuple]], path: str, *,
                  floors: Mapping[str, float], title: str = "") -> str:
    """Figure 5 at CPU scale. lines: {model size label: [(measured speedup, accuracy %, SE %,
    point label e.g. "r3"[, (lowest, highest) speedup of the timing rounds])]}, one line per
    size (horizontal bars: the rounds' range where given); floors: {label: accuracy %} drawn
    dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    for label, points in lines.items():
        pts = sorted(points)
        xs, ys, se = ([p[i] for p in pts] for i in range(3))
        spans = [p[4] if len(p) > 4 else (p[0], p[0]) for p in pts]
        xerr = [[max(0.0, x - lo) for x, (lo, _) in zip(xs, spans)],     # the medians' ratio
                [max(0.0, hi - x) for x, (_, hi) in zip(xs, spans)]]     # may lie outside it
        bar = ax.errorbar(xs, ys, yerr=se, xerr=xerr, marker="o", capsize=3, label=label)
        for x, y, _, name, *_ in pts:
            ax.annotate(name, (x, y), xytext=(4, 4), textcoords="offset points", fontsize=7,
                        color=bar[0].get_color())
    for style, (label, value) in zip(("--", ":", "-."), floors.items()):
        ax.axhline(value, color="gray", lw=0.8, ls=style, label=label)
    ax.set_xlabel("measured encoder speedup over PA of the same size and length\n"
                  "(bars: lowest to highest ratio over the timing rounds)")
    ax.set_ylabel("validation accuracy, % (bars: standard error)")
    ax.set_title(title or "Quality against speed, one line per model size (cf. paper Figure 5)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
