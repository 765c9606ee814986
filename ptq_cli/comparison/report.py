"""The typed result of `ptq compare` and its JSON form.

JSON schema (``schema_version`` 1; keys are only ever added, with a new version when one changes):

    {
      "schema_version": 1, "tool": "ptq", "tool_version": str,
      "reference": {"path": str|null, "sha256": str|null},
      "candidate": {"path": str|null, "sha256": str|null},
      "data": {"description": str, "samples": int, "labelled": int},
      "outputs": [{
          "name": str, "shape": [int], "samples": int,
          "nonfinite_candidate": int, "nonfinite_reference": int,   # rows left out of the averages
          "exact": bool,                                            # every measured error is zero
          "sqnr_db": num|null, "cosine_mean": num|null, "cosine_min": num|null,
          "max_abs_error": num|null, "mean_abs_error": num|null, "rmse": num|null,
          "error_histogram": {"log10_abs_edges": [num], "counts": [int]},
          "classification": null | {
              "classes": int, "top1_agreement": num, "top5_agreement": num|null,
              "labelled": int, "reference_top1": num|null, "candidate_top1": num|null,
              "reference_top5": num|null, "candidate_top5": num|null, "top1_drop_pt": num|null,
              "per_step": bool},                      # [N, T, C] scores: agreement counts steps
          "kind": "scores"|"step_scores"|"embedding"|"integer"|"tensor",   # see drift/kinds.py
          "exact_agreement": num|null,               # integer outputs: share of samples equal
          "sequence_agreement": num|null}],          # step scores: share decoded as the reference
                                                     # (greedy CTC decoding, drift/sequences.py)
      "layers": null | {
          "matched": [{"tensor": str, "candidate_tensor": str, "op_type": str, "node": str,
                       "quantized": bool, "matched_by": "name"|"graph"|"input"|"fused", "samples": int,
                       "nonfinite_candidate": int, "sqnr_db": num|null,
                       "input_sqnr_db": num|null,    # worst SQNR of the node's activation inputs
                       "local_sqnr_db": num|null,    # SQNR of the error the node adds itself
                       "weight_sqnr_db": num|null}], # worst per-output-channel SQNR of its weights
                                                     # "matched" is sorted worst SQNR first
          "unmatched": [{"tensor": str, "op_type": str, "node": str, "reason": str}],
          "sensitivity": null | {                          # each quantized node measured alone
              "mode": "isolated", "samples": int,
              "nodes": [{"node": str, "op_type": str,      # lowest output SQNR (worst) first
                         "sqnr_db": num|null,              # worst output SQNR with only it quantized
                         "top1_agreement": num|null, "nonfinite_candidate": int}],
              "fixed": [str],               # nodes whose weights have no float original (stay quantized)
              "suggested_exclude": [str]}},  # the worst nodes, below 20 dB, at most 5
      "latency": null | {"warmup": int, "runs": int, "inputs": int, "speedup": num,
          "reference": {"median_ms": num, "p10_ms": num, "p90_ms": num, "min_ms": num, "max_ms": num},
          "candidate": {...same keys...}},
      "thresholds": [{"name": "min_sqnr"|"max_top1_drop"|"min_cosine"|"min_agreement"|
                               "min_sequence_agreement", "limit": num,
                      "value": num|null, "passed": bool, "detail": str}],
      "passed": bool, "failures": [str], "notes": [str],
      "host": null | {                              # the machine the figures come from
          "kernels": "exact 32-bit"|"saturating 16-bit pairs",   # onnxruntime's u8·s8 kernels here
          "candidate_portable": bool,    # no int8 pair sum of the candidate can leave 16 bits
          "warning": str|null}           # the candidate can saturate where this host cannot show it
    }

Per-layer SQNR is cumulative (a tensor carries the error of everything upstream), so once it
nears 0 dB it no longer tells which node is to blame; "local_sqnr_db" (-10 log10(NSR_out - NSR_in)
with NSR = 10^(-SQNR/10); null when it adds no measurable error or has an unmeasured input) and
"weight_sqnr_db" are hints. The node to exclude is named by "sensitivity": the model's outputs
with only that node's quantization on, every other node reading float data (see sensitivity.py).
Graph inputs that the candidate quantizes appear with op_type "(graph input)".
Numbers that are not finite (an infinite SQNR of identical outputs, an undefined figure) are
written as null; "exact" tells the two apart. Fractions (agreement, accuracy, cosine) are in
0..1; "top1_drop_pt" is in percentage points: accuracy drop with labels, else 100 * (1 - agreement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ptq_cli import __version__
from ptq_cli.drift.report import (ClassReport, OutputReport, SensitivityReport, SensitivityRow,  # noqa: F401
                                  ThresholdResult, num as _num)

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelRef:
    path: str | None
    sha256: str | None

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class LayerReport:
    tensor: str
    candidate_tensor: str
    op_type: str
    node: str
    quantized: bool
    matched_by: str
    samples: int
    nonfinite_candidate: int
    sqnr_db: float
    input_sqnr_db: float | None = None    # worst SQNR of the node's activation inputs
    weight_sqnr_db: float | None = None   # worst per-output-channel SQNR of its quantized weights

    @property
    def local_sqnr_db(self) -> float | None:
        """The SQNR of the error this node adds itself: -10 log10(NSR_out - NSR_in), where
        NSR = 10^(-SQNR/10) and NSR_in is that of its worst input. Noise that adds up independently
        through the node gives back the node's own SQNR; +inf when it adds nothing measurable."""
        if self.input_sqnr_db is None or self.nonfinite_candidate or math.isnan(self.sqnr_db):
            return None
        added = 10.0 ** (-self.sqnr_db / 10.0) - 10.0 ** (-self.input_sqnr_db / 10.0)
        return math.inf if added <= 0 else -10.0 * math.log10(added)

    def to_dict(self) -> dict:
        return {
            "tensor": self.tensor, "candidate_tensor": self.candidate_tensor, "op_type": self.op_type,
            "node": self.node, "quantized": self.quantized, "matched_by": self.matched_by,
            "samples": self.samples, "nonfinite_candidate": self.nonfinite_candidate,
            "sqnr_db": _num(self.sqnr_db), "input_sqnr_db": _num(self.input_sqnr_db),
            "local_sqnr_db": _num(self.local_sqnr_db), "weight_sqnr_db": _num(self.weight_sqnr_db),
        }


