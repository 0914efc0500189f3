"""One routing report (paper Figure 7): a CoDA model and one input in; the routing decisions,
per-layer statistics, a JSON-ready record and the plots out. Text, images and audio go through
the same steps; only the input, the plots and the summary lines depend on what the encoder reads.

    inp = text_input(config, ids, vocab)        (tokenize(text, vocab) -> ids)
        | image_input(config, image, max_patches=..., ink_threshold=...)
        | audio_input(config, waveform, max_seconds=...)
    report = routing_report(config, params, inp, layers=None, source={...})
    batch_report(config, params, values [b, ...], ink=..., spans=...)   a batch's decisions
        and statistics: the ink share of pages, the evidence share of spans
        report.decisions (routing_stats.routing_decisions), report.selected / lam [layers, n],
        report.statistics, report.ink (images), report.record (decisions.json), report.notes
    files = write_report(report, out_dir, name)     plots + decisions.json
    summary_lines(report, name)                      what `coda visualize` prints

`coda visualize` (coda_flax/cli/visualize.py) parses its flags into these calls.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import numpy as np

from coda_flax.analysis import routing_stats
from coda_flax.analysis.routing_stats import check_routed

DEFAULT_MAX_LENGTH = 512        # T5's and the paper's text encoder length
DEFAULT_MAX_PATCHES = 4096      # the paper's vision models (Pix2Struct, n = 4096)
DEFAULT_RANDOM_LENGTH = 64      # random token ids when there is no text
FRAME_STEP_MS = 10.0            # one log-mel frame every 10 ms (frontends/audio.py)


@dataclasses.dataclass
class EncoderInput:
    """One example of what the encoder reads, with what describes it in the record.

    values: [n] token ids (0 = padding), [n, 2 + p*p*C] patches or [T, 1 + mel] frames.
    labels: the token strings (text models), else None.
    record: the input's fields of decisions.json (text and token ids, image and patch ids, ...).
    ink: [n] bool, the patches holding ink (image models), else None.
    """

    kind: str
    values: np.ndarray
    labels: list[str] | None
    record: dict[str, Any]
    ink: np.ndarray | None = None


@dataclasses.dataclass
class RoutingReport:
    """The routing of one input through the layers shown (`layers`)."""

    config: Any
    input: EncoderInput
    layers: list[int]
    decisions: dict[str, Any]
    selected: np.ndarray            # [len(layers), n] bool
    lam: np.ndarray                 # [len(layers), n] float32
    valid: np.ndarray               # [n] bool
    statistics: dict[str, Any]      # routing_stats.routing_statistics of the layers shown
    ink: dict[str, Any] | None      # routing_stats.ink_share (image models)
    record: dict[str, Any]          # decisions.json
    notes: list[str]                # warnings worth printing (e.g. k covers every real token)

    @property
    def n(self) -> int:
        return self.decisions["n"]

    @property
    def k(self) -> int:
        return self.decisions["k"]


# ------------------------------------------------------------------------------------- inputs


def token_piece(vocab, token_id: int) -> str:
    """The SentencePiece piece of a token id (<pad>, <extra_id_i> for the sentinels)."""
    if token_id == 0:
        return "<pad>"
    base = getattr(vocab, "_base_vocab_size", None)
    if base is not None and token_id >= base:
        return f"<extra_id_{vocab.vocab_size - 1 - token_id}>"
    return vocab.tokenizer.id_to_piece(int(token_id))


def load_vocabulary(path: str | None = None):
    """The SentencePiece vocabulary at `path` (None: $CODA_VOCAB)."""
    from coda_flax.tasks.vocab import VOCAB_ENV_VAR, get_vocabulary

    given = path
    path = path or os.environ.get(VOCAB_ENV_VAR)
    if not path:
        raise ValueError(f"text needs a SentencePiece vocabulary: pass its path (--vocab PATH, "
                         f"the model's sentencepiece.model) or set ${VOCAB_ENV_VAR}; or drop "
                         f"the text to look at random token ids.")
    if "://" not in path and not os.path.isfile(path):      # before importing seqio (slow)
        where = "--vocab" if given else f"${VOCAB_ENV_VAR}"
        raise ValueError(f"vocabulary not found: {where} = {path} is not a file (expected a "
                         f"SentencePiece .model).")
    return get_vocabulary(given)


def text_input(config, text: str | None = None, vocab=None, *, eos: bool = True,
               length: int | None = None, max_length: int = DEFAULT_MAX_LENGTH,
               seed: int = 0) -> EncoderInput:
    """A text tokenized as the seqio tasks do (EOS appended unless eos=False), padded to
    `length` (default: its own token count, at most max_length); without a text, `length`
    random ids (default 64) from `seed`. vocab: a seqio vocabulary or its path (None:
    $CODA_VOCAB when there is a text); tokens are labelled by it, else by their ids."""
    if text is not None or vocab is not None:
        vocab = load_vocabulary(vocab) if vocab is None or isinstance(vocab, str) else vocab
    if text is None:
        n = length or DEFAULT_RANDOM_LENGTH
        rng = np.random.default_rng(seed)
        padded = rng.integers(3, max(4, min(config.vocab_size, 32000)), size=n).astype(np.int32)
    else:
        if not text.strip():
            raise ValueError("the text is empty.")
        ids = [int(i) for i in vocab.encode(text)] + ([int(vocab.eos_id)] if eos else [])
        if len(ids) > (length or max_length):
            where = (f"--length {length}" if length else
                     f"the model's input length {max_length} (T5's and the paper's; pass "
                     f"--length N to go beyond)")
            raise ValueError(f"the text is {len(ids)} tokens{' with EOS' if eos else ''}, "
                             f"longer than {where}; shorten the text.")
        too_big = [i for i in ids if i >= config.vocab_size]
        if too_big:
            raise ValueError(f"the vocabulary produced token id {max(too_big)} but the model has "
                             f"vocab_size {config.vocab_size}: is --vocab the model's "
                             f"vocabulary?")
        padded = np.zeros(length or len(ids), np.int32)
        padded[: len(ids)] = ids
    labels = ([token_piece(vocab, i) for i in padded] if vocab is not None
              else [str(i) for i in padded])
    record = {"text": text, "vocab": getattr(vocab, "sentencepiece_model_file", None),
              "token_ids": padded.tolist(), "tokens": labels}
    return EncoderInput("tokens", padded, labels, record)


def _read_image(path: str, channels: int) -> np.ndarray:
    """An image file as uint8 [H, W] (channels = 1) or [H, W, 3]."""
    if not os.path.isfile(path):
        raise ValueError(f"--image: {path} not found.")
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading images needs Pillow (pip install pillow).") from e
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L" if channels == 1 else "RGB"), np.uint8)
    except OSError as e:
        raise ValueError(f"--image: cannot read {path} as an image: {e}") from None


def image_input(config, image=None, *, description: str | None = None,
                max_patches: int | None = None, ink_threshold: float = 0.5,
                seed: int = 0) -> EncoderInput:
    """An image (a file path, an [H, W(, C)] array, or None: a synthetic document page) cut
    into at most `max_patches` (default 4096) Pix2Struct patches, with the patches that hold
    ink (grey level below ink_threshold)."""
    from coda_flax.frontends.patch_grid import patch_grid_positions
    from coda_flax.analysis.synthetic import synthetic_page
    from coda_flax.frontends import patches as patching

    max_patches = max_patches or DEFAULT_MAX_PATCHES
    if image is None:
        image, description = synthetic_page(seed=seed), "synthetic page"
    elif isinstance(image, str):
        image, description = _read_image(image, config.num_channels), image
    p = config.patch_size
    patches = patching.patchify(image, max_patches, p, channels=config.num_channels)
    rows, cols = patching.patch_grid(patches)
    if max(rows, cols) >= config.max_patch_positions:
        raise ValueError(f"the {rows} x {cols} patch grid exceeds the model's "
                         f"max_patch_positions {config.max_patch_positions}; lower "
                         f"max_patches (--max-patches).")
    ink = patching.patch_ink(image, max_patches, p, threshold=ink_threshold)
    _, _, grid = patch_grid_positions(patches)
    record = {"image": description, "max_patches": int(patches.shape[0]), "patch_size": p,
              "grid": list(grid), "patch_ids": patches[:, :2].astype(int).tolist(),
              "ink": {"threshold": ink_threshold, "mask": ink.astype(int).tolist()}}
    return EncoderInput("patches", patches, None, record, ink)


def audio_input(config, waveform=None, *, description: str | None = None,
                max_seconds: float | None = None, seed: int = 0) -> EncoderInput:
    """Audio (a file path: wav, flac / ogg with soundfile; a 16 kHz waveform; or None: a
    synthetic utterance of max_seconds, default 3 s) as log-mel frames every 10 ms, cut to
    its first max_seconds."""
    from coda_flax.analysis.synthetic import DEFAULT_RANDOM_SECONDS, synthetic_utterance
    from coda_flax.frontends import audio

    rate = audio.SAMPLE_RATE
    if isinstance(waveform, str):
        description = waveform
        try:
            waveform = audio.load_waveform(description, rate)
        except (OSError, ValueError) as e:
            raise ValueError(f"--audio: cannot read {description}: {e}") from None
    if waveform is None:
        waveform = synthetic_utterance(max_seconds or DEFAULT_RANDOM_SECONDS, rate, seed)
        description = "synthetic utterance"
    elif max_seconds is not None:
        waveform = waveform[:int(round(max_seconds * rate))]
    if waveform.size == 0:
        raise ValueError(f"--audio: {description} holds no samples.")
    frames = audio.frame_features(waveform, rate, num_mel_bins=config.num_mel_bins)
    record = {"audio": description, "seconds": waveform.size / rate,
              "num_frames": int(frames.shape[0]), "frame_step_ms": FRAME_STEP_MS,
              "subsampling": _subsampling()}
    return EncoderInput("frames", frames, None, record)


def _subsampling() -> int:
    from coda_flax import viz
    return viz.SUBSAMPLING


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'all' | '0,3,6-11' -> sorted unique layer indices, checked against num_layers."""
    spec = (spec or "all").strip().lower()
    if spec == "all":
        return list(range(num_layers))
    chosen: set[int] = set()
    for part in spec.split(","):
        try:
            lo, _, hi = part.strip().partition("-")
            lo, hi = int(lo), int(hi or lo)
            if lo > hi:
                raise ValueError
        except ValueError:
            raise ValueError(f"--layers: cannot parse {part.strip()!r} in {spec!r}; use all or "
                             f"a list like 0,3,6-11.") from None
        chosen.update(range(lo, hi + 1))
    bad = sorted(i for i in chosen if not 0 <= i < num_layers)
    if bad:
        raise ValueError(f"--layers: layer(s) {bad} out of range; the encoder has "
                         f"{num_layers} layers (0..{num_layers - 1}).")
    return sorted(chosen)


