"""Record files shared by the offline corpora: JSONL read / write and the hash split.

Every corpus (Shakespeare, speech, rendered pages, the needle task) stores one JSON object per
line and decides "train" / "validation" from an md5 hash of a key, so that a split never
depends on the order in which records were built. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

from coda_flax.datasets.cache import atomic_path


def split_of(key: str, validation_fraction: float = 0.1) -> str:
    """The deterministic split of a record.

    Args:
        key: what decides the split (a scene id, an utterance id, a sentence).
        validation_fraction: the share of keys that land in "validation".
    Returns:
        "validation" when the md5 hash of key, scaled to [0, 1], is below validation_fraction,
        else "train".
    """
    h = int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "validation" if h < validation_fraction else "train"


def write_jsonl(path: str, records: Iterable[dict]) -> int:
    """Writes one JSON object per line (UTF-8, through a temporary file and an atomic rename).

    Args:
        path: the .jsonl file; its directory is created.
        records: the objects.
    Returns:
        how many records were written.
    """
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: str) -> list[dict]:
    """The records of a .jsonl file (blank lines skipped); ValueError naming the file, the line
    and the column of a byte that is not UTF-8, malformed JSON or a line that is not an object."""
    records = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
                record = json.loads(line) if line.strip() else None
            except UnicodeDecodeError as e:
                raise ValueError(f"{path} line {number}: byte 0x{raw[e.start]:02x} at column "
                                 f"{e.start + 1} is not UTF-8; the file is damaged, prepare "
                                 f"it again.") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {number}: malformed JSON ({e.msg}, column "
                                 f"{e.colno}); the file is damaged, prepare it again.") from None
            if record is None:
                continue
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number}: a JSON {type(record).__name__}, not an "
                                 f"object; the file is damaged, prepare it again.")
            records.append(record)
    return records


__all__ = ["split_of", "write_jsonl", "read_jsonl"]