@dataclass(frozen=True)
class UnmatchedLayer:
    tensor: str
    op_type: str
    node: str
    reason: str

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "op_type": self.op_type, "node": self.node, "reason": self.reason}


@dataclass(frozen=True)
class LayersReport:
    matched: tuple[LayerReport, ...]      # worst SQNR first
    unmatched: tuple[UnmatchedLayer, ...]
    sensitivity: SensitivityReport | None = None

    def to_dict(self) -> dict:
        return {"matched": [m.to_dict() for m in self.matched],
                "unmatched": [u.to_dict() for u in self.unmatched],
                "sensitivity": self.sensitivity.to_dict() if self.sensitivity else None}


@dataclass(frozen=True)
class TimingStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "min_ms": self.min_ms, "max_ms": self.max_ms}


@dataclass(frozen=True)
class LatencyReport:
    warmup: int
    runs: int
    inputs: int
    reference: TimingStats
    candidate: TimingStats

    @property
    def speedup(self) -> float:
        """Reference median / candidate median: above 1 the candidate is faster."""
        return self.reference.median_ms / self.candidate.median_ms if self.candidate.median_ms else math.nan

    def to_dict(self) -> dict:
        return {"warmup": self.warmup, "runs": self.runs, "inputs": self.inputs,
                "speedup": _num(self.speedup), "reference": self.reference.to_dict(),
                "candidate": self.candidate.to_dict()}


@dataclass(frozen=True)
class HostReport:
    """The class of integer kernels onnxruntime runs here (model/kernels.py) and whether the
    candidate's figures would hold on the other class."""

    kernels: str  # HostKernels.value
    candidate_portable: bool  # no pair sum of the candidate's int8 weights can saturate 16 bits
    warning: str | None = None  # set when the candidate can saturate elsewhere and this host hides it

    def to_dict(self) -> dict:
        return {"kernels": self.kernels, "candidate_portable": self.candidate_portable, "warning": self.warning}


@dataclass(frozen=True)
class CompareReport:
    reference: ModelRef
    candidate: ModelRef
    data_description: str
    samples: int
    labelled: int
    outputs: tuple[OutputReport, ...]
    layers: LayersReport | None = None
    latency: LatencyReport | None = None
    thresholds: tuple[ThresholdResult, ...] = ()
    notes: tuple[str, ...] = field(default=())
    host: HostReport | None = None

    @property
    def failures(self) -> tuple[str, ...]:
        """One line per missed threshold; empty when every threshold passed."""
        return tuple(f"{t.name}: {t.detail}" for t in self.thresholds if not t.passed)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION, "tool": "ptq", "tool_version": __version__,
            "reference": self.reference.to_dict(), "candidate": self.candidate.to_dict(),
            "data": {"description": self.data_description, "samples": self.samples,
                     "labelled": self.labelled},
            "outputs": [o.to_dict() for o in self.outputs],
            "layers": self.layers.to_dict() if self.layers else None,
            "latency": self.latency.to_dict() if self.latency else None,
            "thresholds": [t.to_dict() for t in self.thresholds],
            "passed": self.passed, "failures": list(self.failures), "notes": list(self.notes),
            "host": self.host.to_dict() if self.host else None,
        }
