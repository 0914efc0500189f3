"""Regenerate the parameter-tree golden files (tests/golden/param_tree_<preset>_<variant>.json).

    python scripts/update_golden.py                  # every preset x variant
    python scripts/update_golden.py t5_1_1_small     # some presets
    python scripts/update_golden.py --check          # write nothing; exit 1 if any file is stale

Run it only for a deliberate change of the parameter tree (a rename, a new parameter, a new
preset), then review `git diff tests/golden/`: every changed line is a parameter whose checkpoint
or adapter-file entry changes. Trees are traced with jax.eval_shape, so no model is allocated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import golden_tree  # noqa: E402  (tests/golden_tree.py: the same code the test compares with)


def main(argv: list[str] | None = None) -> int:
    from coda_flax.config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", metavar="PRESET",
                        help=f"presets to regenerate (default: all of {sorted(PRESETS)})")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; list stale or missing files and exit 1 if any")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.presets) - set(PRESETS))
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    presets = args.presets or list(PRESETS)

    golden_tree.GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    stale = []
    for preset in presets:
        for variant in golden_tree.VARIANTS:
            path = golden_tree.golden_path(preset, variant)
            text = golden_tree.render(preset, variant, golden_tree.live_tree(preset, variant))
            old = path.read_text() if path.exists() else None
            if old == text:
                continue
            stale.append(path)
            status = "new" if old is None else "changed"
            if args.check:
                print(f"stale ({status}): {path}")
            else:
                path.write_text(text)
                print(f"wrote ({status}): {path}")
    if not args.presets:   # files of presets that no longer exist
        expected = {golden_tree.golden_path(p, v) for p in PRESETS for v in golden_tree.VARIANTS}
        for path in sorted(golden_tree.GOLDEN_DIR.glob("param_tree_*.json")):
            if path not in expected:
                stale.append(path)
                if args.check:
                    print(f"stale (no such preset/variant): {path}")
                else:
                    path.unlink()
                    print(f"removed: {path}")
    if not stale:
        print("golden files up to date.")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
