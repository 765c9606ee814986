"""Streaming observers: they see one batch at a time and never keep activations.

The histogram keeps its bins on a grid of width 2**e anchored at 0 (bin j covers
[j * 2**e, (j + 1) * 2**e)). The exponent e is a function of the running (min, max) only: the
smallest power of two for which [min, max] spans at most `bins` bins (and not so fine that bin
indices leave float32's exact integers). Growing the range only ever doubles the width, so each
old bin falls whole into one new bin and re-binning is exact. Hence the final histogram is the
exact histogram of all the data on the grid chosen by the global min/max: it does not depend on
the order of the batches, and shards merge bit for bit. The price: between bins/2 and bins bins
are in use.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ptq_cli.calibration.sums import PairSum

# x * 2**-e must stay an exact integer in float32: keep |x| / 2**e below 2**21.
_INDEX_BITS = 20


def _as_float(array: np.ndarray) -> np.ndarray:
    if array.dtype in (np.float32, np.float64):
        return array
    return array.astype(np.float32)


def batch_min_max(array: np.ndarray) -> tuple[float, float]:
    """min and max of a batch; NaN when the batch holds a NaN (numpy propagates it)."""
    return float(np.min(array)), float(np.max(array))


class MinMax:
    """Absolute min and max over everything seen; merges bit for bit."""

    kind = "minmax"

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0

    def update(self, array: np.ndarray, mn: float | None = None, mx: float | None = None) -> None:
        if array.size == 0:
            return
        if mn is None or mx is None:
            mn, mx = batch_min_max(array)
        self.update_range(mn, mx, int(array.size))

    def update_range(self, mn: float, mx: float, count: int) -> None:
        """Fold in a batch of `count` values known only by its min and max."""
        self.min = min(self.min, mn)
        self.max = max(self.max, mx)
        self.count += count

    def merge(self, other: "MinMax") -> None:
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count

    @property
    def empty(self) -> bool:
        return self.count == 0

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max, "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MinMax":
        obs = cls()
        obs.min, obs.max, obs.count = float(data["min"]), float(data["max"]), int(data["count"])
        return obs


class MovingAverageMinMax:
    """Exponential moving average of per-batch min/max: m <- m + c * (batch_m - m).

    Merging shards averages the two, weighted by their number of batches: an EMA has no exact
    merge, so use absolute min/max (the default) when you calibrate in shards.
    """

    kind = "ema"

    def __init__(self, constant: float = 0.01) -> None:
        self.constant = constant
        self.min = math.nan
        self.max = math.nan
        self.batches = 0

    def update(self, array: np.ndarray, mn: float | None = None, mx: float | None = None) -> None:
        if array.size == 0:
            return
        if mn is None or mx is None:
            mn, mx = batch_min_max(array)
        self.update_range(mn, mx)

    def update_range(self, mn: float, mx: float) -> None:
        if self.batches == 0:
            self.min, self.max = mn, mx
        else:
            self.min += self.constant * (mn - self.min)
            self.max += self.constant * (mx - self.max)
        self.batches += 1

    def merge(self, other: "MovingAverageMinMax") -> None:
        total = self.batches + other.batches
        if other.batches == 0:
            return
        if self.batches == 0:
            self.min, self.max = other.min, other.max
        else:
            self.min = (self.min * self.batches + other.min * other.batches) / total
            self.max = (self.max * self.batches + other.max * other.batches) / total
        self.batches = total

    def to_dict(self) -> dict[str, Any]:
        return {"constant": self.constant, "min": self.min, "max": self.max, "batches": self.batches}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MovingAverageMinMax":
        obs = cls(float(data["constant"]))
        obs.min, obs.max, obs.batches = float(data["min"]), float(data["max"]), int(data["batches"])
        return obs


class PerChannelMinMax:
    """Min and max of each slice along `axis` (e.g. the channel axis 1 of an NCHW activation)."""

    kind = "per_channel"

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None

    def update(self, array: np.ndarray) -> None:
        if array.size == 0:
            return
        axis = self.axis % array.ndim
        others = tuple(i for i in range(array.ndim) if i != axis)
        mn = np.min(array, axis=others).astype(np.float64)
        mx = np.max(array, axis=others).astype(np.float64)
        self._combine(mn, mx)

    def _combine(self, mn: np.ndarray, mx: np.ndarray) -> None:
        if self.min is None:
            self.min, self.max = mn, mx
            return
        if mn.shape != self.min.shape:
            raise ValueError(f"per-channel observer saw {mn.shape[0]} channels after {self.min.shape[0]}")
        self.min = np.minimum(self.min, mn)
        self.max = np.maximum(self.max, mx)

    def merge(self, other: "PerChannelMinMax") -> None:
        if other.min is not None:
            self._combine(other.min, other.max)

    def to_dict(self) -> dict[str, Any]:
        return {"axis": self.axis,
                "min": None if self.min is None else self.min.tolist(),
                "max": None if self.max is None else self.max.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PerChannelMinMax":
        obs = cls(int(data["axis"]))
        if data.get("min") is not None:
            obs.min = np.asarray(data["min"], dtype=np.float64)
            obs.max = np.asarray(data["max"], dtype=np.float64)
        return obs


class Scratch:
    """Work buffers that histogram updates reuse from batch to batch.

    A fresh temporary per tensor and batch costs more in page faults than the arithmetic on it:
    one multiply over MobileNetV1-0.25's 2.9 M activation values took 4.3 ms into a new array
    and 0.5 ms into a reused one (measured here). Holds two arrays of the largest tensor."""

    def __init__(self) -> None:
        self._buffers: dict[np.dtype, np.ndarray] = {}

    def take(self, dtype: Any, size: int) -> np.ndarray:
        """A buffer of `size` elements; its contents are garbage and valid until the next take."""
        dtype = np.dtype(dtype)
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.size < size:
            buffer = self._buffers[dtype] = np.empty(size, dtype)
        return buffer[:size]


def grid_exponent(mn: float, mx: float, bins: int) -> int | None:
    """The bin-width exponent for the range [mn, mx]; None while every value seen is 0.

    Non-decreasing as the range grows, which is what makes streaming and merging exact.
    """
    amax = max(abs(mn), abs(mx))
    if amax == 0.0:
        return None
    floor_exp = math.frexp(amax)[1] - 1 - _INDEX_BITS  # keeps |x| / 2**e < 2**21
    exp = max(floor_exp, math.frexp((mx - mn) / bins)[1] - 2) if mx > mn else floor_exp
    while _span(mn, mx, exp) > bins:
        exp += 1
    return exp


def _span(mn: float, mx: float, exp: int) -> int:
    return math.floor(math.ldexp(mx, -exp)) - math.floor(math.ldexp(mn, -exp)) + 1


class Histogram:
    """Exact streaming histogram on a power-of-two grid anchored at 0 (see the module docstring)."""

    kind = "histogram"

    def __init__(self, bins: int = 2048) -> None:
        if bins < 2:
            raise ValueError(f"a histogram needs at least 2 bins, got {bins}")
        self.bins = bins
        self.exp: int | None = None  # None: only zeros seen so far (all in bin 0)
        self.lo = 0  # grid index of counts[0]
        self.counts = np.zeros(0, dtype=np.int64)
        self.min = math.inf
        self.max = -math.inf

    # --- geometry ---------------------------------------------------------------------------
    @property
    def width(self) -> float:
        return 0.0 if self.exp is None else math.ldexp(1.0, self.exp)

    @property
    def edges(self) -> np.ndarray:
        """Bin edges (len(counts) + 1 of them); all 0.0 while only zeros were seen."""
        return (self.lo + np.arange(self.counts.size + 1, dtype=np.float64)) * self.width

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    def folded(self) -> np.ndarray:
        """Counts of |x| on the same grid: bin j >= 0 holds bins j and -j-1 of x.

        Exact except for negative values lying exactly on an edge, which land one bin lower.
        """
        idx = self.lo + np.arange(self.counts.size)
        folded_idx = np.where(idx >= 0, idx, -idx - 1)
        return np.bincount(folded_idx, weights=self.counts,
                           minlength=int(folded_idx.max()) + 1 if idx.size else 0).astype(np.int64)

    # --- updates ----------------------------------------------------------------------------
    def update(self, array: np.ndarray, mn: float | None = None, mx: float | None = None,
               scratch: Scratch | None = None) -> None:
        if array.size == 0:
            return
        array = _as_float(array).reshape(-1)
        if mn is None or mx is None:
            mn, mx = batch_min_max(array)
        if not (math.isfinite(mn) and math.isfinite(mx)):
            raise ValueError("histogram of non-finite values")
        self._regrid(min(self.min, mn), max(self.max, mx))
        if self.exp is None:  # every value is 0
            self.counts[0] += array.size
            return
        self.counts += np.bincount(self._indices(array, scratch or Scratch()), minlength=self.counts.size)

    def _indices(self, array: np.ndarray, scratch: Scratch) -> np.ndarray:
        # Scaling by a power of two and flooring are exact, so every value lands in its true bin.
        scale = math.ldexp(1.0, -self.exp)
        # float32 is exact while scaling up (exp <= 0); scaling down could flush a tiny negative
        # value to -0.0 (bin 0 instead of -1), so wide grids work in float64.
        work = np.float32 if array.dtype == np.float32 and -120 < self.exp <= 0 else np.float64
        scaled = scratch.take(work, array.size)
        np.multiply(array, work(scale), out=scaled, dtype=work)
        np.floor(scaled, out=scaled)
        if self.lo:
            np.subtract(scaled, work(self.lo), out=scaled)  # integers below 2**22: exact
        indices = scratch.take(np.intp, array.size)
        np.copyto(indices, scaled, casting="unsafe")
        return indices

    def _regrid(self, mn: float, mx: float) -> None:
        """Widen the grid to hold [mn, mx], moving the old counts exactly."""
        exp = grid_exponent(mn, mx, self.bins)
        if self.exp is not None and exp is not None:
            exp = max(exp, self.exp)
        lo = 0 if exp is None else math.floor(math.ldexp(mn, -exp))
        size = 1 if exp is None else _span(mn, mx, exp)
        if exp == self.exp and lo == self.lo and size == self.counts.size:
            self.min, self.max = mn, mx
            return
        counts = np.zeros(size, dtype=np.int64)
        if self.counts.size:
            old = self.lo + np.arange(self.counts.size, dtype=np.int64)
            shift = 0 if self.exp is None else exp - self.exp
            new = (old >> shift) - lo if self.exp is not None else np.zeros_like(old) - lo
            np.add.at(counts, new, self.counts)
        self.exp, self.lo, self.counts = exp, lo, counts
        self.min, self.max = mn, mx

    def merge(self, other: "Histogram") -> None:
        if other.counts.size == 0:
            return
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        coarse = other.copy()
        self._regrid(min(self.min, other.min), max(self.max, other.max))
        coarse._regrid(self.min, self.max)  # same range, same bins: same grid as self
        self.counts += coarse.counts

    def copy(self) -> "Histogram":
        out = Histogram(self.bins)
        out.exp, out.lo, out.counts = self.exp, self.lo, self.counts.copy()
        out.min, out.max = self.min, self.max
        return out

    def coarsened(self, bins: int) -> "Histogram":
        """The same data on the grid it would have had with fewer bins (exact)."""
        if bins > self.bins:
            raise ValueError(f"a {self.bins}-bin histogram cannot be refined to {bins} bins")
        out = self.copy()
        out.bins = bins
        if out.counts.size:
            out._regrid(self.min, self.max)
        return out

    # --- serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"bins": self.bins, "width_exponent": self.exp, "origin_bin": self.lo,
                "width": self.width, "min": self.min, "max": self.max,
                "counts": self.counts.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Histogram":
        obs = cls(int(data["bins"]))
        obs.exp = None if data["width_exponent"] is None else int(data["width_exponent"])
        obs.lo = int(data["origin_bin"])
        obs.counts = np.asarray(data["counts"], dtype=np.int64)
        obs.min, obs.max = float(data["min"]), float(data["max"])
        return obs


class ChannelMean:
    """Mean of each slice along axis 1 (NCHW channels, or the K features of a Gemm input).

    Bias correction needs E[x] per input channel of a Conv/Gemm; the sums add across batches
    and shards exactly (in float64), so merged tables agree with one run."""

    kind = "channel_mean"

    def __init__(self) -> None:
        self.sums = PairSum()  # the same value however the batches were split (sums.py)
        self.count = 0

    def update(self, array: np.ndarray) -> None:
        if array.ndim < 2 or array.size == 0:
            return
        others = tuple(i for i in range(array.ndim) if i != 1)
        sums = np.sum(array, axis=others, dtype=np.float64)
        self._combine(sums, array.size // array.shape[1])

    def add_sums(self, sums: np.ndarray, count: int) -> None:
        """Fold in per-channel sums of `count` values each (e.g. computed inside the graph)."""
        self._combine(np.asarray(sums, dtype=np.float64), count)

    def _combine(self, sums: np.ndarray, count: int) -> None:
        if self.sums.hi is not None and sums.shape != self.sums.hi.shape:
            raise ValueError(f"channel-mean observer saw {sums.shape[0]} channels after {self.sums.hi.shape[0]}")
        self.sums.add(sums)
        self.count += count

    @property
    def sum(self) -> np.ndarray | None:
        return self.sums.value

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.sums.hi is None or self.count == 0 else self.sum / self.count

    def merge(self, other: "ChannelMean") -> None:
        if other.sums.hi is not None:
            if self.sums.hi is not None and other.sums.hi.shape != self.sums.hi.shape:
                raise ValueError(f"channel-mean observer saw {other.sums.hi.shape[0]} channels after "
                                 f"{self.sums.hi.shape[0]}")
            self.sums.merge(other.sums)
            self.count += other.count

    def to_dict(self) -> dict[str, Any]:
        # The sum's value, correctly rounded: the same whatever split made it. Its error term
        # stays in memory (a cluster's parts merge exactly); merging tables read back from
        # JSON adds rounded sums, which may differ from one run in the last bit.
        return {"sum": None if self.sum is None else self.sum.tolist(), "count": self.count}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChannelMean":
        obs = cls()
        if data.get("sum") is not None:
            obs.sums, obs.count = PairSum(np.asarray(data["sum"], dtype=np.float64)), int(data["count"])
        return obs