# ------------------------------------------------------------------------------------ report


def routing_report(config, params, inp: EncoderInput, layers=None,
                   source: dict[str, Any] | None = None) -> RoutingReport:
    """Runs the encoder on one input and gathers what the routers decided.

    Args:
        config: a routed CoDA ModelConfig (r > 1); its encoder_input must be inp.kind.
        params: the model's parameter tree (or {"params": tree}).
        inp: from text_input / image_input / audio_input.
        layers: the encoder layers to report (default: all).
        source: where the model came from, recorded first in the record.
    """
    from coda_flax.checkpoints.io import config_to_dict

    routing_stats.check_routed(config)
    if config.encoder_input != inp.kind:
        raise ValueError(f"this input is {inp.kind} but the model reads {config.encoder_input} "
                         f"(ModelConfig.encoder_input).")
    layers = list(range(config.num_encoder_layers)) if layers is None else list(layers)
    decisions = routing_stats.routing_decisions(config, params, inp.values[None])
    valid = decisions["valid"][0]
    selected = decisions["selected"][layers, 0]
    body = routing_stats.decisions_to_json(decisions, 0, layers)
    record = {"source": source or {}, **inp.record}
    ink = None
    if inp.ink is not None:
        ink = routing_stats.ink_share(selected, inp.ink, valid)
        record["ink"] = {**record["ink"], **routing_stats.to_jsonable(ink)}
    record.update(body)
    record["model_config"] = config_to_dict(config)
    report = RoutingReport(config, inp, layers, decisions, selected,
                           decisions["lam"][layers, 0], valid, body["statistics"], ink, record,
                           [])
    num_real, n, k = int(valid.sum()), report.n, report.k
    if inp.kind == "tokens" and k >= num_real and num_real < n:
        report.notes.append(
            f"k = ceil({n} / {config.coda.reduction}) = {k} >= the {num_real} real tokens, so "
            f"every layer routes every real token (the other {k - num_real} slots fall on "
            f"padding with weight 0); drop --length to route within the text.")
    return report


