"""The figures of one model output, accumulated over batches and judged by its kind (see kinds.py)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from ptq_cli.drift.kinds import OutputKind
from ptq_cli.drift.metrics import (ClassAccumulator, ErrorAccumulator, LabelOutOfRange, PerfectRows, as_rows,
                                   hist_edges)
from ptq_cli.drift.report import ClassReport, OutputReport
from ptq_cli.drift.sequences import SequenceAccumulator, best_classes, class_counts
from ptq_cli.errors import DataError, ModelError


@dataclass(frozen=True)
class PerfectBatch:
    """What one batch of an output adds to its figures when the candidate equals the reference
    there (the best any candidate can do on it, labels aside): OutputState.update's bookkeeping
    with nothing to disagree."""

    errors: PerfectRows
    rows: int = 0           # rows of an integer output, or of class scores
    classes: int = 0        # classes of a scores / step-scores output (0: none)
    class_rows: int = 0     # rows (or steps) whose best class is compared
    sequences: int = 0      # samples of a [N, T, C] output decoded as sequences
    counts: dict[int, int] = field(default_factory=dict)  # reference best classes of those steps

    @staticmethod
    def of(kind: OutputKind, ref, size: int) -> "PerfectBatch | None":
        if kind is OutputKind.OTHER or not isinstance(ref, np.ndarray):
            return None
        r = as_rows(ref, size)
        batch = PerfectBatch(PerfectRows.of(r), rows=r.shape[0] if kind is OutputKind.INTEGER else 0)
        if kind is OutputKind.SCORES and ref.ndim == 2 and ref.shape[1] > 1:
            return PerfectBatch(batch.errors, classes=ref.shape[1], class_rows=r.shape[0])
        if kind is OutputKind.STEP_SCORES and ref.ndim == 3:
            decoded = ref.shape[0] == size
            return PerfectBatch(batch.errors, classes=ref.shape[2], class_rows=ref.shape[0] * ref.shape[1],
                                sequences=ref.shape[0] if decoded else 0,
                                counts=class_counts(best_classes(ref)) if decoded else {})
        return batch


class OutputState:
    """Streaming figures of one (reference output, candidate output) pair."""

    def __init__(self, name: str, cand_name: str, kind: OutputKind, *, histogram: bool = True) -> None:
        self.name, self.cand_name, self.kind = name, cand_name, kind
        self.errors = ErrorAccumulator(histogram=histogram)
        self.classes: ClassAccumulator | None = None
        self.sequences = SequenceAccumulator() if kind is OutputKind.STEP_SCORES else None
        self.shape: tuple[int, ...] | None = None
        self.equal = self.rows = 0

    def update(self, ref: np.ndarray, cand: np.ndarray, size: int, labels=None) -> None:
        if self.kind is OutputKind.OTHER or not isinstance(ref, np.ndarray) or not isinstance(cand, np.ndarray):
            return  # sequences and maps: no figures to take
        if ref.shape != cand.shape:
            raise ModelError(f"output {self.name!r} has shape {list(ref.shape)} in the reference but "
                             f"{list(cand.shape)} in the candidate; are they the same model?")
        self._note_shape(ref.shape)
        r, c = as_rows(ref, size), as_rows(cand, size)
        if self.kind is OutputKind.INTEGER:
            self.equal += int((r == c).all(axis=1).sum())
            self.rows += r.shape[0]
        self.errors.update(r, c)
        if self.kind is OutputKind.SCORES and ref.ndim == 2 and ref.shape[1] > 1:
            try:
                self._classes(ref.shape[1]).update(r, c, list(labels) if labels and r.shape[0] == size else None)
            except LabelOutOfRange as exc:
                raise DataError(f"label {exc.label} is not a class of output {self.name!r}, which has "
                                f"{exc.classes} classes (0..{exc.classes - 1}); are the labels for this "
                                "model, and 0-based?") from None
        elif self.kind is OutputKind.STEP_SCORES and ref.ndim == 3:
            # Every step is one prediction; labels belong to whole samples, not to steps.
            classes = ref.shape[2]
            steps_ref = ref.reshape(-1, classes).astype(np.float64, copy=False)
            self._classes(classes).update(steps_ref, cand.reshape(-1, classes).astype(np.float64, copy=False), None)
            if ref.shape[0] == size:  # batch-major [N, T, C]; a time-major [T, N, C] is not decoded
                self.sequences.update(ref, cand)

    def best_case(self, rest) -> "OutputState":
        """A copy that has also seen the batches `rest` (PerfectBatch or None each) with a
        candidate equal to the reference: every figure at the best it can still reach."""
        best = copy.copy(self)
        errors = classes = sequences = None
        for batch in rest:
            if batch is None:
                continue
            errors = (errors or self.errors).best_case(batch.errors)
            if batch.classes:
                classes = (classes or self.classes or ClassAccumulator(batch.classes)).best_case(batch.class_rows)
            if batch.sequences:
                sequences = (sequences or self.sequences).best_case(batch.sequences, batch.counts)
            best.equal, best.rows = best.equal + batch.rows, best.rows + batch.rows
        best.errors = errors or self.errors
        best.classes = classes or self.classes
        best.sequences = sequences or self.sequences
        return best

    def merge(self, other: "OutputState") -> None:
        """Fold in the figures of the batches `other` saw, as if they came after these: exact
        when `other` holds one batch (see ErrorAccumulator.merge), so a cluster's per-batch
        states folded in batch order give the single run's report."""
        if other.shape is not None:
            self._note_shape(other.shape)
        self.equal += other.equal
        self.rows += other.rows
        self.errors.merge(other.errors)
        if other.classes is not None:
            self._classes(other.classes.classes).merge(other.classes)
        if other.sequences is not None and self.sequences is not None:
            self.sequences.merge(other.sequences)

    def _classes(self, classes: int) -> ClassAccumulator:
        if self.classes is None:
            self.classes = ClassAccumulator(classes)
        return self.classes

    def _note_shape(self, shape: tuple[int, ...]) -> None:
        """The first batch's shape; a dimension that varies between batches becomes -1."""
        shape = tuple(int(d) for d in shape)
        if self.shape is None:
            self.shape = shape
        elif len(shape) == len(self.shape):
            self.shape = tuple(a if a == b else -1 for a, b in zip(self.shape, shape))

    def report(self) -> OutputReport:
        s = self.errors.summary()
        cls = None
        if self.classes is not None:
            k = self.classes.summary()
            cls = ClassReport(self.classes.classes, k.top1_agreement, k.top5_agreement, k.labelled,
                              k.reference_top1, k.candidate_top1, k.reference_top5, k.candidate_top5,
                              per_step=self.kind is OutputKind.STEP_SCORES)
        exact = self.equal / self.rows if self.kind is OutputKind.INTEGER and self.rows else None
        sequences = self.sequences.agreement() if self.sequences is not None and self.sequences.pairs else None
        return OutputReport(self.name, self.shape or (), s.samples, s.nonfinite_candidate,
                            s.nonfinite_reference, s.sqnr_db, s.cosine_mean, s.cosine_min, s.max_abs,
                            s.mean_abs, s.rmse, tuple(float(e) for e in hist_edges()), s.hist_counts, cls,
                            kind=self.kind, exact_agreement=exact,
                            sequence_agreement=sequences)
