"""Block-wise weight quantization (4 or 8 bits, one scale per `block` consecutive inputs of a
row) and the byte layouts onnxruntime reads.

A weight is seen as rows × K (a MatMul's W [K, N] transposed; an embedding table as it is),
cut into blocks of `block` values along K (the last block padded with zeros):

    symmetric   S = m / −2^(b−1), m the block's value of largest magnitude (with its sign);
                q = clamp(round(w / S), −2^(b−1), 2^(b−1) − 1): m lands exactly on −2^(b−1)
                and all 2^b levels are used (onnxruntime's RTN does the same)
    asymmetric  S = (max(hi, 0) − min(lo, 0)) / (2^b − 1), Z = clamp(round(−lo / S)),
                q = clamp(round(w / S) + Z, 0, 2^b − 1)

Rounding is half to even, in float32, as onnxruntime's `quantize_matmul_4bits` (checked bit
for bit in the tests). Integers are kept signed for symmetric blocks (zero 0) and unsigned for
asymmetric ones (zero Z); `unsigned` converts to MatMulNBits' storage, which is always
unsigned with an implicit zero-point of 2^(b−1) when none is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Blocks:
    """Block parameters of a rows × K weight: scale [rows, nb] float32, zero [rows, nb] (None: symmetric)."""

    bits: int
    block: int
    k: int
    scale: np.ndarray
    zero: np.ndarray | None

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.symmetric else (1 << self.bits) - 1

    def per_value(self, values: np.ndarray) -> np.ndarray:
        """A per-block array [rows, nb] spread over the K columns [rows, K]."""
        return np.repeat(values, self.block, axis=1)[:, :self.k]

    def zeros_per_value(self) -> np.ndarray:
        return np.zeros((self.scale.shape[0], self.k)) if self.zero is None else self.per_value(self.zero)

    def nearest(self, w: np.ndarray) -> np.ndarray:
        """Round to nearest: integers [rows, K] (int16, signed or unsigned domain as above)."""
        scaled = np.asarray(w, np.float32) / self.per_value(self.scale)
        q = np.rint(scaled) + self.zeros_per_value()
        return np.clip(q, self.qmin, self.qmax).astype(np.int16)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((q - self.zeros_per_value()) * self.per_value(self.scale)).astype(np.float32)

    def unsigned(self, q: np.ndarray) -> np.ndarray:
        """MatMulNBits' storage values (0 .. 2^b − 1)."""
        return (q + (1 << (self.bits - 1)) if self.symmetric else q).astype(np.uint8)


# Shrink factors of a block's range tried by the clipping search (1.0: the full range, as onnxruntime).
CLIP_GRID = np.linspace(1.0, 0.6, 11, dtype=np.float32)


def block_params(w: np.ndarray, bits: int, block: int, symmetric: bool, *, search: bool = True,
                 importance: np.ndarray | None = None) -> Blocks:
    """The scales (and zero-points) of every block of w [rows, K].

    With `search`, each block's range is shrunk by the factor of CLIP_GRID that minimises its
    rounding error Σ_j importance_j · (ŵ_j − w_j)² (importance: the input's mean square, the
    diagonal of the Gram matrix, when known; 1 otherwise): a 4-bit block spends its 16 levels on
    the bulk of its values rather than on its one outlier. Without it: the full range."""
    rows, k = w.shape
    padded = _padded(w, block)
    weights = np.ones(padded.shape[1:], np.float32) if importance is None else \
        _padded(np.asarray(importance, np.float32)[None], block)[0]
    factors = CLIP_GRID if search else CLIP_GRID[:1]
    scale = np.empty(padded.shape[:2], np.float32)
    zero = None if symmetric else np.empty(padded.shape[:2], np.int16)
    chunk = max(1, _CHUNK_VALUES // padded[0].size)  # ~64k values at a time: the candidates stay in cache
    for start in range(0, rows, chunk):
        part = padded[start:start + chunk]
        lo, hi = part.min(axis=2), part.max(axis=2)
        best_error = None
        for factor in factors:
            s, z = _range_params(lo * factor, hi * factor, bits, symmetric)
            q = np.rint(part / s[..., None])
            if z is not None:
                q += z[..., None]
            q = np.clip(q, *_limits(bits, symmetric))
            if z is not None:
                q -= z[..., None]
            q *= s[..., None]
            q -= part
            error = np.einsum("rbj,rbj->rb", q, q) if importance is None else np.einsum("rbj,bj,rbj->rb", q, weights, q)
            if best_error is None:
                best_error = error
                scale[start:start + chunk] = s
                if zero is not None:
                    zero[start:start + chunk] = z
                continue
            better = error < best_error
            best_error = np.where(better, error, best_error)
            scale[start:start + chunk] = np.where(better, s, scale[start:start + chunk])
            if zero is not None:
                zero[start:start + chunk] = np.where(better, z, zero[start:start + chunk])
    return Blocks(bits, block, k, scale, zero)


_CHUNK_VALUES = 1 << 16


def _limits(bits: int, symmetric: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)


def _padded(w: np.ndarray, block: int) -> np.ndarray:
    """[rows, nb, block] float32, the last block padded with zeros."""
    rows, k = w.shape
    blocks = -(-k // block)
    if blocks * block == k:
        return np.ascontiguousarray(w, np.float32).reshape(rows, blocks, block)
    padded = np.zeros((rows, blocks * block), np.float32)
    padded[:, :k] = w
    return padded.reshape(rows, blocks, block)


def _range_params(lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool):
    """(scale [rows, nb], zero [rows, nb] or None) covering each block's [lo, hi]."""
    if symmetric:
        extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        return _nonzero((extreme / np.float32(-(1 << (bits - 1)))).astype(np.float32)), None
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    levels = (1 << bits) - 1
    scale = _nonzero(((hi - lo) / np.float32(levels)).astype(np.float32))
    return scale, np.clip(np.rint(-lo / scale), 0, levels).astype(np.int16)


def _nonzero(scale: np.ndarray) -> np.ndarray:
    """A block of zeros gets scale 1 (its values stay 0), never 0 (a division by zero)."""
    return np.where(scale != 0, scale, np.float32(1.0)).astype(np.float32)


def pack_matmul_nbits(q_unsigned: np.ndarray, blocks: Blocks) -> np.ndarray:
    """B of com.microsoft.MatMulNBits: uint8 [rows, nb, block·bits/8], values along K, two
    4-bit values a byte (the first in the low nibble); K padded to whole blocks."""
    rows, k = q_unsigned.shape
    nb = blocks.scale.shape[1]
    padded = np.zeros((rows, nb * blocks.block), np.uint8)  # the kernel never reads past K; 0 as onnxruntime
    padded[:, :k] = q_unsigned
    if blocks.bits == 8:
        return padded.reshape(rows, nb, blocks.block)
    return pack_nibbles(padded).reshape(rows, nb, blocks.block // 2)


def pack_zero_points(blocks: Blocks) -> np.ndarray | None:
    """zero_points of MatMulNBits: uint8 [rows, ceil(nb·bits/8)] (4 bits: two blocks a byte)."""
    if blocks.zero is None:
        return None
    zero = blocks.zero.astype(np.uint8)
    if blocks.bits == 8:
        return zero
    if zero.shape[1] % 2:  # the unused last nibble holds the default zero-point, 8, as onnxruntime writes it
        zero = np.concatenate([zero, np.full((zero.shape[0], 1), 8, np.uint8)], axis=1)
    return pack_nibbles(zero)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pairs of 4-bit values along the last axis into bytes, the first in the low nibble."""
    values = values.astype(np.uint8) & 0xF
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
