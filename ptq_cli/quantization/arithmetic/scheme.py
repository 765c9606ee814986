"""Scale and zero-point arithmetic, in numpy, bit-exact with ONNX QuantizeLinear.

    q = clamp(round_half_even(r / S) + Z, qmin, qmax)        r ≈ (q - Z) · S

- The float range is widened to contain 0.0 so that 0.0 is exactly the integer Z (padding, ReLU).
- Asymmetric: S = (hi - lo) / (qmax - qmin), Z = qmin - round(lo / S).
- Symmetric: Z = 0 (signed; restricted to [-qmax, qmax] so that -r and r quantize alike) or the
  mid-point 2^(b-1) (unsigned); S = max(|lo|, |hi|) / (qmax - Z).
- Reduced range drops one bit (for CPUs without VNNI, where u8·s8 pair sums can saturate int16).
- A range of zero width (a constant tensor) gets S = 1, never 0 or a denormal.
- Bias: int32 with S = S_x · S_w and Z = 0, so Conv/Gemm accumulate it in the integer domain.
Every function works per tensor (scalars) or per channel (1-D arrays, one entry per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np

from ptq_cli.errors import ModelError
from ptq_cli.recipe import QType

_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor. `scale`/`zero_point` are 0-d or 1-d (per channel)."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # the numpy type of `qtype`
    qtype: QType
    axis: int | None = None  # the channel axis when per channel

    @property
    def per_channel(self) -> bool:
        return self.scale.ndim == 1

    def same_as(self, other: "QParams") -> bool:
        return (self.qtype == other.qtype and self.axis == other.axis
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))


def integer_range(qtype: QType, *, symmetric: bool, reduce_range: bool = False) -> tuple[int, int]:
    """The integer interval [qmin, qmax] values are clamped to."""
    bits = qtype.bits - 1 if reduce_range else qtype.bits
    if qtype.signed:
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        if symmetric:
            qmin = -qmax  # restricted range: -r and r map to -q and q
    else:
        qmin, qmax = 0, (1 << bits) - 1
    return qmin, qmax


def compute_qparams(lo, hi, qtype: QType, *, symmetric: bool, reduce_range: bool = False,
                    power_of_two: bool = False, axis: int | None = None) -> QParams:
    """Scale and zero-point that cover [lo, hi] (widened to contain 0.0)."""
    if axis is None and not power_of_two and np.ndim(lo) == 0 and np.ndim(hi) == 0:
        return _scalar_qparams(float(lo), float(hi), qtype, symmetric, reduce_range)
    lo = np.minimum(np.asarray(lo, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), 0.0)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
        raise ValueError("quantization range must be finite")
    qmin, qmax = integer_range(qtype, symmetric=symmetric, reduce_range=reduce_range)
    if symmetric:
        amax = np.maximum(-lo, hi)
        mid = 0 if qtype.signed else (qmax + 1) // 2
        scale = amax / float(qmax - mid)  # uint8: [-amax, amax] -> [1, 255] around 128
        zero = np.full(amax.shape, mid, dtype=np.float64)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        zero = None
    scale = np.where(scale > np.finfo(np.float32).tiny * 8, scale, 1.0)  # constant tensor
    if power_of_two:
        scale = np.exp2(np.ceil(np.log2(scale)))  # round up: the range stays covered
    scale32 = scale.astype(np.float32)
    if zero is None:
        # Z from the float32 scale actually stored, so that lo maps to qmin as closely as possible.
        zero = np.clip(np.rint(qmin - lo / scale32.astype(np.float64)), qmin, qmax)
    if axis is None and scale32.ndim != 0:
        raise ValueError("per-channel ranges need an axis")
    return QParams(scale32, np.asarray(zero.astype(qtype.numpy_type)), qtype, axis if scale32.ndim else None)


def _scalar_qparams(lo: float, hi: float, qtype: QType, symmetric: bool, reduce_range: bool) -> QParams:
    """compute_qparams for one range, in Python floats: the same numbers (float64 arithmetic,
    then float32), without numpy's per-call overhead, which dominated planning large graphs."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("quantization range must be finite")
    qmin, qmax = integer_range(qtype, symmetric=symmetric, reduce_range=reduce_range)
    if symmetric:
        mid = 0 if qtype.signed else (qmax + 1) // 2
        scale, zero = max(-lo, hi) / float(qmax - mid), float(mid)
    else:
        scale, zero = (hi - lo) / float(qmax - qmin), None
    scale32 = np.float32(scale if scale > _TINY8 else 1.0)
    if zero is None:
        zero = min(max(float(np.rint(qmin - lo / float(scale32))), qmin), qmax)
    return QParams(np.asarray(scale32), np.asarray(np.asarray(zero).astype(qtype.numpy_type)), qtype, None)


