"""python -m coda_flax.t5x CHECKPOINT_DIR OUTPUT_DIR: a coda_flax checkpoint -> a T5X one.
python -m coda_flax.t5x --gin-dir: prints the folder of the gin files (T5X's --gin_search_paths).

CHECKPOINT_DIR is the project's checkpoint format (`coda convert` output, or a training
run's MODEL_DIR/final): config.json + params/. OUTPUT_DIR/checkpoint_{step} is a T5X
checkpoint holding the parameters (no optimizer state) that T5X's train.py can start from:

    coda convert --t5x /ckpts/t5_1_1_base/checkpoint_1000000 \\
        --preset t5_1_1_base --reduction 3 --output /tmp/coda_base
    python -m coda_flax.t5x /tmp/coda_base /tmp/coda_base_t5x
    python -m t5x.train --gin_search_paths=$(python -m coda_flax.t5x --gin-dir) \\
        --gin_file=models/t5_1_1_base.gin --gin_file=variants/coda_k_to_all.gin \\
        --gin_file=t5x/runs/finetune.gin --gin_file=t5x/tasks/rte.gin ... \\
        --gin.INITIAL_CHECKPOINT_PATH="'/tmp/coda_base_t5x/checkpoint_0'"

Converting needs T5X installed (coda_flax.t5x.save_t5x_checkpoint); --gin-dir does not.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m coda_flax.t5x", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?",
                        help="coda_flax checkpoint directory (config.json + params/)")
    parser.add_argument("output", nargs="?", help="directory for the T5X checkpoint_{step}")
    parser.add_argument("--gin-dir", action="store_true",
                        help="print the folder of the gin files (models/, variants/, t5x/: "
                             "the same as `python -m coda_flax.train --gin-dir`) for T5X's "
                             "--gin_search_paths, and exit")
    parser.add_argument("--step", type=int, default=0, help="step recorded in the checkpoint")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="dtype the parameters are saved in")
    args = parser.parse_args(argv)
    if args.gin_dir:
        from coda_flax.t5x import GIN_DIR
        print(GIN_DIR)
        return 0
    if args.checkpoint is None or args.output is None:
        parser.error("CHECKPOINT_DIR and OUTPUT_DIR are required (or --gin-dir)")

    from coda_flax.checkpoints.native import load_checkpoint
    try:
        from coda_flax.t5x import save_t5x_checkpoint
        config, params = load_checkpoint(args.checkpoint)
        path = save_t5x_checkpoint(params, config, args.output, step=args.step,
                                   dtype=args.dtype)
    except (ImportError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"python -m coda_flax.t5x: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote T5X checkpoint {path} ({'dense' if config.coda is None else 'CoDA'} model); start "
          f"t5x.train from it with --gin_file=t5x/runs/finetune.gin (or pretrain.gin) "
          f"--gin.INITIAL_CHECKPOINT_PATH=\"'{path}'\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
