"""The typed figures of drift measurement, shared by `ptq compare` and `ptq quantize`'s budget.

Numbers that are not finite are written as null in the dict forms; `exact` tells an infinite
SQNR of identical outputs from an undefined one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptq_cli.drift.kinds import OutputKind


def num(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


_num = num


@dataclass(frozen=True)
class ClassReport:
    classes: int
    top1_agreement: float
    top5_agreement: float | None
    labelled: int
    reference_top1: float | None
    candidate_top1: float | None
    reference_top5: float | None
    candidate_top5: float | None
    per_step: bool = False  # a [N, T, C] output: agreement counts steps, not samples

    @property
    def top1_drop_pt(self) -> float | None:
        """Percentage points lost: accuracy drop with labels, else disagreement with the reference."""
        if self.reference_top1 is not None and self.candidate_top1 is not None:
            return 100.0 * (self.reference_top1 - self.candidate_top1)
        if math.isfinite(self.top1_agreement):
            return 100.0 * (1.0 - self.top1_agreement)
        return None

    def to_dict(self) -> dict:
        return {
            "classes": self.classes, "top1_agreement": _num(self.top1_agreement),
            "top5_agreement": _num(self.top5_agreement), "labelled": self.labelled,
            "reference_top1": _num(self.reference_top1), "candidate_top1": _num(self.candidate_top1),
            "reference_top5": _num(self.reference_top5), "candidate_top5": _num(self.candidate_top5),
            "top1_drop_pt": _num(self.top1_drop_pt), "per_step": self.per_step,
        }


@dataclass(frozen=True)
class OutputReport:
    name: str
    shape: tuple[int, ...]
    samples: int
    nonfinite_candidate: int
    nonfinite_reference: int
    sqnr_db: float
    cosine_mean: float
    cosine_min: float
    max_abs_error: float
    mean_abs_error: float
    rmse: float
    hist_edges: tuple[float, ...]
    hist_counts: tuple[int, ...]
    classification: ClassReport | None = None
    kind: OutputKind = OutputKind.TENSOR
    exact_agreement: float | None = None  # INTEGER outputs: share of samples equal to the reference's
    # STEP_SCORES outputs: share of samples whose greedy decoding is the reference's (sequences.py)
    sequence_agreement: float | None = None

    @property
    def exact(self) -> bool:
        return self.samples > 0 and self.max_abs_error == 0.0

    def to_dict(self) -> dict:
        return {
            "name": self.name, "shape": list(self.shape), "samples": self.samples,
            "nonfinite_candidate": self.nonfinite_candidate,
            "nonfinite_reference": self.nonfinite_reference, "exact": self.exact,
            "sqnr_db": _num(self.sqnr_db), "cosine_mean": _num(self.cosine_mean),
            "cosine_min": _num(self.cosine_min), "max_abs_error": _num(self.max_abs_error),
            "mean_abs_error": _num(self.mean_abs_error), "rmse": _num(self.rmse),
            "error_histogram": {"log10_abs_edges": list(self.hist_edges), "counts": list(self.hist_counts)},
            "classification": self.classification.to_dict() if self.classification else None,
            "kind": self.kind.value, "exact_agreement": _num(self.exact_agreement),
            "sequence_agreement": _num(self.sequence_agreement),
        }

    @property
    def top1_agreement(self) -> float | None:
        """Agreement with the reference: of the top-1 class (per step for step scores), or of the
        whole value for integer outputs; None for embeddings and plain tensors."""
        if self.classification is not None:
            return self.classification.top1_agreement
        return self.exact_agreement


@dataclass(frozen=True)
class SensitivityRow:
    node: str
    op_type: str
    sqnr_db: float                  # worst output SQNR of this variant against the reference
    top1_agreement: float | None    # of the first output, when it is classification-like
    nonfinite_candidate: int = 0

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "sqnr_db": _num(self.sqnr_db),
                "top1_agreement": _num(self.top1_agreement), "nonfinite_candidate": self.nonfinite_candidate}


# A node whose quantization alone leaves the outputs below this SQNR is worth excluding: at 20 dB
# a classifier's top-1 already disagrees with the float model on a few percent of the samples.
OFFENDER_SQNR_DB = 20.0
OFFENDERS_SHOWN = 5


@dataclass(frozen=True)
class SensitivityReport:
    samples: int
    rows: tuple[SensitivityRow, ...]  # lowest output SQNR (most harmful node) first
    fixed: tuple[str, ...] = ()      # nodes with a quantized constant that has no float original

    def offenders(self, limit: int = OFFENDERS_SHOWN) -> tuple[SensitivityRow, ...]:
        """The nodes to try excluding first: the worst `limit` of those below OFFENDER_SQNR_DB."""
        harmful = [r for r in self.rows if r.node and (r.nonfinite_candidate or r.sqnr_db < OFFENDER_SQNR_DB)]
        return tuple(harmful[:limit])

    def to_dict(self) -> dict:
        return {"mode": "isolated", "samples": self.samples,
                "nodes": [r.to_dict() for r in self.rows], "fixed": list(self.fixed),
                "suggested_exclude": [r.node for r in self.offenders()]}


@dataclass(frozen=True)
class ThresholdResult:
    name: str           # "min_sqnr", "max_top1_drop", "min_cosine"
    limit: float
    value: float | None
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "limit": self.limit, "value": _num(self.value),
                "passed": self.passed, "detail": self.detail}
