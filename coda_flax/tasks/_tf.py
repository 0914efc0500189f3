"""TensorFlow for the input pipeline only: imported through here so that TensorFlow never takes
GPU memory from JAX (as T5X's train.py does). Set CODA_TF_USE_GPU=1 to keep TF's GPUs visible."""

import os

import tensorflow as tf

if os.environ.get("CODA_TF_USE_GPU", "0") != "1":
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # devices already initialised: leave them
        pass

__all__ = ["tf"]
