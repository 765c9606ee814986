"""Range methods: the float range [lo, hi] to quantize a tensor to, from its statistics.

- minmax: the observed range.
- percentile: clip a fraction of the values (two-sided for signed data), read off the histogram.
- entropy: TensorRT's KL-divergence threshold, on the histogram of |x|.
- mse: the clipping range minimizing expected squared error (rounding noise s**2/12 inside the
  range, squared distance to the clip outside it) for the target bit width.

Every threshold search is vectorized over all candidates at once with prefix sums.
"""

from __future__ import annotations

import numpy as np

from ptq_cli.calibration.observers import Histogram
from ptq_cli.errors import CalibrationError
from ptq_cli.recipe import CalibMethod, CalibrationSpec

Range = tuple[float, float]


def minmax_range(mn: float, mx: float) -> Range:
    return float(mn), float(mx)


# --- percentile ---------------------------------------------------------------------------------
def percentile_range(hist: Histogram, percentile: float) -> Range:
    """Smallest bin-aligned range holding the central `percentile` % of the values.

    Non-negative data is clipped on the right only; signed data loses (100 - p) / 2 % on each
    side. The bounds are bin edges outside the exact quantiles, so they are at most one bin
    width looser than the quantiles of the raw data (and clamped to the observed min/max).
    """
    _require_data(hist)
    if hist.exp is None:
        return hist.min, hist.max
    cum = np.cumsum(hist.counts)
    total = int(cum[-1])
    cut = (100.0 - percentile) / 100.0
    if hist.min >= 0.0:
        lo = hist.min
        upper_rank = (1.0 - cut) * total
    else:
        lower_rank = cut / 2.0 * total
        upper_rank = (1.0 - cut / 2.0) * total
        i_lo = int(np.searchsorted(cum, lower_rank, side="right"))  # bin of rank floor(q*N)+1
        lo = max(hist.min, (hist.lo + i_lo) * hist.width)
    i_hi = int(np.searchsorted(cum, upper_rank, side="left"))  # bin of rank ceil(p*N)
    hi = min(hist.max, (hist.lo + min(i_hi, cum.size - 1) + 1) * hist.width)
    return float(lo), float(hi)


# --- entropy ------------------------------------------------------------------------------------
def kl_divergences(counts: np.ndarray, levels: int) -> np.ndarray:
    """KL(P || Q) for every candidate threshold i = levels .. len(counts) bins (TensorRT).

    P is counts[:i] with the outliers counts[i:] added to its last bin. Q quantizes counts[:i]
    to `levels` groups (bin k in group k * levels // i), spreads each group's total evenly over
    its non-empty bins and is 0 on empty ones. Both are normalized. Returns inf where P has mass
    that Q cannot represent (outliers on an empty last bin).
    """
    h = np.asarray(counts, dtype=np.float64)
    n = h.size
    cand = np.arange(levels, n + 1)
    if cand.size == 0:
        return np.zeros(0)
    total = h.sum()
    s = np.concatenate([[0.0], np.cumsum(h)])
    nz = np.concatenate([[0], np.cumsum(h > 0)])
    a = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    j = np.arange(levels + 1)
    starts = (j[None, :] * cand[:, None] + levels - 1) // levels  # first bin of each group
    q = s[starts[:, 1:]] - s[starts[:, :-1]]  # group totals, (candidates, levels)
    norm = nz[starts[:, 1:]] - nz[starts[:, :-1]]
    q_log_q = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0) / np.maximum(norm, 1)), 0.0)
    last_q = q[:, -1] / np.maximum(norm[:, -1], 1)
    outliers = total - s[cand]
    last = h[cand - 1] + outliers
    p_log_p = a[cand - 1] + _xlogx(last)
    p_log_q = q_log_q.sum(axis=1) + np.where(outliers > 0, outliers * np.log(np.where(last_q > 0, last_q, 1.0)), 0.0)
    kl = (p_log_p - p_log_q) / total - np.log(total) + np.log(s[cand])
    kl = np.maximum(kl, 0.0)  # rounding can dip a hair below 0 where P == Q
    return np.where((outliers > 0) & (h[cand - 1] == 0), np.inf, kl)


