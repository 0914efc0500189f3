"""SHA-256 checksums of files and text: the one helper that downloads (coda_flax.datasets) and
checkpoint files (coda_flax.checkpoints) verify their bytes with. Standard library only."""

from __future__ import annotations

import hashlib

_BLOCK = 1 << 20


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks.

    Args:
        path: the file.
    Returns:
        the hex digest (64 lowercase hex characters).
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """The SHA-256 hex digest of `text` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


__all__ = ["sha256_file", "sha256_text"]
