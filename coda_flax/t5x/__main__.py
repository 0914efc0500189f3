"""python -m coda_flax.t5x CHECKPOINT_DIR OUTPUT_DIR | --gin-dir (coda_flax/cli/t5x.py)."""

import sys

from coda_flax.cli.t5x import main

if __name__ == "__main__":
    sys.exit(main())
