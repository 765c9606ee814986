"""Streaming accumulators for the drift between a reference and a candidate tensor.

Everything is accumulated in float64 sums, so memory stays bounded whatever the number of samples:

    SQNR (dB) = 10 * log10( sum(ref^2) / sum((ref - cand)^2) )     (infinite when the error is zero)
    cosine    = mean over samples of <ref, cand> / (|ref| |cand|)   (1 when both are zero)
    RMSE      = sqrt( sum((ref - cand)^2) / n ),  mean abs = sum|ref - cand| / n,  max abs

A "sample" is one row along the batch axis. Rows where the candidate (or the reference) holds a
NaN or an Inf are counted and reported, and left out of every average above: one NaN would
otherwise turn every figure into NaN and hide how many samples are affected. For top-k agreement
and accuracy, such a row counts as a miss, because a NaN prediction is not a correct answer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

# Fixed log10 bins for |error|, so the histogram streams without knowing the range in advance.
HIST_LOG10_LO = -8.0
HIST_LOG10_HI = 4.0
HIST_BINS_PER_DECADE = 2


def hist_edges() -> np.ndarray:
    """Bin edges of the |error| histogram, in log10 units (first bin also holds exact zeros)."""
    count = int((HIST_LOG10_HI - HIST_LOG10_LO) * HIST_BINS_PER_DECADE)
    return np.linspace(HIST_LOG10_LO, HIST_LOG10_HI, count + 1)


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10*log10(signal/noise); +inf when the noise is zero, nan when there is no signal at all."""
    if noise_power == 0.0:
        return math.inf if signal_power > 0.0 else math.nan
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def as_rows(array: np.ndarray, batch_size: int) -> np.ndarray:
    """View an output as (samples, features) in float64; an output without a batch axis is one row."""
    arr = np.asarray(array)
    if arr.ndim >= 1 and arr.shape[0] == batch_size and batch_size > 0:
        return arr.reshape(batch_size, -1).astype(np.float64, copy=False)
    return arr.reshape(1, -1).astype(np.float64, copy=False)


def is_classification(shape: tuple[int, ...]) -> bool:
    """Classification-like: rank 2 with more than one class (logits or probabilities)."""
    return len(shape) == 2 and shape[1] > 1


@dataclass(frozen=True)
class ErrorSummary:
    """The finished figures of an ErrorAccumulator."""

    samples: int
    nonfinite_candidate: int
    nonfinite_reference: int
    sqnr_db: float
    cosine_mean: float
    cosine_min: float
    max_abs: float
    mean_abs: float
    rmse: float
    hist_counts: tuple[int, ...]


@dataclass(frozen=True)
class PerfectRows:
    """What one batch of reference rows adds to the error figures of a candidate that matches the
    reference exactly on it: the best any candidate can do there."""

    rows: int         # rows finite in the reference (the others count in no average)
    elements: int
    energy: float     # sum(ref^2) of those rows, summed as ErrorAccumulator.update sums it

    @staticmethod
    def of(ref: np.ndarray) -> "PerfectRows":
        """`ref`: (samples, features) in float64, see `as_rows`."""
        keep = np.isfinite(ref).all(axis=1)
        r = ref[keep]
        return PerfectRows(int(keep.sum()), int(r.size), float(np.sum(r * r)) if keep.any() else 0.0)


