"""`coda visualize`: per-layer routing heatmaps of a CoDA encoder (paper Figure 7), for text,
images and audio.

    coda visualize --checkpoint DIR --text "..." [--vocab PATH] [--output DIR] [--layers all]
    coda visualize --checkpoint DIR --image PATH [--max-patches N]       (patch models)
    coda visualize --checkpoint DIR --audio PATH [--max-seconds S]       (speech models)
    coda visualize --random-init --preset NAME [--reduction R] [--length N] [--output DIR]

Runs the encoder on the text (tokenized with the SentencePiece vocabulary: --vocab, else
$CODA_VOCAB; EOS appended as in the seqio tasks) and writes into --output:

    heatmap.png        layers x tokens, routed (red) or not (adapter only)
    heatmap_lam.png    the same with the router's soft top-k weights lam
    highlights.html    the text, tokens coloured by how many layers route them (hover: layers)
    highlights.png     the same rendered with matplotlib
    decisions.json     per layer: routed indices, weights m, lam, 0/1 mask; statistics

The encoder length n is the text's own token count (k = ceil(n / r) routed per layer); --length N
pads to N instead (padding is never routed while real tokens are left). Without --text a random
token sequence of --length tokens (default 64) is used and tokens are shown as ids.
--random-init builds a freshly initialised model from --preset (plus "tiny", and
"tiny_vision" / "tiny_speech" for small patch / audio models) for a quick look without a
checkpoint; --num-layers L keeps only L encoder layers of it (pix2struct has 18 of width 1536).

Image models (pix2struct): --image PATH is cut into at most --max-patches Pix2Struct patches
(coda_flax.frontends.patches.patchify; default 4096, the paper's n); without --image a synthetic
document page (dark word blocks on white) is used. Writes routing_image.png / routing_image_lam.png
(per-layer routing over the page, placed by the patches' row / column ids), heatmap.png (layers x
patches), ink_share.png (per layer: the share of routed patches holding ink vs the share of ink
patches on the page; ink = pixels darker than --ink-threshold,
coda_flax.frontends.patches.patch_ink) and decisions.json (+ grid, ink statistics).

Speech models (speech_*): --audio PATH (wav, 16-bit PCM; flac / ogg with soundfile) becomes 80
log-mel frames every 10 ms (coda_flax.frontends.audio.frame_features), routed over the ceil(T / 4)
encoder frames; without --audio a synthetic utterance (voiced bursts and pauses) is used.
Writes routing_audio.png / routing_audio_lam.png (log-mel spectrogram over one strip per layer
on a common time axis), heatmap.png (layers x encoder frames) and decisions.json.
`add_visualize_parser` registers the subcommand; `visualize_main` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from coda_flax.analysis.synthetic import (DEFAULT_RANDOM_SECONDS, TINY_PRESETS,
                                          random_init_params, synthetic_page,
                                          synthetic_utterance, tiny_model_config)
from coda_flax.cli import argtypes
from coda_flax.config import ATTENTION_VARIANTS, PRESETS, CodaConfig, ModelConfig
from coda_flax.routing import ROUTERS

DEFAULT_MAX_LENGTH = 512        # T5's and the paper's text encoder length
DEFAULT_RANDOM_LENGTH = 64
DEFAULT_MAX_PATCHES = 4096      # the paper's vision models (Pix2Struct, n = 4096)
DEFAULT_OUTPUT = "routing_viz"
class VisualizeError(ValueError):
    """A usage or input problem, reported as `coda visualize: error: ...` with exit status 2."""


def add_visualize_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `visualize` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "visualize", help="per-layer routing heatmaps of a CoDA encoder (paper Figure 7)",
        description=__doc__.split("`add_visualize_parser`")[0].strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="DIR",
                     help="a coda_flax checkpoint directory (config.json + params/, as written "
                          "by `coda convert`)")
    src.add_argument("--random-init", action="store_true",
                     help="a randomly initialised model from --preset instead of a checkpoint")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="the encoder input text")
    text.add_argument("--text-file", metavar="PATH", help="read the input text from a file")
    text.add_argument("--image", metavar="PATH",
                      help="an image (png, jpg, ...) for a patch model (pix2struct)")
    text.add_argument("--audio", metavar="PATH",
                      help="an audio file (wav; flac / ogg with soundfile) for a speech model")
    p.add_argument("--max-patches", type=argtypes.positive_int(), default=None, metavar="N",
                   help=f"image models: patches per image (default {DEFAULT_MAX_PATCHES}, the "
                        f"paper's n; Pix2Struct keeps the aspect ratio)")
    p.add_argument("--max-seconds", type=argtypes.positive_float, default=None, metavar="S",
                   help="speech models: use the first S seconds of --audio (default: all), or "
                        f"the length of the synthetic utterance (default "
                        f"{DEFAULT_RANDOM_SECONDS:g})")
    p.add_argument("--ink-threshold", type=argtypes.unit_float, default=0.5, metavar="T",
                   help="image models: a pixel is ink when its grey level (0 black .. 1 white) "
                        "is below T (default 0.5)")
    p.add_argument("--vocab", metavar="PATH",
                   help="SentencePiece model for --text (default: $CODA_VOCAB)")
    p.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                   help=f"output directory (default ./{DEFAULT_OUTPUT})")
    p.add_argument("--layers", default="all",
                   help="encoder layers to show: all (default) or a list like 0,3,6-11")
    p.add_argument("--length", type=argtypes.positive_int(), metavar="N",
                   help="encoder length: pad the text to N tokens (default: the text's own "
                        f"length, at most {DEFAULT_MAX_LENGTH}); without --text the length of "
                        f"the random token sequence (default {DEFAULT_RANDOM_LENGTH})")
    p.add_argument("--no-eos", action="store_true", help="do not append EOS to the text")
    p.add_argument("--preset", choices=sorted(PRESETS) + list(TINY_PRESETS), metavar="NAME",
                   help=f"model for --random-init: {', '.join(sorted(PRESETS))}, or "
                        f"{', '.join(TINY_PRESETS)}")
    p.add_argument("--num-layers", type=argtypes.positive_int(), metavar="L",
                   help="--random-init: keep only L encoder layers of the preset (e.g. 2 of "
                        "pix2struct's 18, for a quick look on a CPU)")
    p.add_argument("--reduction", type=argtypes.reduction(), metavar="R",
                   help="CoDA reduction r > 1 (--random-init default 3); with --checkpoint "
                        "overrides the checkpoint's r")
    p.add_argument("--attention", choices=ATTENTION_VARIANTS,
                   help="k_to_all / k_to_k (--random-init default k_to_all; overrides a "
                        "checkpoint's)")
    p.add_argument("--router", choices=ROUTERS, help="router for --random-init "
                   "(default soft_topk)")
    p.add_argument("--adapter-dim", type=argtypes.positive_int(), metavar="D",
                   help="adapter width for --random-init (default: the preset's, else 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of --random-init parameters and of random tokens (default 0)")
    p.add_argument("--max-token-labels", type=argtypes.positive_int(), default=64, metavar="N",
                   help="label heatmap columns with the tokens when n <= N, else with "
                        "thinned positions (default 64)")
    p.set_defaults(func=visualize_main)
    return p


# ----------------------------------------------------------------------------------- helpers


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """'all' | '0,3,6-11' -> sorted unique layer indices, checked against num_layers."""
    spec = (spec or "all").strip().lower()
    if spec == "all":
        return list(range(num_layers))
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                chosen.update(range(lo, hi + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise VisualizeError(f"--layers: cannot parse {part!r} in {spec!r}; use all or a "
                                 f"list like 0,3,6-11.") from None
    bad = sorted(i for i in chosen if not 0 <= i < num_layers)
    if bad:
        raise VisualizeError(f"--layers: layer(s) {bad} out of range; the encoder has "
                             f"{num_layers} layers (0..{num_layers - 1}).")
    return sorted(chosen)


def _random_init_config(args) -> ModelConfig:
    if not args.preset:
        raise VisualizeError("--random-init needs --preset NAME (e.g. t5_1_1_small, "
                             "paper_text_base, tiny).")
    fields = dict(reduction=3 if args.reduction is None else args.reduction,
                  attention=args.attention or "k_to_all", router=args.router or "soft_topk")
    if args.adapter_dim is not None:
        fields["adapter_dim"] = args.adapter_dim
    depth = {} if args.num_layers is None else {"num_encoder_layers": args.num_layers}
    if args.preset in TINY_PRESETS:
        fields.setdefault("adapter_dim", 4)
        return tiny_model_config(args.preset, CodaConfig(**fields), **depth)
    return ModelConfig.from_preset(args.preset, coda=CodaConfig(**fields), **depth)


def _model_config(args) -> ModelConfig | None:
    """The --random-init config (None for --checkpoint, whose config comes with it)."""
    if args.random_init:
        return _random_init_config(args)
    for flag in ("preset", "router", "adapter_dim", "num_layers"):
        if getattr(args, flag) is not None:
            raise VisualizeError(f"--{flag.replace('_', '-')} applies to --random-init only; a "
                                 f"checkpoint brings its own model config.")
    return None


def _load_checkpoint(args):
    from coda_flax.checkpoints.native import load_checkpoint

    config, params = load_checkpoint(args.checkpoint)
    if config.coda is not None:
        changes = {}
        if args.reduction is not None:
            changes["reduction"] = args.reduction
        if args.attention is not None:
            changes["attention"] = args.attention
        if changes:
            config = config.with_coda(**changes)
    return config, params


def _piece(vocab, token_id: int) -> str:
    if token_id == 0:
        return "<pad>"
    base = getattr(vocab, "_base_vocab_size", None)
    if base is not None and token_id >= base:
        return f"<extra_id_{vocab.vocab_size - 1 - token_id}>"
    return vocab.tokenizer.id_to_piece(int(token_id))


def _tokens(args, config: ModelConfig):
    """-> (ids [n] incl. padding, token strings [n], text or None, vocabulary path or None)."""
    import numpy as np

    text = args.text
    if args.text_file:
        try:
            with open(args.text_file, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError as e:
            raise VisualizeError(f"--text-file: cannot read {args.text_file}: {e}") from None
    vocab = None
    if text is not None or args.vocab:
        from coda_flax.tasks.vocab import VOCAB_ENV_VAR, get_vocabulary
        path = args.vocab or os.environ.get(VOCAB_ENV_VAR)
        if not path:
            raise VisualizeError(
                f"--text needs a SentencePiece vocabulary: pass --vocab PATH (the model's "
                f"sentencepiece.model) or set ${VOCAB_ENV_VAR}; or drop --text to look at "
                f"random token ids.")
        if "://" not in path and not os.path.isfile(path):      # before importing seqio (slow)
            where = "--vocab" if args.vocab else f"${VOCAB_ENV_VAR}"
            raise VisualizeError(f"vocabulary not found: {where} = {path} is not a file "
                                 f"(expected a SentencePiece .model).")
        try:
            vocab = get_vocabulary(args.vocab)
        except FileNotFoundError as e:
            raise VisualizeError(f"vocabulary not found: {e}") from None
    if text is None:
        n = args.length or DEFAULT_RANDOM_LENGTH
        rng = np.random.default_rng(args.seed)
        ids = rng.integers(3, max(4, min(config.vocab_size, 32000)), size=n).astype(np.int32)
        labels = [_piece(vocab, i) for i in ids] if vocab is not None else [str(i) for i in ids]
        return ids, labels, None, getattr(vocab, "sentencepiece_model_file", None)
    if not text.strip():
        raise VisualizeError("--text is empty.")
    ids = [int(i) for i in vocab.encode(text)]
    if not args.no_eos:
        ids.append(int(vocab.eos_id))
    limit = args.length or DEFAULT_MAX_LENGTH
    if len(ids) > limit:
        where = (f"--length {args.length}" if args.length else
                 f"the model's input length {DEFAULT_MAX_LENGTH} (T5's and the paper's; pass "
                 f"--length N to go beyond)")
        raise VisualizeError(f"the text is {len(ids)} tokens{'' if args.no_eos else ' with EOS'}"
                             f", longer than {where}; shorten the text.")
    too_big = [i for i in ids if i >= config.vocab_size]
    if too_big:
        raise VisualizeError(f"the vocabulary produced token id {max(too_big)} but the model has "
                             f"vocab_size {config.vocab_size}: is --vocab the model's "
                             f"vocabulary?")
    n = args.length or len(ids)
    padded = np.zeros(n, np.int32)
    padded[: len(ids)] = ids
    return padded, [_piece(vocab, i) for i in padded], text, vocab.sentencepiece_model_file


def dump_json(data) -> str:
    """Indented JSON with every innermost list (ids, tokens, lam, ...) on one line."""
    text = json.dumps(data, indent=1, ensure_ascii=False)
    # JSON strings never hold raw newlines, so newline + indentation is always formatting.
    return re.sub(r"\[[^\[\]{}]*\]", lambda m: re.sub(r"\n\s*", " ", m.group(0))
                  .replace("[ ", "[").replace(" ]", "]"), text)


def _short(labels, limit=110) -> str:
    out = " ".join(labels)
    return out if len(out) <= limit else out[: limit - 3] + "..."


# --------------------------------------------------------------------------------------- main


def visualize_main(args) -> int:
    """Runs `coda visualize`; returns the exit status (2 on a usage, model or input error)."""
    try:
        return _visualize(args)
    except (VisualizeError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"coda visualize: error: {e}", file=sys.stderr)
        return 2


def _visualize(args) -> int:
    import numpy as np

    from coda_flax import viz
    from coda_flax.analysis import routing_stats
    from coda_flax.checkpoints.io import config_to_dict

    if args.checkpoint is not None and not os.path.isdir(args.checkpoint):
        raise VisualizeError(f"checkpoint directory {args.checkpoint} not found (expected "
                             f"config.json + params/ as written by `coda convert`); use "
                             f"--random-init --preset NAME for a model without a checkpoint.")
    # Everything cheap is checked before the (compiling) parameter init.
    config = _model_config(args)
    params = None
    if config is None:
        config, params = _load_checkpoint(args)
        source = {"checkpoint": os.path.abspath(args.checkpoint)}
    else:
        source = {"random_init": {"preset": args.preset, "seed": args.seed}}
    routing_stats.check_routed(config)
    layers = parse_layers(args.layers, config.num_encoder_layers)
    _check_input_flags(args, config)
    if config.encoder_input == "patches":
        return _visualize_image(args, config, params, source, layers)
    if config.encoder_input == "frames":
        return _visualize_audio(args, config, params, source, layers)
    ids, labels, text, vocab_path = _tokens(args, config)
    if params is None:
        params = random_init_params(config, args.seed)
    decisions = routing_stats.routing_decisions(config, params, ids[None])
    n, k = decisions["n"], decisions["k"]
    valid = decisions["valid"][0]
    num_real = int(valid.sum())
    selected = decisions["selected"][layers, 0]
    lam = decisions["lam"][layers, 0]
    r = config.coda.reduction
    if k >= num_real and num_real < n:
        print(f"note: k = ceil({n} / {r}) = {k} >= the {num_real} real tokens, so every layer "
              f"routes every real token (the other {k - num_real} slots fall on padding with "
              f"weight 0); drop --length to route within the text.", file=sys.stderr)

    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    name = ("random init " + str(args.preset) if args.random_init
            else os.path.basename(os.path.normpath(args.checkpoint)))
    head = f"{name}: r = {r}, k = {k} of n = {n}"
    files = {
        "heatmap": viz.plot_routing_heatmap(
            selected, labels, os.path.join(out, "heatmap.png"), layer_labels=layers,
            valid=valid, max_token_labels=args.max_token_labels,
            title=f"Routed tokens per encoder layer ({head})"),
        "heatmap_lam": viz.plot_routing_heatmap(
            lam, labels, os.path.join(out, "heatmap_lam.png"), layer_labels=layers,
            valid=valid, kind="lam", selected=selected, max_token_labels=args.max_token_labels,
            title=f"Router $\\lambda$ per encoder layer ({head})"),
    }
    hl = viz.render_token_highlights(
        labels, selected, os.path.join(out, "highlights"), valid=valid, layer_labels=layers,
        title=f"Tokens coloured by the number of layers routing them ({head})")
    files["highlights_html"], files["highlights_png"] = hl["html"], hl["png"]
    record = {"source": source, "text": text, "vocab": vocab_path,
              "token_ids": np.asarray(ids).tolist(), "tokens": labels,
              **routing_stats.decisions_to_json(decisions, 0, layers),
              "model_config": config_to_dict(config)}
    files["decisions"] = os.path.join(out, "decisions.json")
    with open(files["decisions"], "w", encoding="utf-8") as f:
        f.write(dump_json(record) + "\n")

    stats = record["statistics"]
    print(f"{head}; {num_real} real tokens, {len(layers)} of {config.num_encoder_layers} "
          f"layers shown")
    for i, row in zip(layers, selected):
        print(f"  layer {i:>2}: {_short([labels[j] for j in np.flatnonzero(row)])}")
    adj = stats["adjacent_jaccard"]
    print(f"coverage {stats['coverage']:.3f} of real tokens routed by some layer; "
          f"{stats['never_routed']} never, {stats['always_routed']} always; "
          f"mean adjacent-layer Jaccard {np.mean(adj) if adj else float('nan'):.3f}; "
          f"padding share {stats['padding_share']:.3f}")
    for key, path in files.items():
        print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------ images / audio

_INPUT_FLAGS = {"tokens": ("--text / --text-file", "a text model"),
                "patches": ("--image", "an image (patch) model such as pix2struct"),
                "frames": ("--audio", "a speech model such as speech_base")}


def _check_input_flags(args, config: ModelConfig) -> None:
    """The input flags must fit what the model reads."""
    kind = config.encoder_input
    given = {"tokens": args.text is not None or args.text_file is not None,
             "patches": args.image is not None, "frames": args.audio is not None}
    for other, used in given.items():
        if used and other != kind:
            flag, what = _INPUT_FLAGS[other]
            raise VisualizeError(f"{flag} needs {what}, but this model reads {kind} "
                                 f"(ModelConfig.encoder_input={kind!r}); use "
                                 f"{_INPUT_FLAGS[kind][0]}.")
    if kind != "tokens":
        for flag in ("vocab", "length"):
            if getattr(args, flag) is not None:
                raise VisualizeError(f"--{flag} applies to text models; this model reads "
                                     f"{kind} ({'--max-patches' if kind == 'patches' else '--max-seconds'}"
                                     f" sets the input size).")
        if args.no_eos:
            raise VisualizeError("--no-eos applies to text models.")
    if kind != "patches" and args.max_patches is not None:
        raise VisualizeError("--max-patches applies to image (patch) models.")
    if kind != "frames" and args.max_seconds is not None:
        raise VisualizeError("--max-seconds applies to speech models.")


def _read_image(path: str, channels: int):
    import numpy as np

    if not os.path.isfile(path):
        raise VisualizeError(f"--image: {path} not found.")
    try:
        from PIL import Image
    except ImportError as e:
        raise VisualizeError("--image needs Pillow (pip install pillow).") from e
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            return np.asarray(img, np.uint8)
    except OSError as e:
        raise VisualizeError(f"--image: cannot read {path} as an image: {e}") from None


def _patch_inputs(args, config: ModelConfig):
    """-> (patches [n, 2 + p*p*C], ink mask [n] bool, image or None, description)."""
    try:
        from coda_flax.frontends import patches as patching
    except ImportError:
        raise VisualizeError("image inputs need coda_flax.frontends.patches (patchify), which this "
                             "installation lacks.") from None
    max_patches = args.max_patches or DEFAULT_MAX_PATCHES
    if args.image is not None:
        image, what = _read_image(args.image, config.num_channels), args.image
    else:
        image, what = synthetic_page(seed=args.seed), "synthetic page"
    p = config.patch_size
    patches = patching.patchify(image, max_patches, p, channels=config.num_channels)
    rows, cols = patching.patch_grid(patches)
    if max(rows, cols) >= config.max_patch_positions:
        raise VisualizeError(f"the {rows} x {cols} patch grid exceeds the model's "
                             f"max_patch_positions {config.max_patch_positions}; lower "
                             f"--max-patches.")
    ink = patching.patch_ink(image, max_patches, p, threshold=args.ink_threshold)
    return patches, ink, image, what


def _visualize_image(args, config: ModelConfig, params, source, layers) -> int:
    from coda_flax import viz
    from coda_flax.analysis import patch_grid, routing_stats
    from coda_flax.checkpoints.io import config_to_dict

    patches, ink, image, what = _patch_inputs(args, config)
    if params is None:
        params = random_init_params(config, args.seed)
    decisions = routing_stats.routing_decisions(config, params, patches)
    n, k, r = decisions["n"], decisions["k"], config.coda.reduction
    valid = decisions["valid"][0]
    selected = decisions["selected"][layers, 0]
    lam = decisions["lam"][layers, 0]
    _, _, grid = patch_grid.patch_grid_positions(patches)
    stats = routing_stats.ink_share(selected, ink, valid)

    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    head = (f"{_name(args)}: r = {r}, k = {k} of n = {n} patches "
            f"({grid[0]} x {grid[1]} grid, {int(valid.sum())} real)")
    p = config.patch_size
    files = {
        "routing_image": viz.plot_image_routing(
            selected, patches, os.path.join(out, "routing_image.png"), patch_size=p,
            layer_labels=layers, title=f"Routed patches per encoder layer\n{head}"),
        "routing_image_lam": viz.plot_image_routing(
            lam, patches, os.path.join(out, "routing_image_lam.png"), patch_size=p,
            layer_labels=layers, title=f"Router $\\lambda$ per encoder layer\n{head}"),
        "heatmap": viz.plot_routing_heatmap(
            selected, None, os.path.join(out, "heatmap.png"), layer_labels=layers,
            valid=valid, title=f"Routed patches (row-major order) per layer\n{head}"),
        "ink_share": viz.plot_ink_share(
            stats, os.path.join(out, "ink_share.png"), layer_labels=layers,
            title=f"Share of routed patches with ink vs the page\n{head}"),
    }
    record = {"source": source, "image": what, "max_patches": int(patches.shape[0]),
              "patch_size": p, "grid": list(grid),
              "patch_ids": patches[:, :2].astype(int).tolist(),
              "ink": {"threshold": args.ink_threshold, "mask": ink.astype(int).tolist(),
                      **routing_stats.to_jsonable(stats)},
              **routing_stats.decisions_to_json(decisions, 0, layers),
              "model_config": config_to_dict(config)}
    files["decisions"] = _write_record(out, record)
    print(head + f"; {len(layers)} of {config.num_encoder_layers} layers shown")
    print(f"ink: {stats['ink_patches']} of {stats['real_patches']} patches "
          f"({stats['page_ink_share']:.3f} of the page; threshold {args.ink_threshold:g})")
    for i, row, share, cover in zip(layers, selected, stats["routed_ink_share"],
                                    stats["ink_coverage"]):
        print(f"  layer {i:>2}: {int(row.sum())} routed, {share:.3f} of them with ink "
              f"(page {stats['page_ink_share']:.3f}), {cover:.3f} of the ink patches routed")
    _print_files(files)
    return 0


def _frame_inputs(args, config: ModelConfig):
    """-> (frames [T, 1 + mel], description, seconds)."""
    try:
        from coda_flax.frontends import audio
    except ImportError:
        raise VisualizeError("audio inputs need coda_flax.frontends.audio (frame_features), "
                             "which this installation lacks.") from None
    if args.audio is not None:
        try:
            waveform = audio.load_waveform(args.audio, audio.SAMPLE_RATE)
        except (OSError, ValueError) as e:
            raise VisualizeError(f"--audio: cannot read {args.audio}: {e}") from None
        what = args.audio
        if args.max_seconds is not None:
            waveform = waveform[:int(round(args.max_seconds * audio.SAMPLE_RATE))]
    else:
        seconds = args.max_seconds or DEFAULT_RANDOM_SECONDS
        waveform, what = synthetic_utterance(seconds, audio.SAMPLE_RATE, args.seed), \
            "synthetic utterance"
    if waveform.size == 0:
        raise VisualizeError(f"--audio: {args.audio} holds no samples.")
    frames = audio.frame_features(waveform, audio.SAMPLE_RATE, num_mel_bins=config.num_mel_bins)
    return frames, what, waveform.size / audio.SAMPLE_RATE


def _visualize_audio(args, config: ModelConfig, params, source, layers) -> int:
    import numpy as np

    from coda_flax import viz
    from coda_flax.analysis import routing_stats
    from coda_flax.checkpoints.io import config_to_dict

    frames, what, seconds = _frame_inputs(args, config)
    if params is None:
        params = random_init_params(config, args.seed)
    decisions = routing_stats.routing_decisions(config, params, frames)
    n, k, r = decisions["n"], decisions["k"], config.coda.reduction
    selected = decisions["selected"][layers, 0]
    lam = decisions["lam"][layers, 0]
    T = frames.shape[0]

    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    head = (f"{_name(args)}: r = {r}, k = {k} of n = {n} encoder frames "
            f"({T} log-mel frames, {seconds:.2f} s)")
    files = {
        "routing_audio": viz.plot_audio_routing(
            selected, frames, os.path.join(out, "routing_audio.png"), layer_labels=layers,
            title=f"Routed encoder frames per layer\n{head}"),
        "routing_audio_lam": viz.plot_audio_routing(
            lam, frames, os.path.join(out, "routing_audio_lam.png"), layer_labels=layers,
            kind="lam", title=f"Router $\\lambda$ per layer\n{head}"),
        "heatmap": viz.plot_routing_heatmap(
            selected, None, os.path.join(out, "heatmap.png"), layer_labels=layers,
            valid=decisions["valid"][0], title=f"Routed encoder frames per layer\n{head}"),
    }
    record = {"source": source, "audio": what, "seconds": seconds, "num_frames": int(T),
              "frame_step_ms": 10.0, "subsampling": viz.SUBSAMPLING,
              **routing_stats.decisions_to_json(decisions, 0, layers),
              "model_config": config_to_dict(config)}
    files["decisions"] = _write_record(out, record)
    print(head + f"; {len(layers)} of {config.num_encoder_layers} layers shown")
    step = viz.SUBSAMPLING * 0.01
    for i, row in zip(layers, selected):
        times = ", ".join(f"{j * step:.2f}" for j in np.flatnonzero(row)[:12])
        more = " ..." if row.sum() > 12 else ""
        print(f"  layer {i:>2}: {int(row.sum())} routed, at s = {times}{more}")
    _print_files(files)
    return 0


def _name(args) -> str:
    return ("random init " + str(args.preset) if args.random_init
            else os.path.basename(os.path.normpath(args.checkpoint)))


def _write_record(out: str, record) -> str:
    path = os.path.join(out, "decisions.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_json(record) + "\n")
    return path


def _print_files(files) -> None:
    for path in files.values():
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """`python -m coda_flax.cli.visualize ...` (the same as `coda visualize ...`)."""
    parser = argparse.ArgumentParser(prog="coda")
    add_visualize_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["visualize", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
