"""The measurement loop: run both models batch by batch and feed the streaming accumulators.

Output metrics come from the two models exactly as given. Per-layer figures come from a second
pair of sessions that expose the matched tensors as extra outputs: onnxruntime cannot fuse a
QDQ group whose inner tensor is a graph output, so those sessions may compute slightly differently
from the real candidate, and must not be the ones the accuracy figures are taken from.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from tqdm import tqdm

from ptq_cli.drift.kinds import OutputKind
from ptq_cli.drift.layers import LayerMatch, Matching
from ptq_cli.drift.metrics import SqnrAccumulator
from ptq_cli.drift.outputs import OutputState
from ptq_cli.comparison.report import (LayerReport, LayersReport, OutputReport,
                                    UnmatchedLayer)
from ptq_cli.drift.runtime import make_session, run


@dataclass(frozen=True)
class Measured:
    outputs: tuple[OutputReport, ...]
    layers: LayersReport | None
    samples: int
    labelled: int
    kept_inputs: tuple[dict[str, np.ndarray], ...]   # the first batches, reused (latency, sensitivity)


class _LayerState:
    """Per-layer accumulators and the two sessions that expose the matched tensors."""

    def __init__(self, reference: onnx.ModelProto, candidate: onnx.ModelProto, matching: Matching) -> None:
        self.matches = list(matching.matches)
        self.unmatched = list(matching.unmatched)
        self.ref_names = sorted({m.reference for m in self.matches})
        self.cand_names = sorted({m.candidate for m in self.matches})
        self.ref_session = make_session(reference, "reference", extra_outputs=tuple(self.ref_names))
        self.cand_session = make_session(candidate, "candidate", extra_outputs=tuple(self.cand_names))
        self.acc = {m.reference: SqnrAccumulator() for m in self.matches}
        self.rejected: dict[str, str] = {}
        self.graph_inputs = {v.name for v in reference.graph.input}

    def update(self, feeds: dict[str, np.ndarray], size: int) -> None:
        if not self.matches:
            return
        ref = run(self.ref_session, feeds, "reference", self.ref_names)
        cand = run(self.cand_session, feeds, "candidate", self.cand_names)
        for m in self.matches:
            if m.reference in self.rejected:
                continue
            r, c = ref[m.reference], cand[m.candidate]
            reason = _incomparable(r, c)
            if reason:
                self.rejected[m.reference] = reason
                continue
            self.acc[m.reference].update(r, c, size)

    def report(self) -> LayersReport:
        rows, unmatched = [], [UnmatchedLayer(u.reference, u.op_type, u.node, u.reason) for u in self.unmatched]
        sqnr = {m.reference: self.acc[m.reference].summary() for m in self.matches}
        for m in self.matches:
            if m.reference in self.rejected:
                unmatched.append(UnmatchedLayer(m.reference, m.op_type, m.node, self.rejected[m.reference]))
                continue
            rows.append(_layer_row(m, sqnr, self.graph_inputs))
        rows.sort(key=_worst_first)
        return LayersReport(tuple(rows), tuple(unmatched))


def _incomparable(ref: np.ndarray, cand: np.ndarray) -> str | None:
    if not np.issubdtype(ref.dtype, np.floating):
        return f"not a float tensor ({ref.dtype})"
    if not np.issubdtype(cand.dtype, np.floating):
        return f"candidate tensor is {cand.dtype}, not float"
    if ref.shape != cand.shape:
        return f"shape {list(ref.shape)} differs from the candidate's {list(cand.shape)}"
    return None


def _layer_row(m: LayerMatch, sqnr: dict, graph_inputs: set[str]) -> LayerReport:
    s = sqnr[m.reference]
    # An input that is neither measured nor a graph input (an unmatched one) leaves it unknown.
    inputs = [math.inf if name in graph_inputs and name not in sqnr else
              (sqnr[name].sqnr_db if name in sqnr else None) for name in m.inputs]
    inputs = [None if v is None or math.isnan(v) else v for v in inputs]
    input_sqnr = None if not inputs or None in inputs else min(inputs)
    return LayerReport(m.reference, m.candidate, m.op_type, m.node, m.quantized, m.how,
                       s.samples, s.nonfinite_candidate, s.sqnr_db, input_sqnr, m.weight_sqnr_db)


def _worst_first(row: LayerReport) -> tuple:
    # NaN (nothing measured) sorts last; NaN/Inf in the candidate sorts first: that is the worst.
    if row.nonfinite_candidate:
        return (0, -np.inf, row.tensor)
    value = row.sqnr_db
    return (2, 0.0, row.tensor) if np.isnan(value) else (1, value, row.tensor)


def measure(reference: onnx.ModelProto, candidate: onnx.ModelProto, batches: Iterable,
            output_pairs: list[tuple[str, str]], kinds: dict[str, OutputKind], *, matching: Matching | None, total: int | None,
            progress: bool, keep_inputs: int = 0, keep_samples: int = 0) -> Measured:
    """Run both models on every batch (objects with .feeds, .size, .labels) and summarise; keep the
    first batches' feeds, at least `keep_inputs` batches and `keep_samples` samples."""
    ref_session = make_session(reference, "reference")
    cand_session = make_session(candidate, "candidate")
    states = [OutputState(r, c, kinds.get(r, OutputKind.TENSOR)) for r, c in output_pairs]
    layers = _LayerState(reference, candidate, matching) if matching is not None else None
    samples = labelled = 0
    kept: list[dict[str, np.ndarray]] = []
    kept_samples = 0
    with tqdm(total=total, unit="sample", desc="compare", disable=not progress, file=sys.stderr) as bar:
        for batch in batches:
            ref = run(ref_session, batch.feeds, "reference", [r for r, _ in output_pairs])
            cand = run(cand_session, batch.feeds, "candidate", [c for _, c in output_pairs])
            for state in states:
                state.update(ref[state.name], cand[state.cand_name], batch.size, batch.labels)
            if layers is not None:
                layers.update(batch.feeds, batch.size)
            if len(kept) < keep_inputs or kept_samples < keep_samples:
                kept.append(batch.feeds)
                kept_samples += batch.size
            samples += batch.size
            labelled += sum(1 for label in (batch.labels or ()) if label is not None)
            bar.update(batch.size)
    return Measured(tuple(s.report() for s in states), layers.report() if layers else None,
                    samples, labelled, tuple(kept))
