"""Integer weights whose 16-bit pair sums cannot saturate on any x86-64 CPU.

onnxruntime's u8·s8 kernels on x86 without VNNI (AVX2, and AVX-512 without VNNI) multiply with
`vpmaddubsw`: each pair of products a[k]·w[k] + a[k+1]·w[k+1] (k even along the reduction axis,
same output column) is added into a signed 16-bit lane with saturation; `vpmaddwd` then widens
exactly. Activations reach the kernel as raw uint8 (0..255, zero-points are applied afterwards;
int8 activations are shifted to uint8 first), so a pair can clip only when its two weights have
the same sign and 255·(w_a + w_b) leaves [-32768, 32767]:

    positive parts  max(w_a, 0) + max(w_b, 0) <= 128      (255·128 = 32640)
    negative parts  min(w_a, 0) + min(w_b, 0) >= -128

VNNI (`vpdpbusd`), AMX and ARM accumulate in 32 bits and are exact. Which entries the kernel
pairs depends on the op (onnxruntime's MLAS: QgemmU8S8KernelAvx2, qlinearconv.cc; checked here
against an int32 reference under `qemu-x86_64 -cpu Haswell`):

- MatMul / Gemm / MatMulInteger / DynamicQuantizeLSTM: rows (k, k+1) of the K×N weight;
- Conv (QLinearConv): K = tap·C_in + c per group, so input channels (c, c+1) at the same tap,
  crossing taps when C_in is odd (an RGB stem); depthwise kernels widen first and are exact;
- ConvInteger (dynamic Conv) and QDQ ConvTranspose (which onnxruntime runs in float) are exact:
  measured with weights at 127 against activations at 255 under Haswell emulation.

A weight is seen as `rows × d` (the layout GPTQ uses: rounding.py) with `partner[j]` the input
index paired with input j (-1: none). `bound_pairs` moves each violating pair onto the limit,
as close to the float values as integers allow; `fit_pairs` lets each output channel take a
coarser step (up to 2×, where nothing clips any more) when that costs less than bounding. GPTQ takes the same limit column by column and feeds the difference forward (gptq.py), and bias
correction, which reads the final integers, removes the mean shift that remains.

Measured (AMD EPYC with AVX-512 VNNI, onnxruntime 1.32): the shipped MNIST CNN, SQNR to FP32
40.3 dB with full-range weights, 39.0 dB portable (bounding alone, without the step search: 12 dB);
MiniLM-L3 mean cosine 0.99766 full range, 0.99754 portable. Weighing each input's error by its
energy E[x_k²] (measured on 32 calibration samples) was tried and left out: MiniLM 0.99757, but
PP-OCRv4 read 90.7 % of held-out lines as FP32 instead of 93.7 %, and MobileNetV1-0.25 57.56 %
instead of 58.44 % (58.00 by the variance).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ptq_cli.quantization.arithmetic.scheme import QParams, integer_range, quantize

PAIR_LIMIT = 128  # the largest same-sign pair sum of raw int8 weights that 255·sum keeps in int16
UINT8_MAX = 255
INT16_MAX = np.iinfo(np.int16).max
INT16_MIN = np.iinfo(np.int16).min


@dataclass(frozen=True)
class Pairing:
    """How a kernel pairs the entries of one weight: `rows(w)` is [rows, d] (inputs along d,
    one row per output column), `back(a)` undoes it, `partner[j]` is the input paired with
    input j (-1: unpaired)."""

    shape: tuple[int, ...]
    kind: str  # "k_rows": [..., K, N]; "k_cols": [N, K]; "conv": [Co, Ci/g, *taps]
    partner: np.ndarray

    def rows(self, a: np.ndarray) -> np.ndarray:
        a = np.broadcast_to(a, self.shape)
        if self.kind == "k_rows":
            return np.moveaxis(a, -2, -1).reshape(-1, self.shape[-2])
        return a.reshape(self.shape[0], -1)

    def back(self, a: np.ndarray) -> np.ndarray:
        if self.kind == "k_rows":
            moved = self.shape[:-2] + (self.shape[-1], self.shape[-2])
            return np.moveaxis(a.reshape(moved), -1, -2)
        return a.reshape(self.shape)


def adjacent_partners(d: int) -> np.ndarray:
    """k pairs with k ^ 1; an odd last input has no partner (the kernel pads K with a zero)."""
    partner = np.arange(d) ^ 1
    partner[partner >= d] = -1
    return partner


def conv_partners(in_per_group: int, taps: int) -> np.ndarray:
    """Partners in ONNX order (c major, then tap) of a kernel that reduces over K = tap·C + c."""
    c, t = np.divmod(np.arange(in_per_group * taps), taps)
    kernel_position = t * in_per_group + c
    mate = kernel_position ^ 1
    mate_c, mate_t = mate % in_per_group, mate // in_per_group
    partner = mate_c * taps + mate_t
    partner[mate >= in_per_group * taps] = -1
    return partner


def pairing_for(op_type: str, shape: tuple[int, ...], *, trans_b: bool = False, group: int = 1) -> Pairing | None:
    """The pairing of a constant weight of `op_type` (None: its kernel pairs nothing)."""
    shape = tuple(int(s) for s in shape)
    if op_type in ("MatMul", "MatMulInteger", "LSTM") and len(shape) >= 2:
        return Pairing(shape, "k_rows", adjacent_partners(shape[-2]))
    if op_type == "Gemm" and len(shape) == 2:
        return Pairing(shape, "k_cols", adjacent_partners(shape[1])) if trans_b else \
            Pairing(shape, "k_rows", adjacent_partners(shape[0]))
    if op_type == "Conv" and len(shape) >= 3:
        out_channels, in_per_group = shape[0], shape[1]
        if in_per_group == 1 and out_channels == group and group > 1:
            return None  # depthwise: widened to 16 bits before multiplying, exact
        taps = int(np.prod(shape[2:]))
        return Pairing(shape, "conv", conv_partners(in_per_group, taps))
    return None  # ConvInteger, ConvTranspose: exact (see above)


def bound_pairs(q: np.ndarray, target: np.ndarray, pairing: Pairing) -> np.ndarray:
    """`q` (raw integers in the weight's layout) with every same-sign pair the kernel adds moved
    onto ±PAIR_LIMIT, each pair as close to `target` (w / S + Z, the unrounded integers) as
    integers allow. Pairs already within the limit are unchanged."""
    bounded = _bound_rows(pairing.rows(q).astype(np.int64), pairing.rows(target), pairing.partner)
    return pairing.back(bounded).astype(q.dtype)


def fit_pairs(w: np.ndarray, row_scale: np.ndarray, pairing: Pairing, qmin: int, qmax: int,
              per_row: bool, steps: np.ndarray = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric integers of `w` within the pair limit, and the factor each row's scale grew by.

    Bounding a pair moves both of its weights; when a row has many large same-sign neighbours
    (a 3×3 filter on one input channel, correlated taps), a coarser step for the whole row costs
    less. Each factor of SCALE_STEPS (1: the full 8 bits, bounded; 2: 7 bits, nothing to bound) is
    tried, and each row (`per_row`, one scale per row) or the whole tensor keeps the one with
    the smallest squared weight error. Returns (integers in `w`'s layout, factors [rows] or [1])."""
    rows = pairing.rows(w).astype(np.float64)
    scale = np.broadcast_to(np.asarray(row_scale, np.float64).reshape(-1, 1), (rows.shape[0], 1))
    best_q, best_error, best_factor = None, None, None
    for factor in SCALE_STEPS if steps is None else steps:
        step = scale * factor
        target = rows / step
        q = _bound_rows(np.clip(np.rint(target), qmin, qmax).astype(np.int64), target, pairing.partner)
        error = ((q * step - rows) ** 2).sum(axis=1)
        if not per_row:
            error = np.full(error.shape, error.sum())
        if best_q is None:
            best_q, best_error, best_factor = q, error, np.full(error.shape, factor)
            continue
        better = error < best_error  # ties keep the finer step
        best_q = np.where(better[:, None], q, best_q)
        best_error = np.where(better, error, best_error)
        best_factor = np.where(better, factor, best_factor)
    return pairing.back(best_q), best_factor if per_row else best_factor[:1]


# Scale factors tried by fit_pairs: 2.0 halves every integer, so no pair can clip.
SCALE_STEPS = np.linspace(1.0, 2.0, 21)
POWER_OF_TWO_STEPS = np.array([1.0, 2.0])  # for scales that must stay powers of two


def _bound_rows(rows: np.ndarray, wanted: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """bound_pairs on [rows, d] integers (int64) and their unrounded values."""
    rows = rows.copy()
    first = np.flatnonzero(partner > np.arange(rows.shape[1]))
    second = partner[first]
    a, b = rows[:, first], rows[:, second]
    for sign in (1, -1):
        over = np.maximum(sign * a, 0) + np.maximum(sign * b, 0) > PAIR_LIMIT  # same-sign parts
        if not over.any():
            continue
        ta, tb = wanted[:, first], wanted[:, second]
        # The point of a + b = ±LIMIT nearest to (ta, tb), then integers on that line.
        na = np.rint(ta - (ta + tb - sign * PAIR_LIMIT) / 2.0)
        na = np.clip(na * sign, 1, PAIR_LIMIT - 1) * sign
        a = np.where(over, na, a)
        b = np.where(over, sign * PAIR_LIMIT - na, b)
    rows[:, first], rows[:, second] = a, b
    return rows


def portable_weight(value: np.ndarray, qp: QParams, pairing: Pairing, rng: np.random.Generator | None = None,
                    steps: np.ndarray = None) -> tuple[QParams, np.ndarray]:
    """The parameters and integers of a weight within the pair limit. A weight whose integers
    already keep every pair in range is left as it is. Otherwise, for symmetric weights whose
    scales are one per row (or one in all), the step of `steps` (SCALE_STEPS; powers of two
    keep power-of-two scales: POWER_OF_TWO_STEPS) that fit_pairs finds, rounded to nearest there
    or stochastically with `rng` and then bounded; for other weights, their integers bounded.

    Rounded to nearest, the answer is remembered (_FITTED): the drift budget's search builds the
    same weights with the same scales once per trial, and fitting 21 steps was a third of a
    build (PP-OCRv4: 0.7 of 1.7 s)."""
    if rng is not None:
        return _portable_weight(value, qp, pairing, rng, steps)
    key = _FITTED.key(value, qp, pairing, steps)
    found = _FITTED.get(key)
    if found is None:
        found = _FITTED.put(key, _portable_weight(value, qp, pairing, None, steps))
    return found


def _portable_weight(value: np.ndarray, qp: QParams, pairing: Pairing, rng: np.random.Generator | None,
                     steps: np.ndarray | None) -> tuple[QParams, np.ndarray]:
    integers = quantize(value, qp, rng=rng)
    if not saturates(worst_pair_sums(integers, pairing)):
        return qp, integers
    rows = pairing.rows(value).shape[0]
    row_axis = value.ndim - 1 if pairing.kind == "k_rows" else 0
    per_row = qp.per_channel and qp.scale.size == rows and qp.axis == row_axis
    if np.any(qp.zero_point) or (qp.per_channel and not per_row):
        return qp, bound_pairs(integers, unrounded(value, qp), pairing)
    qmin, qmax = integer_range(qp.qtype, symmetric=True)
    fitted_integers, factors = fit_pairs(value, qp.scale, pairing, qmin, qmax, per_row=per_row,
                                         steps=SCALE_STEPS if steps is None else steps)
    scale = (qp.scale.astype(np.float64) * (factors if per_row else factors[0])).astype(np.float32)
    fitted = QParams(scale, qp.zero_point, qp.qtype, qp.axis)
    if rng is not None:
        fitted_integers = bound_pairs(quantize(value, fitted, rng=rng), unrounded(value, fitted), pairing)
    return fitted, fitted_integers.astype(qp.qtype.numpy_type)


class _Remembered:
    """The last answers of a pure function of arrays, up to `limit` bytes of answers, keyed by a
    digest of every argument (not by identity: each build makes new arrays of the same values)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.size = limit, 0
        self.answers: OrderedDict[bytes, tuple[QParams, np.ndarray]] = OrderedDict()

    @staticmethod
    def key(value: np.ndarray, qp: QParams, pairing: Pairing, steps) -> bytes:
        digest = hashlib.blake2b(digest_size=20)
        for array in (value, qp.scale, qp.zero_point, pairing.partner, np.asarray([] if steps is None else steps)):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.data)
        digest.update(f"{qp.qtype}|{qp.axis}|{pairing.kind}|{pairing.shape}".encode())
        return digest.digest()

    def get(self, key: bytes):
        found = self.answers.get(key)
        if found is not None:
            self.answers.move_to_end(key)
        return found

    def put(self, key: bytes, answer: tuple[QParams, np.ndarray]) -> tuple[QParams, np.ndarray]:
        for array in (answer[0].scale, answer[1]):
            array.setflags(write=False)  # shared by every build that asks again
        self.answers[key] = answer
        self.size += answer[1].nbytes
        while self.size > self.limit and len(self.answers) > 1:
            _, (_, integers) = self.answers.popitem(last=False)
            self.size -= integers.nbytes
        return answer


_FITTED = _Remembered(limit=256 << 20)  # int8 integers: a 1 GB float32 model's weights


def unrounded(value: np.ndarray, qp: QParams) -> np.ndarray:
    """w / S + Z: the integers before rounding, which a bounded pair stays closest to."""
    shape = [1] * value.ndim
    if qp.per_channel:
        shape[qp.axis] = -1
    scale = np.asarray(qp.scale, np.float64).reshape(shape if qp.per_channel else ())
    zero = np.asarray(qp.zero_point, np.float64).reshape(shape if qp.per_channel else ())
    return value.astype(np.float64) / scale + zero


def worst_pair_sums(q: np.ndarray, pairing: Pairing | None) -> tuple[int, int]:
    """The largest and smallest pair sum 255·(w_a⁺ + w_b⁺) / 255·(w_a⁻ + w_b⁻) any uint8
    activation can make in a 16-bit lane ((0, 0) for a kernel that pairs nothing)."""
    if pairing is None:
        return 0, 0
    rows = pairing.rows(np.asarray(q)).astype(np.int64)
    mate = np.where(pairing.partner >= 0, pairing.partner, np.arange(rows.shape[1]))
    other = np.where(pairing.partner >= 0, rows[:, mate], 0)
    high = (np.maximum(rows, 0) + np.maximum(other, 0)).max(initial=0)
    low = (np.minimum(rows, 0) + np.minimum(other, 0)).min(initial=0)
    return int(high) * UINT8_MAX, int(low) * UINT8_MAX


def saturates(sums: tuple[int, int]) -> bool:
    high, low = sums
    return high > INT16_MAX or low < INT16_MIN