def batch_report(config, params, values, *, ink=None, spans=None) -> dict:
    """The routing of a batch of encoder inputs and its statistics over the whole batch (the
    demo's evidence share, `coda compare`'s ink share).

    Args:
        config: a routed CoDA ModelConfig; params: its parameter tree.
        values: [b, n] token ids, [b, n, 2 + p*p*C] patches or [b, T, 1 + mel] frames.
        ink: [b, n] bool, the patches holding ink: "ink" = routing_stats.ink_share over every
            page's patches pooled.
        spans: (start, end) of an evidence span per row: "evidence" =
            routing_stats.evidence_share, averaged over the rows.
    Returns {"decisions": routing_stats.routing_decisions, "ink", "evidence"} (the last two,
    lists and numbers, only when asked)."""
    routing_stats.check_routed(config)
    decisions = routing_stats.routing_decisions(config, params, values)
    selected, valid = np.asarray(decisions["selected"]), np.asarray(decisions["valid"])
    out: dict[str, Any] = {"decisions": decisions}
    if ink is not None:
        out["ink"] = _lists(routing_stats.ink_share(
            selected.reshape(len(selected), -1), np.asarray(ink, bool).reshape(-1),
            valid.reshape(-1)))
    if spans is not None:
        out["evidence"] = _lists(routing_stats.evidence_share(selected, spans, valid))
    return out


