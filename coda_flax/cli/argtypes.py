"""argparse types and checks shared by the `coda` subcommands (coda_flax/cli/*.py).

Each parses one command-line value and, on bad input, raises argparse.ArgumentTypeError with a
message that names what was expected; argparse turns it into `coda ...: error: ...`, exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable


def number(cast: Callable[[str], float], ok: Callable[[float], bool], expected: str,
           not_a_number: str | None = None) -> Callable[[str], float]:
    """cast(text), which must satisfy ok(value); errors read "<expected>, got <text>"
    (`not_a_number` instead of `expected` when the text does not parse)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{not_a_number or expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{expected}, got {text}")
        return value
    return parse


def positive_int(expected: str = "expected an integer >= 1") -> Callable[[str], int]:
    return number(int, lambda v: v >= 1, expected)


def nonnegative_int(text: str) -> int:
    return number(int, lambda v: v >= 0, "expected an integer >= 0")(text)


def nonnegative_float(text: str) -> float:
    return number(float, lambda v: v >= 0, "expected a number >= 0")(text)   # rejects nan


def positive_float(text: str) -> float:
    return number(float, lambda v: 0 < v < math.inf, "expected a number > 0")(text)


def unit_float(text: str) -> float:
    return number(float, lambda v: 0 < v <= 1, "expected a number in (0, 1]")(text)


def reduction(expected: str = "reduction must be >= 1", finite: bool = False):
    """r >= 1 (an int when it is whole); finite=True also rejects inf."""
    check = number(float, lambda r: r >= 1 and not (finite and math.isinf(r)), expected,
                   "reduction must be a number >= 1")

    def parse(text: str):
        r = check(text)
        return int(r) if r.is_integer() else r
    return parse


DATA_DIR_HELP = ("data cache, an existing directory (default $CODA_DATA_DIR or "
                 "~/.cache/coda_flax/data, created when missing)")


def missing_data_dir(command: str, data_dir: str | None) -> bool:
    """A --data-dir the user names must exist: a typo must not create a tree at that path (the
    default cache is created on demand). Prints the one-line error when it does not."""
    if data_dir is None or os.path.isdir(data_dir):
        return False
    print(f"coda {command}: error: --data-dir {data_dir} is not an existing directory; create "
          f"it first (mkdir -p {data_dir}) or leave --data-dir out to use the cache.",
          file=sys.stderr)
    return True
