"""GPTQ rounding: each weight column rounded in turn, its error pushed onto the columns not yet
rounded, as the input's second-order statistics say it is best compensated.

For a layer y = W·x with inputs of Gram matrix H = Σ x·xᵀ, the output error of a rounded
weight row is (ŵ − w)·H·(ŵ − w)ᵀ. Optimal brain quantization (Frantar et al., "GPTQ", 2022)
rounds one column j at a time and moves the rest of that row by −e_j·H⁻¹[j, j+1:] / H⁻¹[j, j],
the least-squares best correction given that column's error, using the upper Cholesky factor
of H⁻¹ so that each step is one row of it. Lazy blocks apply the corrections of B columns to
the rest of the matrix at once (one matrix product instead of B rank-one updates). Columns are
visited by decreasing H[j, j] ("act order": the most used inputs first, when there is the most
freedom left to compensate for them). Dampening adds a fraction of the mean diagonal to H so
that H⁻¹ exists when inputs are correlated or dead.

The scales and zero-points are decided beforehand from the float weights, exactly as for
rounding to nearest (per tensor, per channel, or per block of columns): GPTQ only changes which
integer each weight becomes. All arithmetic is in float64.
"""

from __future__ import annotations

import numpy as np

DAMPENING = 0.001  # of the mean diagonal of H: the default of error feedback (codebook_gptq uses it too)
# Integer rounding (gptq_round) damps less: MobileNetV1-0.25 per tensor + --equalize, top-1 with
# 1e-5: 56.8, 1e-4: 58.0, 1e-3: 57.0, 1e-2: 56.4, 1e-1: 55.8 % (FP32 58.8); MiniLM int4 alike.
ROUNDING_DAMPENING = 0.0001
LAZY_BLOCK = 128


def gptq_round(w: np.ndarray, h: np.ndarray, scale: np.ndarray, zero: np.ndarray, qmin: int, qmax: int, *,
               dampening: float | None = None, block: int = LAZY_BLOCK, partner: np.ndarray | None = None,
               pair_limit: int = 0) -> np.ndarray:
    """The integers of `w` [rows, d] (inputs along d) that minimise the output error under
    H [d, d], given each weight's scale and zero-point (arrays broadcastable to w's shape).

    Batched: w [G, rows, d] with h [G, d, d] rounds G independent groups (a grouped Conv) at once.
    With `partner` (input j is added with input partner[j] in one 16-bit lane, -1: alone), the
    second of each pair to be rounded keeps the same-sign part of the pair within `pair_limit`
    (pairs.py), and what that costs is fed forward like any rounding error."""
    single = np.ndim(w) == 2
    w = np.asarray(w, dtype=np.float64)
    w, h = (w[None], np.asarray(h)[None]) if single else (w, np.asarray(h))
    groups, rows, d = w.shape
    scale = np.broadcast_to(np.asarray(scale, np.float64), w.shape)
    zero = np.broadcast_to(np.asarray(zero, np.float64), w.shape)
    order = np.argsort(-np.diagonal(h, axis1=1, axis2=2), axis=1, kind="stable")  # [G, d]
    take = order[:, None, :]
    w, scale, zero = (np.take_along_axis(a, take, axis=2).copy() for a in (w, scale, zero))
    h = np.take_along_axis(np.take_along_axis(np.asarray(h, np.float64), order[:, :, None], axis=1), take, axis=2)
    upper = _inverse_cholesky(h, ROUNDING_DAMPENING if dampening is None else dampening)
    mates = None if partner is None else _partner_positions(order, np.asarray(partner))
    q = np.empty(w.shape, np.int64)
    for start in range(0, d, block):
        end = min(start + block, d)
        errors = np.empty((groups, rows, end - start))
        for j in range(start, end):
            column = w[:, :, j]
            lo, hi = (qmin, qmax) if mates is None else _pair_bounds(q, mates[:, j], j, qmin, qmax, pair_limit)
            q[:, :, j] = np.clip(np.rint(column / scale[:, :, j]) + zero[:, :, j], lo, hi)
            error = (column - (q[:, :, j] - zero[:, :, j]) * scale[:, :, j]) / upper[:, j, j, None]
            w[:, :, j + 1:end] -= error[:, :, None] * upper[:, None, j, j + 1:end]
            errors[:, :, j - start] = error
        if end < d:
            w[:, :, end:] -= errors @ upper[:, start:end, end:]
    out = np.empty_like(q)
    np.put_along_axis(out, take, q, axis=2)
    return out[0] if single else out


def _partner_positions(order: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """[G, d]: where, in each group's rounding order, the partner of the j-th rounded input is (-1: none)."""
    # The inverse permutation by scattering, not sorting: also the same under qemu's AVX2 emulation,
    # where numpy's vectorised argsort (x86-simd-sort) returns a wrong order (qemu 7.2, numpy 2.4).
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    mate = partner[order]  # the partner (original index) of each input, in rounding order
    return np.where(mate >= 0, np.take_along_axis(position, np.maximum(mate, 0), axis=1), -1)


def _pair_bounds(q: np.ndarray, mate: np.ndarray, j: int, qmin: int, qmax: int, limit: int):
    """[G, rows] lower and upper bounds of input j's integers given its partner's, where the
    partner is already rounded; the plain range elsewhere."""
    rounded = (mate >= 0) & (mate < j)
    if not rounded.any():
        return qmin, qmax
    other = q[np.arange(q.shape[0]), :, np.maximum(mate, 0)]  # [G, rows]
    hi = np.where(rounded[:, None], np.minimum(qmax, limit - np.maximum(other, 0)), qmax)
    lo = np.where(rounded[:, None], np.maximum(qmin, -limit - np.minimum(other, 0)), qmin)
    return lo, hi


def _inverse_cholesky(h: np.ndarray, dampening: float) -> np.ndarray:
    """Upper Cholesky factors U of (H + λI)⁻¹ (UᵀU = H⁻¹), per group; λ grows until every H is
    positive definite."""
    h = h.copy()
    eye = np.eye(h.shape[-1])
    dead = np.diagonal(h, axis1=1, axis2=2) <= 0  # [G, d]: inputs that are always 0
    h[dead[:, :, None] | dead[:, None, :]] = 0.0
    h += eye * dead[:, :, None]  # their weights change nothing: round them alone
    mean_diagonal = np.mean(np.diagonal(h, axis1=1, axis2=2), axis=1)[:, None, None]
    for attempt in range(6):
        damped = h + eye * dampening * mean_diagonal * 10.0 ** attempt
        try:
            # With J the order reversal, JHJ = MMᵀ gives H = VVᵀ with V = JMJ upper triangular,
            # so H⁻¹ = UᵀU with U = V⁻¹ = J M⁻¹ J: one factorisation and one inverse.
            lower = np.linalg.cholesky(damped[:, ::-1, ::-1])
            return np.linalg.inv(lower)[:, ::-1, ::-1]
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("the input Gram matrix stays singular after dampening")


def output_error(w: np.ndarray, w_hat: np.ndarray, h: np.ndarray) -> float:
    """Σ over rows of (ŵ − w)·H·(ŵ − w)ᵀ: the squared output error over the calibration data."""
    delta = np.asarray(w_hat, np.float64) - np.asarray(w, np.float64)
    return float(np.einsum("rd,de,re->", delta, np.asarray(h, np.float64), delta))
