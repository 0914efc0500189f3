"""python -m coda_flax.train [train|eval|infer] --gin_file=... --gin.NAME=VALUE"""

import sys

from coda_flax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
