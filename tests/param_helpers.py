"""Parameter-tree helpers shared by the tests."""

import jax.numpy as jnp
import numpy as np


def perturb(tree, name, seed=0, scale=0.3):
    """Random values for every parameter under a key called `name` (e.g. a trained adapter)."""
    rng = np.random.default_rng(seed)

    def walk(t, hit):
        if not isinstance(t, dict):
            return jnp.asarray(rng.normal(size=t.shape) * scale, t.dtype) if hit else t
        return {k: walk(v, hit or k == name) for k, v in t.items()}
    return walk(tree, False)
