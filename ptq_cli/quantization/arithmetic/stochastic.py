"""Stochastic rounding of weights (seed 004: q = round(a·x + b), deterministic or stochastic).

    q = clamp(floor(r / S + u) + Z, qmin, qmax),    u ~ U[0, 1)

rounds up with probability frac(r / S), so E[q] = r / S + Z: unbiased, where round-to-nearest
rounds every value the same way and its errors add up coherently over a dot product. Each weight
tensor draws from its own generator, seeded by (Recipe.seed, the tensor's name): the draws do
not depend on the order tensors are visited, bias correction sees the very integers the emitter
writes, and the same seed gives a byte-identical model.
"""

from __future__ import annotations

import hashlib

import numpy as np


def weight_rng(seed: int, tensor: str) -> np.random.Generator:
    """The generator of one weight tensor: independent across tensors, fixed by (seed, name)."""
    key = int.from_bytes(hashlib.sha256(tensor.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])
