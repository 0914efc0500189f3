"""The output of `coda bench` (coda_flax.bench): text tables, notes, the JSON file, the plot.

JSON schema (`SCHEMA_VERSION` 2; version 1 rows lack the keys marked [v2], readers here treat
them as text rows), written by `write_json`:

    {"schema_version": 2, "kind": "coda_bench",
     "created": ISO-8601 time, "jax_version": str, "jaxlib_version": str, "flax_version": str,
     "device": {"platform": "cpu" | "gpu" | "tpu", "device_kind": str, "num_devices": int,
                "cpu_count": int, "load_average_start": [3 floats] | null,
                "load_average_end": [3 floats] | null},
     "settings": null (soft top-k only) | {the sweep's settings: presets (names, or a
                  ModelConfig as a dict), lengths, audio_seconds [v2] (null or seconds),
                  reductions, attentions, modes, batch_size, decode_length, num_layers,
                  num_decoder_layers, dtype, repeats, warmup, min_sample_seconds, statistic,
                  timer, settle, seed, router, solver, adapter_dim},
     "rows": [ROW, ...],                 # the sweep; [] when only soft top-k ran
     "soft_topk": null | {"settings": {...}, "gradients": [GRAD_ROW, ...],
                          "router_share": [SHARE_ROW, ...]}}

    ROW = {"preset" (name; "custom" for a ModelConfig), "mode": "encode" | "generate",
           "input" [v2]: "tokens" | "patches" | "frames" (ModelConfig.encoder_input),
           "head" [v2]: "decoder" | "ctc",
           "input_length" [v2] (tokens / patches / audio frames fed to the model),
           "audio_seconds" [v2] (frames: the duration those frames cover; else null),
           "n" (encoder length: what CoDA routes over; = input_length but for audio),
           "r", "k", "attention",
           "num_heads", "num_kv_heads", "batch_size",
           "decode_length" (null for encode and for CTC models),
           "num_encoder_layers", "num_decoder_layers" (as timed),
           "preset_num_encoder_layers", "preset_num_decoder_layers" [v2] (the preset's own),
           "dtype", "statistic", "timer",
           "pa_seconds", "coda_seconds" (the statistic, seconds per call),
           "measured_speedup" (pa_seconds / coda_seconds),
           "paired_speedup" (median over rounds of the PA / CoDA time ratio within a round:
                             robust to background load that changes during the run),
           "flop_speedup" (summary.flop_speedup at n),
           "measured_over_flop" (measured_speedup / flop_speedup),
           "input_flops" [v2] (front-end FLOPs per sequence: 0 for tokens),
           "flop_speedup_with_input" [v2] ((PA encoder + front end) / (CoDA encoder + front
                                            end) FLOPs at the timed depth),
           "paper_speedup" [v2] (the paper's measured speedup for this setting, or null),
           "pa_samples", "coda_samples" (seconds per call, one per round),
           "pa_compile_seconds", "coda_compile_seconds" (first call, compile included)}
    GRAD_ROW = {"n", "k", "batch_size", "num_iters", "forward_seconds",
                "implicit_grad_seconds", "unrolled_grad_seconds",
                "soft_topk_implicit_temp_bytes", "soft_topk_unrolled_temp_bytes",
                "router_implicit_temp_bytes", "router_unrolled_temp_bytes",
                "soft_topk_memory_ratio", "router_memory_ratio"}      # implicit / unrolled
    SHARE_ROW = {"preset", "n", "r", "k", "attention", "batch_size", "num_iters",
                 "layer_seconds", "router_seconds", "soft_topk_seconds",
                 "router_share", "soft_topk_share"}                   # router / layer time

`format_table` / `format_soft_topk_table` print them (`format_notes`: depth and front-end notes
under the table); `plot_speedups` draws measured (solid) and FLOP-bound (dashed) speedup
against r, one colour per n, the paper's speedups as stars, one panel per (preset, mode,
attention).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import numpy as np

MODES = ("encode", "generate")   # what coda_flax.bench times: the encoder, or encode + decode
# The paper's measured inference speedups over the Parallel Adapter (end to end), by preset:
# Table 6, OCR-VQA column (Pix2Struct, n = 4096 patches, CoDA k-to-all; DocVQA and Screen2Words
# give 12.1-12.5x at r = 16 and 16.7-17.8x at r = 32). Checked: configs/table6.py.
PAPER_SPEEDUPS: dict[str, dict[str, Any]] = {
    "pix2struct": {"n": 4096, "attention": "k_to_all", "mode": "generate",
                   "source": "Table 6 (OCR-VQA)",
                   "speedups": {4: 4.6, 8: 8.0, 16: 13.5, 32: 19.4}},
}


def _length_label(row: dict) -> str:
    """'n = 4096', 'n = 1024 patches', 'n = 750 (30.0 s)' for logs and plot legends."""
    kind = row.get("input", "tokens")
    if kind == "frames":
        return f"n = {row['n']} ({row['audio_seconds']:g} s)"
    if kind == "patches":
        return f"n = {row['n']} patches"
    return f"n = {row['n']}"


_COLUMNS = (("preset", "preset", "{}"), ("mode", "mode", "{}"), ("n", "n", "{}"),
            ("r", "r", "{:g}"), ("k", "k", "{}"), ("attention", "attention", "{}"),
            ("pa_seconds", "PA ms", "{:.2f}"), ("coda_seconds", "CoDA ms", "{:.2f}"),
            ("measured_speedup", "speedup", "{:.3f}"), ("paired_speedup", "paired", "{:.3f}"),
            ("flop_speedup", "FLOP bound", "{:.3f}"), ("measured_over_flop", "meas/FLOP", "{:.3f}"))


# Extra columns, shown only when some row needs them: image / audio inputs ("input": what the
# model reads, e.g. "4096 patches", "2998 frames"; "audio": seconds), the bound with the shared
# input front end, and the paper's speedup.
_INPUT_COLUMN = ("input_length", "input", "{}")
_AUDIO_COLUMN = ("audio_seconds", "audio s", "{:g}")
_WITH_INPUT_COLUMN = ("flop_speedup_with_input", "bound+input", "{:.3f}")
_PAPER_COLUMN = ("paper_speedup", "paper", "{:.1f}")


def _columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    columns = list(_COLUMNS)
    media = any(row.get("input", "tokens") != "tokens" for row in rows)
    if media:
        at = columns.index(("n", "n", "{}"))
        extra = [_INPUT_COLUMN]
        if any(row.get("input") == "frames" for row in rows):
            extra.append(_AUDIO_COLUMN)
        columns[at:at] = extra
        columns.append(_WITH_INPUT_COLUMN)
    if any(row.get("paper_speedup") is not None for row in rows):
        columns.append(_PAPER_COLUMN)
    return columns


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "input_length":
        kind = row.get("input", "tokens")
        length = row.get("input_length", row.get("n"))
        return f"{length} {kind}" if length is not None else "-"
    if value is None:
        return "-"
    if key.endswith("_seconds") and key != "audio_seconds":
        value = value * 1e3
    return fmt.format(value)


def format_table(rows: Sequence[dict], header: bool = True) -> str:
    """The sweep rows as an aligned text table (times in milliseconds per call).

    Text rows: preset, mode, n, r, k, attention, PA ms, CoDA ms, speedup, paired, FLOP bound,
    meas/FLOP. Image / audio rows add "input" (e.g. "4096 patches", "2998 frames") before n
    (then the encoder length), "audio s" for audio, and "bound+input" (flop_speedup_with_input)
    at the end; rows with a paper figure add "paper". Reads schema 1 rows (as text rows).
    """
    columns = _columns(rows)
    cells = [[_cell(row, key, fmt) for key, _, fmt in columns] for row in rows]
    titles = [title for _, title, _ in columns]
    widths = [max([len(t)] + [len(c[i]) for c in cells]) for i, t in enumerate(titles)]
    left = {"preset", "mode", "attention", "input_length"}
    def line(values):
        return "  ".join(v.ljust(w) if key in left else v.rjust(w)
                         for v, w, (key, _, _) in zip(values, widths, columns)).rstrip()
    lines = [line(titles), line(["-" * w for w in widths])] if header else []
    lines += [line(c) for c in cells]
    return "\n".join(lines)


def format_notes(rows: Sequence[dict]) -> str:
    """Notes printed under the table: runs shallower than the preset, the paper's figures,
    the front end of image / audio models. "" when there is nothing to say."""
    notes = []
    seen = set()
    for row in rows:
        key = (row["preset"], row.get("num_encoder_layers"), row.get("num_decoder_layers"))
        full = row.get("preset_num_encoder_layers")
        if key in seen or full is None or row.get("num_encoder_layers") == full:
            continue
        seen.add(key)
        dec = ""
        generate = any(r.get("mode") == "generate" and r["preset"] == row["preset"]
                       for r in rows)
        if row.get("preset_num_decoder_layers") and generate:
            dec = (f" and {row['num_decoder_layers']} of its {row['preset_num_decoder_layers']}"
                   f" decoder layers")
        notes.append(f"note: {row['preset']} timed with {row['num_encoder_layers']} of its "
                     f"{full} encoder layers{dec} (--num-layers, to keep the run short); every "
                     f"encoder layer costs the same, so the FLOP bound is the full encoder's, "
                     f"but fixed costs (input front end, decoder) weigh more than at full depth.")
    papers = sorted({row["preset"] for row in rows if row.get("paper_speedup") is not None})
    for name in papers:
        paper = PAPER_SPEEDUPS.get(name)
        if paper:
            notes.append(f"note: paper = the paper's measured end-to-end speedup, "
                         f"{paper['source']}, {name} at n = {paper['n']} "
                         f"({paper['attention'].replace('_', '-')}); the paper's hardware and "
                         f"full-depth model, not this run's.")
    if any(row.get("input") == "frames" for row in rows):
        notes.append("note: audio rows: input = log-mel frames (10 ms hop), n = encoder tokens "
                     "after the 4x conv subsampling; bound+input adds the subsampling "
                     "convolutions, which both models run, to the FLOP bound.")
    elif any(row.get("input") == "patches" for row in rows):
        notes.append("note: bound+input adds the patch projection, which both models run, to "
                     "the FLOP bound.")
    return "\n".join(notes)


def _fmt_bytes(x) -> str:
    if x is None:
        return "n/a"
    return f"{x / 1024:.1f} KiB" if x < 1024 ** 2 else f"{x / 1024 ** 2:.2f} MiB"


def format_soft_topk_table(soft: dict) -> str:
    """The soft top-k micro-benchmark (`result["soft_topk"]`) as text."""
    lines = ["soft top-k gradients (coordinate descent): implicit vs unrolled",
             f"  {'n':>5} {'k':>5} {'T':>3}  {'fwd ms':>8} {'implicit ms':>11} "
             f"{'unrolled ms':>11}  {'soft top-k temp impl / unrolled':>33}  "
             f"{'router temp impl / unrolled':>29}"]
    for g in soft["gradients"]:
        ratio = lambda x: "n/a" if x is None else f"{x:.3f}"
        lines.append(
            f"  {g['n']:>5} {g['k']:>5} {g['num_iters']:>3}  {g['forward_seconds'] * 1e3:>8.3f} "
            f"{g['implicit_grad_seconds'] * 1e3:>11.3f} {g['unrolled_grad_seconds'] * 1e3:>11.3f}"
            f"  {_fmt_bytes(g['soft_topk_implicit_temp_bytes']):>10} / "
            f"{_fmt_bytes(g['soft_topk_unrolled_temp_bytes']):>10} = "
            f"{ratio(g['soft_topk_memory_ratio']):>5}"
            f"  {_fmt_bytes(g['router_implicit_temp_bytes']):>9} / "
            f"{_fmt_bytes(g['router_unrolled_temp_bytes']):>9} = "
            f"{ratio(g['router_memory_ratio']):>5}")
    if soft["router_share"]:
        lines += ["", "router (score + soft top-k + top-k) as a share of one CoDA layer's forward",
                  f"  {'preset':<16} {'n':>5} {'r':>4} {'k':>5}  {'layer ms':>9} "
                  f"{'router ms':>9} {'topk ms':>8}  {'router %':>8} {'topk %':>7}"]
        for s in soft["router_share"]:
            lines.append(
                f"  {s['preset']:<16} {s['n']:>5} {s['r']:>4g} {s['k']:>5}  "
                f"{s['layer_seconds'] * 1e3:>9.2f} {s['router_seconds'] * 1e3:>9.3f} "
                f"{s['soft_topk_seconds'] * 1e3:>8.3f}  {100 * s['router_share']:>7.2f}% "
                f"{100 * s['soft_topk_share']:>6.2f}%")
    return "\n".join(lines)


def write_json(result: dict, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return path


def plot_speedups(result: dict, path: str) -> str | None:
    """Measured (solid) and FLOP-bound (dashed) speedup vs r, one colour per n (the paper's
    speedups as stars), one panel per (preset, mode, attention). Returns the path, or None when
    there are no rows or no matplotlib. Reads schema 1 results too."""
    rows = result["rows"]
    if not rows:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    panels = sorted({(r["preset"], r["mode"], r["attention"]) for r in rows},
                    key=lambda p: (p[0], MODES.index(p[1]), p[2]))
    lengths = sorted({r["n"] for r in rows})
    label = {(r["preset"], r["n"]): _length_label(r) for r in rows}
    cols = min(len(panels), 2)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.0 * cols, 4.2 * nrows), squeeze=False)
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(lengths)))
    for ax, (preset, mode, attention) in zip(axes.flat, panels):
        for color, n in zip(colors, lengths):
            sel = sorted((r for r in rows if (r["preset"], r["mode"], r["attention"], r["n"])
                          == (preset, mode, attention, n)), key=lambda r: r["r"])
            if not sel:
                continue
            rs = [r["r"] for r in sel]
            ax.plot(rs, [r["measured_speedup"] for r in sel], "o-", color=color,
                    label=label[(preset, n)])
            ax.plot(rs, [r["flop_speedup"] for r in sel], "--", color=color, alpha=0.7)
            paper = [(r["r"], r["paper_speedup"]) for r in sel
                     if r.get("paper_speedup") is not None]
            if paper:
                ax.plot(*zip(*paper), "*", color=color, markersize=11, markeredgecolor="black",
                        markeredgewidth=0.5, label=f"{label[(preset, n)]}: paper")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        reductions = sorted({r["r"] for r in rows if (r["preset"], r["mode"], r["attention"])
                             == (preset, mode, attention)})
        ax.set_xticks(reductions)
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_formatter(plain)
        ax.set_xlabel("reduction r")
        ax.set_ylabel("speedup over the Parallel Adapter")
        some = next(r for r in rows if (r["preset"], r["mode"], r["attention"])
                    == (preset, mode, attention))
        depth = ""
        full = some.get("preset_num_encoder_layers")
        if full is not None and some.get("num_encoder_layers") != full:
            depth = f" ({some['num_encoder_layers']} of {full} enc. layers)"
        ax.set_title(f"{preset} {mode} {attention.replace('_', '-')}{depth}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="solid: measured, dashed: FLOP bound"
                  + (", stars: paper" if any(r.get("paper_speedup") is not None for r in rows)
                     else ""), title_fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    device = result.get("device", {})
    fig.suptitle(f"CoDA vs Parallel Adapter ({device.get('platform', '?')}, "
                 f"{result['settings'].get('statistic', 'median')} over "
                 f"{result['settings'].get('repeats', '?')} rounds)", fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
