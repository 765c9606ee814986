"""Sums whose value does not depend on how the terms were grouped.

A float64 running sum rounds at every addition, so the same terms added in parts (shards,
the parts of a cluster) and then part by part can differ in the last bit from one sequential
run, which turns into different bias corrections and different bytes. Here a sum is kept as an
unevaluated pair hi + lo: hi is the rounded running sum and lo accumulates the exact error of
every addition (Knuth's TwoSum), about twice float64's precision. Its value, hi + lo rounded
once, is the sum of the terms correctly rounded to float64, whatever the grouping, unless the
exact sum lies within ~2^-100 of the terms' total magnitude from a rounding midpoint (a
chance of about 2^-45 per value).
"""

from __future__ import annotations

import numpy as np


class PairSum:
    """A float64 array sum kept as hi + lo (see the module docstring)."""

    __slots__ = ("hi", "lo")

    def __init__(self, hi: np.ndarray | None = None, lo: np.ndarray | None = None) -> None:
        self.hi = hi
        self.lo = lo if lo is not None or hi is None else np.zeros_like(hi)

    def add(self, terms: np.ndarray) -> None:
        terms = np.asarray(terms, dtype=np.float64)
        if self.hi is None:
            self.hi, self.lo = terms.copy(), np.zeros_like(terms)
            return
        if terms.shape != self.hi.shape:
            raise ValueError(f"a sum of shape {self.hi.shape} cannot take terms of shape {terms.shape}")
        total = self.hi + terms
        back = total - self.hi
        self.lo += (self.hi - (total - back)) + (terms - back)  # the exact rounding error of hi + terms
        self.hi = total

    def merge(self, other: "PairSum") -> None:
        if other.hi is None:
            return
        self.add(other.hi)
        self.lo += other.lo

    @property
    def value(self) -> np.ndarray | None:
        return None if self.hi is None else self.hi + self.lo

    def copy(self) -> "PairSum":
        return PairSum(None if self.hi is None else self.hi.copy(), None if self.lo is None else self.lo.copy())
