"""`coda convert`: a Hugging Face or T5X checkpoint -> the project's orbax checkpoint.

    coda convert --hf PATH --output DIR [--reduction R --attention k_to_all --router soft_topk]
    coda convert --t5x PATH [--preset t5_1_1_base] --output DIR [...]

T5 (T5 v1.0 / v1.1, FLAN-T5, mT5) and Pix2Struct (Hugging Face model_type "pix2struct", or
the original T5X layout with encoder/token_embedder/patch_projection) are told apart from the
checkpoint itself (coda_flax.checkpoints.pix2struct).

Writes DIR/config.json + DIR/params/ (read back with `load_checkpoint`), optionally already
converted to CoDA (`--reduction`; 1 = the Parallel Adapter baseline), and prints the
parameter summary. `add_convert_parser` registers the subcommand; `convert_main` runs it.
"""

from __future__ import annotations

import argparse
import sys

from coda_flax.config import ATTENTION_VARIANTS, PRESETS, CodaConfig, ModelConfig
from coda_flax.routing import ROUTERS


def add_convert_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `convert` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "convert", help="import a Hugging Face / T5X checkpoint (optionally as CoDA)",
        description=__doc__.split("`add_convert_parser`")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf", metavar="PATH", help="Hugging Face T5 or Pix2Struct directory "
                     "(config.json + model.safetensors / shards / pytorch_model.bin)")
    src.add_argument("--t5x", metavar="PATH", help="T5X checkpoint_N directory (legacy msgpack "
                     "+ zarr, or orbax)")
    p.add_argument("--output", required=True, metavar="DIR", help="output checkpoint directory")
    p.add_argument("--preset", choices=sorted(PRESETS), help="model config for --t5x (default: "
                   "inferred from the parameter shapes)")
    p.add_argument("--reduction", type=float, help="convert to CoDA with this r (1 = Parallel "
                   "Adapter); omit for the dense model")
    p.add_argument("--attention", choices=ATTENTION_VARIANTS, default="k_to_all")
    p.add_argument("--router", choices=ROUTERS, default="soft_topk")
    p.add_argument("--adapter-dim", type=int, default=None,
                   help=f"adapter width (default {CodaConfig.adapter_dim})")
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA rank on frozen projections")
    p.add_argument("--seed", type=int, default=0, help="seed for the new CoDA parameters")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    p.set_defaults(func=convert_main)
    return p


def _coda_config(args) -> CodaConfig | None:
    if args.reduction is None:
        if args.adapter_dim is not None or args.lora_rank:
            raise ValueError("--adapter-dim / --lora-rank need --reduction R (CoDA conversion).")
        return None
    adapter_dim = CodaConfig.adapter_dim if args.adapter_dim is None else args.adapter_dim
    r = int(args.reduction) if float(args.reduction).is_integer() else args.reduction
    return CodaConfig(reduction=r, attention=args.attention, router=args.router,
                      adapter_dim=adapter_dim, lora_rank=args.lora_rank)


def _load_source(args) -> tuple[ModelConfig, dict]:
    from coda_flax.checkpoints import pix2struct
    from coda_flax.checkpoints.hf import load_hf_t5
    from coda_flax.checkpoints.t5x import infer_t5x_config, read_t5x, t5x_to_params

    if args.hf:
        if args.preset:
            raise ValueError("--preset applies to --t5x only; --hf reads config.json.")
        if pix2struct.is_pix2struct_hf(args.hf):
            return pix2struct.load_hf_pix2struct(args.hf)
        return load_hf_t5(args.hf)
    config = ModelConfig.from_preset(args.preset) if args.preset else None
    raw = read_t5x(args.t5x)
    is_pix2struct = pix2struct.is_pix2struct_t5x(raw)
    if config is None:
        print("note: no --preset; config inferred from shapes (gated MLP -> gelu, "
              "relative_attention_max_distance=128)", file=sys.stderr)
        config = (pix2struct.infer_pix2struct_config if is_pix2struct else infer_t5x_config)(raw)
    convert = pix2struct.pix2struct_t5x_to_params if is_pix2struct else t5x_to_params
    return config, convert(raw, config, f"T5X checkpoint {args.t5x}")


def convert_main(args) -> int:
    """Runs `coda convert`; returns the exit status (2 on a usage or checkpoint error)."""
    from coda_flax.checkpoints.convert import dense_to_coda
    from coda_flax.checkpoints.native import save_checkpoint
    from coda_flax.checkpoints.peft import print_trainable_parameters

    try:
        coda = _coda_config(args)
        config, params = _load_source(args)
        if coda is not None:
            params = dense_to_coda(params, coda, args.seed, model_config=config)
            config = config.replace(coda=coda)
        out = save_checkpoint(args.output, params, config, overwrite=args.overwrite)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"coda convert: error: {e}", file=sys.stderr)
        return 2
    kind = "dense" if coda is None else f"CoDA r={coda.reduction} ({coda.attention}, {coda.router})"
    print(f"wrote {kind} checkpoint to {out} (config.json + params/)")
    print_trainable_parameters(params)
    return 0
