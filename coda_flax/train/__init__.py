"""Training and evaluation stack: partitioning, optimizer, trainer, decoding, T5X-style model."""
