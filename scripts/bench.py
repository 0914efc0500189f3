#!/usr/bin/env python
"""Thin launcher for `coda bench` (coda_flax/cli/bench.py): CoDA vs Parallel Adapter speed.

    python scripts/bench.py --lengths 512 --reductions 1,3 --attention k_to_all \\
        --modes encode --num-layers 2 --output bench_out
    python scripts/bench.py --presets pix2struct --lengths 1024,2048,4096 \
        --reductions 1,8,16,32 --attention k_to_all --modes generate --num-layers 3
    python scripts/bench.py --presets speech_base --audio-seconds 10,30 --reductions 1,2,4 \
        --attention k_to_all
    python scripts/bench.py --soft-topk

Same arguments as `coda bench --help`; needs only the core install (no gin / TensorFlow).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coda_flax.cli.bench import DESCRIPTION, bench_main, configure_parser  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure_parser(parser)
    return bench_main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
