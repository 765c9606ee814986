"""Per-tensor statistics: the observers one tensor needs, updated together from one batch."""

from __future__ import annotations

import copy

import math
from typing import Any

import numpy as np

from ptq_cli.calibration.observers import (ChannelMean, Histogram, MinMax, MovingAverageMinMax, PerChannelMinMax,
                                         Scratch, batch_min_max)
from ptq_cli.errors import CalibrationError
from ptq_cli.recipe import CalibMethod, CalibrationSpec


class TensorStats:
    """Absolute min/max always; a histogram for histogram methods; EMA and per-channel on request."""

    def __init__(self, minmax: MinMax, histogram: Histogram | None = None,
                 ema: MovingAverageMinMax | None = None,
                 channels: PerChannelMinMax | None = None, mean: ChannelMean | None = None) -> None:
        self.minmax = minmax
        self.histogram = histogram
        self.ema = ema
        self.channels = channels
        self.mean = mean  # per-channel E[x] of Conv/Gemm inputs, for bias correction

    @classmethod
    def for_spec(cls, spec: CalibrationSpec, *, histogram: bool | None = None,
                 channel_axis: int | None = None, mean: bool = False) -> "TensorStats":
        """histogram=None collects one only when spec's method needs it."""
        keep = needs_histogram(spec) if histogram is None else histogram
        return cls(MinMax(),
                   Histogram(spec.bins) if keep else None,
                   MovingAverageMinMax(spec.moving_average) if spec.moving_average else None,
                   PerChannelMinMax(channel_axis) if channel_axis is not None else None,
                   ChannelMean() if mean else None)

    def update(self, name: str, array: np.ndarray, scratch: Scratch | None = None) -> None:
        """Fold one batch in; NaN/Inf raise CalibrationError naming the tensor."""
        if array.size == 0:
            return
        mn, mx = batch_min_max(array)
        _check_finite(name, mn, mx)
        self._fold(array, mn, mx, scratch)
        if self.mean is not None:
            self.mean.update(array)

    def update_reduced(self, name: str, mn: float, mx: float, sums: np.ndarray | None, size: int,
                       array: np.ndarray | None = None, scratch: Scratch | None = None) -> None:
        """Fold one batch in from reductions computed in the graph (min, max, and the total or,
        for a channel mean, the per-channel sums over `size` elements); `array` is the batch
        itself when a histogram or per-channel min/max needs it."""
        if size == 0:
            return
        if sums is not None and math.isnan(sums.sum()):  # the graph's min/max skip NaN
            mn, mx = math.nan, math.nan
        _check_finite(name, mn, mx)
        if array is None and self.ema is None:  # the common case, kept short: it runs per tensor and batch
            self.minmax.update_range(mn, mx, size)
        else:
            self._fold(array, mn, mx, scratch, size)
        if self.mean is not None and sums is not None and sums.ndim == 1 and sums.size:
            self.mean.add_sums(sums, size // sums.size)

    def _fold(self, array: np.ndarray | None, mn: float, mx: float, scratch: Scratch | None,
              size: int | None = None) -> None:
        self.minmax.update_range(mn, mx, int(array.size) if size is None else size)
        if self.ema is not None:
            self.ema.update_range(mn, mx)
        if self.histogram is not None:
            self.histogram.update(array, mn, mx, scratch=scratch)
        if self.channels is not None and array.ndim > 1:
            self.channels.update(array)

    @property
    def needs_array(self) -> bool:
        """Whether a batch must be seen whole (not only through min/max/sums)."""
        return self.histogram is not None or self.channels is not None

    def merge(self, other: "TensorStats") -> None:
        self.minmax.merge(other.minmax)
        for mine, theirs in ((self.histogram, other.histogram), (self.ema, other.ema),
                             (self.channels, other.channels), (self.mean, other.mean)):
            if (mine is None) != (theirs is None):
                raise CalibrationError("cannot merge tables collected with different options "
                                       "(histogram / moving average / per-channel)")
            if mine is not None:
                mine.merge(theirs)

    @property
    def min_max(self) -> tuple[float, float]:
        """The min/max the minmax method uses: the moving average when one was asked for."""
        if self.ema is not None:
            return self.ema.min, self.ema.max
        return self.minmax.min, self.minmax.max

    def copy(self) -> "TensorStats":
        # A deep copy, not a round trip through to_dict: a channel mean's sum keeps its error
        # term (sums.py), which the table's JSON does not hold.
        return copy.deepcopy(self)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.minmax.to_dict()
        if self.histogram is not None:
            out["histogram"] = self.histogram.to_dict()
        if self.ema is not None:
            out["moving_average"] = self.ema.to_dict()
        if self.channels is not None:
            out["per_channel"] = self.channels.to_dict()
        if self.mean is not None:
            out["channel_mean"] = self.mean.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TensorStats":
        return cls(MinMax.from_dict(data),
                   Histogram.from_dict(data["histogram"]) if "histogram" in data else None,
                   MovingAverageMinMax.from_dict(data["moving_average"]) if "moving_average" in data else None,
                   PerChannelMinMax.from_dict(data["per_channel"]) if "per_channel" in data else None,
                   ChannelMean.from_dict(data["channel_mean"]) if "channel_mean" in data else None)


def _check_finite(name: str, mn: float, mx: float) -> None:
    if not (math.isfinite(mn) and math.isfinite(mx)):
        raise CalibrationError(f"activation {name!r} holds NaN or Inf (min {mn}, max {mx}); check "
                               "the calibration data and the model (e.g. a division by zero or "
                               "a log of 0 upstream of this tensor)")


def needs_histogram(spec: CalibrationSpec) -> bool:
    # min/max alone keeps calibration as cheap as inference; every other method reads a histogram.
    return spec.method is not CalibMethod.MINMAX