class ErrorAccumulator:
    """Accumulates the error figures of one tensor over batches (see the module docstring)."""

    def __init__(self, *, histogram: bool = True) -> None:
        self.samples = 0          # rows measured (finite in both models)
        self.nonfinite_cand = 0
        self.nonfinite_ref = 0
        self.elements = 0
        self.sum_sq_ref = 0.0
        self.sum_sq_err = 0.0
        self.sum_abs_err = 0.0
        self.max_abs_err = 0.0
        self.sum_cos = 0.0
        self.min_cos = math.inf
        self.hist = np.zeros(len(hist_edges()) - 1, dtype=np.int64) if histogram else None

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """Add a batch of rows: both arrays are (samples, features), see `as_rows`."""
        if ref.shape != cand.shape:
            raise ValueError(f"shapes differ: {ref.shape} vs {cand.shape}")
        cand_ok = np.isfinite(cand).all(axis=1)
        ref_ok = np.isfinite(ref).all(axis=1)
        self.nonfinite_ref += int((~ref_ok).sum())
        self.nonfinite_cand += int((ref_ok & ~cand_ok).sum())
        keep = cand_ok & ref_ok
        if not keep.any():
            return
        r, c = ref[keep], cand[keep]
        err = r - c
        abs_err = np.abs(err)
        self.samples += int(keep.sum())
        self.elements += err.size
        self.sum_sq_ref += float(np.sum(r * r))
        self.sum_sq_err += float(np.sum(err * err))
        self.sum_abs_err += float(abs_err.sum())
        if abs_err.size:
            self.max_abs_err = max(self.max_abs_err, float(abs_err.max()))
        cos = _row_cosine(r, c)
        self.sum_cos += float(cos.sum())
        self.min_cos = min(self.min_cos, float(cos.min()))
        if self.hist is not None:
            self._add_histogram(abs_err.ravel())

    def best_case(self, rest: "PerfectRows") -> "ErrorAccumulator":
        """A copy that has also seen `rest` with a candidate equal to the reference: no error,
        cosine 1. No candidate can end with a higher SQNR or cosine (see DriftProbe.measure)."""
        best = copy.copy(self)
        best.hist = None
        best.samples += rest.rows
        best.elements += rest.elements
        best.sum_sq_ref += rest.energy
        best.sum_cos += float(rest.rows)
        if rest.rows:
            best.min_cos = min(best.min_cos, 1.0)
        return best

    def _add_histogram(self, abs_err: np.ndarray) -> None:
        edges = hist_edges()
        with np.errstate(divide="ignore"):
            logs = np.log10(abs_err)
        # Zeros and tiny errors land in the first bin, huge ones in the last: nothing is dropped.
        logs = np.clip(logs, edges[0], edges[-1])
        self.hist += np.histogram(logs, bins=edges)[0]

    def merge(self, other: "ErrorAccumulator") -> None:
        """Add `other`'s figures. Counts, max and min merge exactly in any order; the float sums
        are the ones `update` would have made when `other` holds one batch and batches are merged
        in their order (0.0 + x is x), which is how comparison/sharded.py uses it."""
        self.samples += other.samples
        self.nonfinite_cand += other.nonfinite_cand
        self.nonfinite_ref += other.nonfinite_ref
        self.elements += other.elements
        self.sum_sq_ref += other.sum_sq_ref
        self.sum_sq_err += other.sum_sq_err
        self.sum_abs_err += other.sum_abs_err
        self.max_abs_err = max(self.max_abs_err, other.max_abs_err)
        self.sum_cos += other.sum_cos
        self.min_cos = min(self.min_cos, other.min_cos)
        if self.hist is not None and other.hist is not None:
            self.hist += other.hist

    def summary(self) -> ErrorSummary:
        n = self.elements
        return ErrorSummary(
            samples=self.samples,
            nonfinite_candidate=self.nonfinite_cand,
            nonfinite_reference=self.nonfinite_ref,
            sqnr_db=sqnr_db(self.sum_sq_ref, self.sum_sq_err) if n else math.nan,
            cosine_mean=self.sum_cos / self.samples if self.samples else math.nan,
            cosine_min=self.min_cos if self.samples else math.nan,
            max_abs=self.max_abs_err if n else math.nan,
            mean_abs=self.sum_abs_err / n if n else math.nan,
            rmse=math.sqrt(self.sum_sq_err / n) if n else math.nan,
            hist_counts=tuple(int(v) for v in self.hist) if self.hist is not None else (),
        )