def _lists(stats: dict) -> dict:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def heading(report: RoutingReport, name: str) -> str:
    """'<name>: r = .., k = .. of n = ..' and, for images and audio, what n counts."""
    r = report.config.coda.reduction
    head = f"{name}: r = {r}, k = {report.k} of n = {report.n}"
    rec = report.record
    if report.input.kind == "patches":
        head += (f" patches ({rec['grid'][0]} x {rec['grid'][1]} grid, "
                 f"{int(report.valid.sum())} real)")
    elif report.input.kind == "frames":
        head += f" encoder frames ({rec['num_frames']} log-mel frames, {rec['seconds']:.2f} s)"
    return head


def write_report(report: RoutingReport, out_dir: str, name: str, *,
                 max_token_labels: int = 64) -> dict[str, str]:
    """Writes the plots of the input's kind and decisions.json into out_dir; returns the paths."""
    out = os.path.abspath(out_dir)
    os.makedirs(out, exist_ok=True)
    files = _PLOTS[report.input.kind](report, out, heading(report, name), max_token_labels)
    files["decisions"] = os.path.join(out, "decisions.json")
    with open(files["decisions"], "w", encoding="utf-8") as f:
        f.write(dump_json(report.record) + "\n")
    return files


def _text_plots(rep: RoutingReport, out: str, head: str, max_labels: int) -> dict[str, str]:
    from coda_flax import viz

    labels, layers, valid = rep.input.labels, rep.layers, rep.valid
    files = {
        "heatmap": viz.plot_routing_heatmap(
            rep.selected, labels, os.path.join(out, "heatmap.png"), layer_labels=layers,
            valid=valid, max_token_labels=max_labels,
            title=f"Routed tokens per encoder layer ({head})"),
        "heatmap_lam": viz.plot_routing_heatmap(
            rep.lam, labels, os.path.join(out, "heatmap_lam.png"), layer_labels=layers,
            valid=valid, kind="lam", selected=rep.selected, max_token_labels=max_labels,
            title=f"Router $\\lambda$ per encoder layer ({head})")}
    hl = viz.render_token_highlights(
        labels, rep.selected, os.path.join(out, "highlights"), valid=valid, layer_labels=layers,
        title=f"Tokens coloured by the number of layers routing them ({head})")
    files["highlights_html"], files["highlights_png"] = hl["html"], hl["png"]
    return files