_TINY8 = float(np.finfo(np.float32).tiny) * 8


def _broadcast(values: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    if values.ndim == 0 or axis is None:
        return values
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def quantize(x: np.ndarray, qp: QParams, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """QuantizeLinear in numpy (float32 division, round half to even), or stochastic rounding
    with `rng` (unbiased: E[q] = r / S + Z; used for weights when asked, never by ONNX ops)."""
    x = np.asarray(x, dtype=np.float32)
    scale = _broadcast(qp.scale, x.ndim, qp.axis)
    zero = _broadcast(qp.zero_point.astype(np.float32), x.ndim, qp.axis)
    scaled = x / scale
    if rng is None:
        rounded = np.rint(scaled)
    else:
        rounded = np.floor(scaled + rng.random(scaled.shape, dtype=np.float32))
    lo, hi = qp.qtype.qmin, qp.qtype.qmax
    return np.clip(rounded + zero, lo, hi).astype(qp.qtype.numpy_type)


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    q = np.asarray(q)
    scale = _broadcast(qp.scale, q.ndim, qp.axis)
    zero = _broadcast(qp.zero_point.astype(np.int32), q.ndim, qp.axis)
    return ((q.astype(np.int32) - zero).astype(np.float32) * scale).astype(np.float32)


def weight_range(w: np.ndarray, axis: int | None, name: str = "", node: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Min and max of a weight, over everything (axis None) or per slice along `axis`.

    An empty weight or one holding NaN/Inf has no range: ModelError naming it (and its node)."""
    check_weight(w, name, node)
    if axis is None:
        return np.asarray(w.min(), np.float64), np.asarray(w.max(), np.float64)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    return moved.min(axis=1).astype(np.float64), moved.max(axis=1).astype(np.float64)


def check_weight(w: np.ndarray, name: str = "", node: str = "") -> None:
    what = f"weight {name!r}" + (f" of node {node!r}" if node else "")
    skip = f"; leave the node in float with --exclude {node}" if node else ""
    if w.size == 0:
        raise ModelError(f"{what} is empty (shape {tuple(w.shape)}): there is nothing to quantize{skip}")
    bad = int(np.count_nonzero(~np.isfinite(w))) if np.issubdtype(w.dtype, np.floating) else 0
    if bad:
        raise ModelError(f"{what} holds {bad} NaN/Inf value(s) of {w.size}; fix the model (its float outputs "
                         f"are already not finite there){skip}")


def quantize_bias(bias: np.ndarray, input_scale: np.ndarray, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int32 bias and its scale S_x·S_w (one per output channel when the weight is per channel)."""
    scale = (np.float32(input_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    q = np.rint(bias.astype(np.float64) / scale.astype(np.float64))
    return np.clip(q, _INT32.min, _INT32.max).astype(np.int32), np.broadcast_to(scale, bias.shape).astype(np.float32)


def wasted_fraction(lo: float, hi: float, qp: QParams) -> float:
    """Fraction of the integer range no value in [lo, hi] can reach (seed 000's skewed range)."""
    qmin, qmax = qp.qtype.qmin, qp.qtype.qmax
    q_lo, q_hi = quantize(np.array([lo, hi], np.float32), qp).astype(np.int64)
    used = int(q_hi - q_lo)
    return max(0.0, 1.0 - used / float(qmax - qmin))


def fixed_point_multiplier(m: float) -> tuple[int, int]:
    """Write a real multiplier 0 < m < 2^31 as M0 · 2^-shift with M0 a Q31 int32 in [2^30, 2^31).

    This is what integer-only kernels need for requantization, M = S_x·S_w / S_y
    (gemmlowp/TFLite convention: m ≈ M0 / 2^31 · 2^(31 - shift))."""
    if m <= 0:
        return 0, 0
    mantissa, exponent = np.frexp(m)  # m = mantissa · 2^exponent, mantissa in [0.5, 1)
    m0 = int(np.rint(mantissa * (1 << 31)))
    if m0 == 1 << 31:  # rounding overflowed the mantissa
        m0 //= 2
        exponent += 1
    return m0, 31 - int(exponent)