def _row_cosine(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    dot = np.sum(r * c, axis=1)
    norm = np.sqrt(np.sum(r * r, axis=1)) * np.sqrt(np.sum(c * c, axis=1))
    both_zero = (np.sum(r * r, axis=1) == 0) & (np.sum(c * c, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


@dataclass(frozen=True)
class SqnrSummary:
    samples: int
    nonfinite_candidate: int
    sqnr_db: float


class SqnrAccumulator:
    """SQNR only, for the many intermediate tensors of --per-layer: no float64 copies, no
    histogram, no cosine; the sums are still accumulated in float64."""

    def __init__(self) -> None:
        self.samples = 0
        self.nonfinite_cand = 0
        self.sum_sq_ref = 0.0
        self.sum_sq_err = 0.0

    def update(self, ref: np.ndarray, cand: np.ndarray, batch_size: int) -> None:
        r, c = _flat_rows(ref, batch_size), _flat_rows(cand, batch_size)
        if r.shape != c.shape:
            raise ValueError(f"shapes differ: {r.shape} vs {c.shape}")
        err = c - r
        ref_sq = np.einsum("ij,ij->i", r, r, dtype=np.float64)
        err_sq = np.einsum("ij,ij->i", err, err, dtype=np.float64)
        # A NaN/Inf anywhere in a row makes its sum non-finite: the cheap test for the rare case.
        ref_ok, err_ok = np.isfinite(ref_sq), np.isfinite(err_sq)
        self.nonfinite_cand += int((ref_ok & ~err_ok).sum())
        keep = ref_ok & err_ok
        self.samples += int(keep.sum())
        self.sum_sq_ref += float(ref_sq[keep].sum())
        self.sum_sq_err += float(err_sq[keep].sum())

    def summary(self) -> SqnrSummary:
        value = sqnr_db(self.sum_sq_ref, self.sum_sq_err) if self.samples else math.nan
        return SqnrSummary(self.samples, self.nonfinite_cand, value)


def _flat_rows(array: np.ndarray, batch_size: int) -> np.ndarray:
    arr = np.asarray(array)
    rows = batch_size if arr.ndim >= 1 and arr.shape[0] == batch_size and batch_size > 0 else 1
    return arr.reshape(rows, -1)


@dataclass(frozen=True)
class ClassSummary:
    """Top-k figures of a classification-like output; None where they do not apply."""

    samples: int
    top1_agreement: float
    top5_agreement: float | None
    reference_top1: float | None
    candidate_top1: float | None
    reference_top5: float | None
    candidate_top5: float | None
    labelled: int


class LabelOutOfRange(ValueError):
    """A label that is not a class index of the output (OutputState names the output)."""

    def __init__(self, label: int, classes: int) -> None:
        super().__init__(label, classes)
        self.label, self.classes = label, classes


class ClassAccumulator:
    """Top-1/top-5 agreement with the reference and, given labels, accuracy of each model.

    top-5 agreement: the reference's top-1 class is among the candidate's five best (as top-5
    accuracy would be with the reference as the label). It is None with fewer than 6 classes,
    where it would be trivially 1.
    """

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.samples = 0
        self.agree1 = 0
        self.agree5 = 0
        self.labelled = 0
        self.ref_hits = [0, 0]   # top-1, top-5
        self.cand_hits = [0, 0]

    def update(self, ref: np.ndarray, cand: np.ndarray, labels: list[int | None] | None) -> None:
        bad = ~np.isfinite(cand).all(axis=1)
        ref = np.nan_to_num(ref, nan=-np.inf)
        cand = np.nan_to_num(cand, nan=-np.inf)
        ref_best = ref.argmax(axis=1)
        self.samples += ref.shape[0]
        self.agree1 += int(((cand.argmax(axis=1) == ref_best) & ~bad).sum())
        self.agree5 += int(((rank_of(cand, ref_best) < 5) & ~bad).sum())
        if not labels:
            return
        rows = [row for row, label in enumerate(labels[: ref.shape[0]]) if label is not None]
        if not rows:
            return
        for row in rows:
            if not 0 <= labels[row] < self.classes:
                raise LabelOutOfRange(labels[row], self.classes)
        picked = np.asarray(rows)
        truth = np.asarray([labels[row] for row in rows])
        ref_rank, cand_rank = rank_of(ref[picked], truth), rank_of(cand[picked], truth)
        finite = ~bad[picked]
        self.labelled += len(rows)
        self.ref_hits[0] += int((ref_rank == 0).sum())
        self.ref_hits[1] += int((ref_rank < 5).sum())
        self.cand_hits[0] += int(((cand_rank == 0) & finite).sum())
        self.cand_hits[1] += int(((cand_rank < 5) & finite).sum())

    def best_case(self, rows: int) -> "ClassAccumulator":
        """A copy that has also seen `rows` unlabelled rows on which the candidate agrees."""
        best = copy.copy(self)
        best.samples, best.agree1, best.agree5 = self.samples + rows, self.agree1 + rows, self.agree5 + rows
        return best

    def merge(self, other: "ClassAccumulator") -> None:
        """Add `other`'s counts (integers: exact in any order)."""
        if other.classes != self.classes:
            raise ValueError(f"cannot merge top-k counts of {self.classes} and {other.classes} classes")
        self.samples += other.samples
        self.agree1 += other.agree1
        self.agree5 += other.agree5
        self.labelled += other.labelled
        self.ref_hits = [a + b for a, b in zip(self.ref_hits, other.ref_hits)]
        self.cand_hits = [a + b for a, b in zip(self.cand_hits, other.cand_hits)]

    def summary(self) -> ClassSummary:
        n, k = self.samples, self.labelled
        top5_ok = self.classes > 5
        return ClassSummary(
            samples=n,
            top1_agreement=self.agree1 / n if n else math.nan,
            top5_agreement=(self.agree5 / n if n else math.nan) if top5_ok else None,
            reference_top1=self.ref_hits[0] / k if k else None,
            candidate_top1=self.cand_hits[0] / k if k else None,
            reference_top5=(self.ref_hits[1] / k if k else None) if top5_ok else None,
            candidate_top5=(self.cand_hits[1] / k if k else None) if top5_ok else None,
            labelled=k,
        )


def rank_of(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Where class `classes[i]` stands in row i of `scores`, best first (0 = top-1), ties resolved by
    lower index as a stable sort of the scores, descending, would place it: the top-k membership
    of one class in O(classes) per row, not a sort (a CTC head scores 6,625 classes per step)."""
    picked = np.take_along_axis(scores, classes[:, None], axis=1)
    above = (scores > picked).sum(axis=1)
    tied_before = ((scores == picked) & (np.arange(scores.shape[1]) < classes[:, None])).sum(axis=1)
    return above + tied_before
