"""python -m coda_flax.cli ... (the same as `coda ...`)."""

import sys

from coda_flax.cli import main

if __name__ == "__main__":
    sys.exit(main())