def _image_plots(rep: RoutingReport, out: str, head: str, max_labels: int) -> dict[str, str]:
    from coda_flax import viz

    patches, p, layers = rep.input.values, rep.config.patch_size, rep.layers
    return {
        "routing_image": viz.plot_image_routing(
            rep.selected, patches, os.path.join(out, "routing_image.png"), patch_size=p,
            layer_labels=layers, title=f"Routed patches per encoder layer\n{head}"),
        "routing_image_lam": viz.plot_image_routing(
            rep.lam, patches, os.path.join(out, "routing_image_lam.png"), patch_size=p,
            layer_labels=layers, title=f"Router $\\lambda$ per encoder layer\n{head}"),
        "heatmap": viz.plot_routing_heatmap(
            rep.selected, None, os.path.join(out, "heatmap.png"), layer_labels=layers,
            valid=rep.valid, title=f"Routed patches (row-major order) per layer\n{head}"),
        "ink_share": viz.plot_ink_share(
            rep.ink, os.path.join(out, "ink_share.png"), layer_labels=layers,
            title=f"Share of routed patches with ink vs the page\n{head}")}


def _audio_plots(rep: RoutingReport, out: str, head: str, max_labels: int) -> dict[str, str]:
    from coda_flax import viz

    frames, layers = rep.input.values, rep.layers
    return {
        "routing_audio": viz.plot_audio_routing(
            rep.selected, frames, os.path.join(out, "routing_audio.png"), layer_labels=layers,
            title=f"Routed encoder frames per layer\n{head}"),
        "routing_audio_lam": viz.plot_audio_routing(
            rep.lam, frames, os.path.join(out, "routing_audio_lam.png"), layer_labels=layers,
            kind="lam", title=f"Router $\\lambda$ per layer\n{head}"),
        "heatmap": viz.plot_routing_heatmap(
            rep.selected, None, os.path.join(out, "heatmap.png"), layer_labels=layers,
            valid=rep.valid, title=f"Routed encoder frames per layer\n{head}")}


_PLOTS = {"tokens": _text_plots, "patches": _image_plots, "frames": _audio_plots}


# ------------------------------------------------------------------------------- summaries


def summary_lines(report: RoutingReport, name: str) -> list[str]:
    """The report in a few lines: the heading, one line per layer, the statistics."""
    shown = f"{len(report.layers)} of {report.config.num_encoder_layers} layers shown"
    head, kind = heading(report, name), report.input.kind
    if kind == "tokens":
        lines = [f"{head}; {int(report.valid.sum())} real tokens, {shown}"]
        labels = report.input.labels
        for i, row in zip(report.layers, report.selected):
            lines.append(f"  layer {i:>2}: {_short([labels[j] for j in np.flatnonzero(row)])}")
        stats, adj = report.statistics, report.statistics["adjacent_jaccard"]
        lines.append(f"coverage {stats['coverage']:.3f} of real tokens routed by some layer; "
                     f"{stats['never_routed']} never, {stats['always_routed']} always; "
                     f"mean adjacent-layer Jaccard {np.mean(adj) if adj else float('nan'):.3f}; "
                     f"padding share {stats['padding_share']:.3f}")
        return lines
    lines = [f"{head}; {shown}"]
    if kind == "patches":
        s, threshold = report.ink, report.record["ink"]["threshold"]
        lines.append(f"ink: {s['ink_patches']} of {s['real_patches']} patches "
                     f"({s['page_ink_share']:.3f} of the page; threshold {threshold:g})")
        for i, row, share, cover in zip(report.layers, report.selected, s["routed_ink_share"],
                                        s["ink_coverage"]):
            lines.append(f"  layer {i:>2}: {int(row.sum())} routed, {share:.3f} of them with ink "
                         f"(page {s['page_ink_share']:.3f}), {cover:.3f} of the ink patches "
                         f"routed")
        return lines
    step = report.record["subsampling"] * FRAME_STEP_MS / 1000
    for i, row in zip(report.layers, report.selected):
        times = ", ".join(f"{j * step:.2f}" for j in np.flatnonzero(row)[:12])
        more = " ..." if row.sum() > 12 else ""
        lines.append(f"  layer {i:>2}: {int(row.sum())} routed, at s = {times}{more}")
    return lines


def _short(labels, limit=110) -> str:
    out = " ".join(labels)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def dump_json(data) -> str:
    """Indented JSON with every innermost list (ids, tokens, lam, ...) on one line."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    # JSON strings never hold raw newlines, so newline + indentation is always formatting.
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: re.sub(r"\n\s*", " ", m.group(0))
                  .replace("[ ", "[").replace(" ]", "]"), text)