def _xlogx(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def entropy_threshold(folded: np.ndarray, levels: int) -> int:
    """Number of |x| bins to keep; ties go to the larger threshold (as pytorch-quantization)."""
    counts = folded.astype(np.int64).copy()
    if counts.size > 1:
        # Exact zeros (ReLU) would dominate P and Q; like TensorRT's tools, give bin 0 bin 1's count.
        counts[0] = counts[1]
    kl = kl_divergences(counts, levels)
    if kl.size == 0 or not np.isfinite(kl).any():
        return folded.size
    best = kl.size - 1 - int(np.argmin(kl[::-1]))
    return levels + best


def entropy_range(hist: Histogram, *, bits: int = 8) -> Range:
    """TensorRT's entropy calibration: symmetric threshold t minimizing KL, range (-t, t) ∩ data.

    128 levels (sign + 7 bits) for signed data, 256 for non-negative data at 8 bits.
    """
    _require_data(hist)
    if hist.exp is None:
        return hist.min, hist.max
    signed = hist.min < 0.0
    levels = 1 << (bits - 1 + int(not signed))
    keep = entropy_threshold(hist.folded(), levels)
    t = keep * hist.width
    return float(max(hist.min, -t)), float(min(hist.max, t))


# --- MSE ----------------------------------------------------------------------------------------
def mse_errors(hist: Histogram, alphas: np.ndarray, *, bits: int = 8,
               symmetric: bool = False) -> np.ndarray:
    """Expected squared error per value of the range alpha * base for each alpha (vectorized).

    base is [min(mn, 0), max(mx, 0)], or [-amax, amax] when symmetric. Values are taken at their
    bin centres; inside the range the rounding error is uniform noise s**2 / 12 with
    s = (hi - lo) / (2**bits - 1); outside it is the squared distance to the clip bound.
    """
    lo0, hi0 = _mse_base(hist, symmetric)
    h = hist.counts.astype(np.float64)
    centres = (hist.edges[:-1] + hist.edges[1:]) / 2.0
    c_h = np.concatenate([[0.0], np.cumsum(h)])
    c_hc = np.concatenate([[0.0], np.cumsum(h * centres)])
    c_hc2 = np.concatenate([[0.0], np.cumsum(h * centres * centres)])
    lo, hi = alphas * lo0, alphas * hi0
    below = np.searchsorted(centres, lo, side="left")  # bins [0, below) lie under lo
    above = np.searchsorted(centres, hi, side="right")  # bins [above, n) lie over hi
    n_lo, s_lo, q_lo = c_h[below], c_hc[below], c_hc2[below]
    n_hi, s_hi, q_hi = c_h[-1] - c_h[above], c_hc[-1] - c_hc[above], c_hc2[-1] - c_hc2[above]
    clip = (q_lo - 2 * lo * s_lo + lo * lo * n_lo) + (q_hi - 2 * hi * s_hi + hi * hi * n_hi)
    step = (hi - lo) / ((1 << bits) - 1)
    inside = c_h[-1] - n_lo - n_hi
    return (inside * step * step / 12.0 + np.maximum(clip, 0.0)) / c_h[-1]


def _mse_base(hist: Histogram, symmetric: bool) -> Range:
    if symmetric:
        amax = max(abs(hist.min), abs(hist.max))
        return -amax, amax
    return min(hist.min, 0.0), max(hist.max, 0.0)


def mse_range(hist: Histogram, *, bits: int = 8, symmetric: bool = False,
              candidates: int | None = None) -> Range:
    """The range alpha * base (alpha in (0, 1]) with the least expected squared error.

    Works for activations (from the calibration histogram) and for weights (a Histogram of the
    weight array). `candidates` defaults to one per histogram bin.
    """
    _require_data(hist)
    if hist.exp is None:
        return hist.min, hist.max
    count = candidates or max(hist.counts.size, 16)
    alphas = np.arange(1, count + 1, dtype=np.float64) / count
    errors = mse_errors(hist, alphas, bits=bits, symmetric=symmetric)
    alpha = alphas[int(np.argmin(errors))]
    lo0, hi0 = _mse_base(hist, symmetric)
    return float(alpha * lo0), float(alpha * hi0)


def mse_range_of(array: np.ndarray, *, bits: int = 8, symmetric: bool = True,
                 bins: int = 2048) -> Range:
    """MSE range of a whole array (e.g. a weight tensor)."""
    hist = Histogram(bins)
    hist.update(np.asarray(array))
    return mse_range(hist, bits=bits, symmetric=symmetric)


# --- dispatch -----------------------------------------------------------------------------------
def compute_range(spec: CalibrationSpec, mn: float, mx: float, hist: Histogram | None,
                  *, bits: int = 8) -> Range:
    """The range `spec.method` gives for a tensor with these statistics."""
    if spec.method is CalibMethod.MINMAX:
        return minmax_range(mn, mx)
    if hist is None:
        raise CalibrationError(f"the {spec.method.value} method needs histograms, and this table has "
                               "none (it was made with --method minmax); recalibrate with "
                               f"ptq calibrate --method {spec.method.value}")
    if spec.method is CalibMethod.PERCENTILE:
        return percentile_range(hist, spec.percentile)
    if spec.method is CalibMethod.ENTROPY:
        return entropy_range(hist, bits=bits)
    return mse_range(hist, bits=bits)


def _require_data(hist: Histogram) -> None:
    if hist.counts.size == 0:
        raise CalibrationError("the histogram is empty: no value was observed for this tensor")
