"""Sensitivity of the model's outputs to each quantized node, measured in isolation.

Per-tensor SQNR along the graph accumulates the error of every layer upstream, so once it nears
0 dB it no longer says which layer broke the model. Here each node is measured on its own: the
candidate runs with only that node's quantization on (its quantized activation inputs and
weights; every other node reads float data), and its outputs are compared with the reference's.
The lowest output SQNR names the node to exclude first.

The symmetric measure (everything quantized but one node) was tried and dropped: on MobileNetV1
quantized per tensor it stays near 0 dB for every node, because several layers break the model
each on their own, and the nodes it ranked first recovered nothing when excluded.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence

import numpy as np
import onnx
from tqdm import tqdm

from ptq_cli.compare.layers import Matching
from ptq_cli.compare.metrics import ClassAccumulator, ErrorAccumulator, as_rows, is_classification
from ptq_cli.compare.report import SensitivityReport, SensitivityRow
from ptq_cli.compare.runtime import make_session, run
from ptq_cli.compare.switches import FloatBase

_CHUNK = 16  # samples per run when the model's batch is free: fewer, larger runs
# onnxruntime (>= 1.20) quantizes the float weights of a node fed by a DequantizeLinear when it
# loads the model; that would quantize weights switched off here behind our back.
_KEEP_FLOAT_WEIGHTS = ("WeightBiasQuantization",)


def measure_sensitivity(reference: onnx.ModelProto, candidate: onnx.ModelProto, matching: Matching,
                        feeds: Sequence[dict[str, np.ndarray]], output_pairs: list[tuple[str, str]], *,
                        max_samples: int, batch_free: bool = True, progress: bool = False) -> SensitivityReport:
    """Output SQNR and top-1 agreement of `candidate` with only one quantized node's quantization on,
    for each such node, over the first `max_samples` rows of `feeds` (batches); worst first.

    The reference's outputs on those rows are held in memory, so that each variant is loaded once."""
    base = FloatBase(reference, candidate, matching)
    chunks = _regrouped(feeds, max_samples) if batch_free else _first(feeds, max_samples)
    samples = sum(_rows(c) for c in chunks)
    fixed = tuple(n.name for n in base.nodes if n.fixed)
    if not base.nodes or not samples:
        return SensitivityReport(samples, (), fixed)
    ref_session = make_session(reference, "reference")
    expected = [run(ref_session, chunk, "reference", [r for r, _ in output_pairs]) for chunk in chunks]
    rows = []
    for k in tqdm(range(len(base.nodes)), unit="node", desc="sensitivity", disable=not progress, file=sys.stderr):
        node = base.nodes[k]
        what = f"variant with only {node.name or node.op_type!r} quantized"
        session = make_session(base.variant(k), what, disabled_optimizers=_KEEP_FLOAT_WEIGHTS)
        state = _VariantState(output_pairs)
        for chunk, ref in zip(chunks, expected):
            state.update(ref, run(session, chunk, what, [c for _, c in output_pairs]), _rows(chunk))
        rows.append(state.row(node.name, node.op_type))
    return SensitivityReport(samples, tuple(sorted(rows, key=_rank)), fixed)


class _VariantState:
    """Output errors (and top-1 agreement of the first output) of one mask."""

    def __init__(self, output_pairs: list[tuple[str, str]]) -> None:
        self.pairs = output_pairs
        self.errors = [ErrorAccumulator(histogram=False) for _ in output_pairs]
        self.classes: ClassAccumulator | None = None

    def update(self, ref: dict, cand: dict, size: int) -> None:
        for acc, (r_name, c_name) in zip(self.errors, self.pairs):
            acc.update(as_rows(ref[r_name], size), as_rows(cand[c_name], size))
        first_ref, first_cand = ref[self.pairs[0][0]], cand[self.pairs[0][1]]
        if is_classification(first_ref.shape) and first_ref.shape[0] == size:
            if self.classes is None:
                self.classes = ClassAccumulator(first_ref.shape[1])
            self.classes.update(as_rows(first_ref, size), as_rows(first_cand, size), None)

    def row(self, node: str, op_type: str) -> SensitivityRow:
        summaries = [acc.summary() for acc in self.errors]
        values = [s.sqnr_db for s in summaries if not math.isnan(s.sqnr_db)]
        agreement = self.classes.summary().top1_agreement if self.classes is not None else None
        return SensitivityRow(node, op_type, min(values) if values else math.nan, agreement,
                              sum(s.nonfinite_candidate for s in summaries))


def _rank(row: SensitivityRow) -> tuple:
    # NaN/Inf in the outputs first (the worst), nothing measured last.
    if row.nonfinite_candidate:
        return (0, 0.0, row.node)
    return (2, 0.0, row.node) if math.isnan(row.sqnr_db) else (1, row.sqnr_db, row.node)


def _rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _first(feeds: Sequence[dict[str, np.ndarray]], max_samples: int) -> list[dict[str, np.ndarray]]:
    """Whole batches (a model with a fixed batch takes no other size) until max_samples rows."""
    chunks, rows = [], 0
    for batch in feeds:
        if rows >= max_samples:
            break
        chunks.append(batch)
        rows += _rows(batch)
    return chunks


def _regrouped(feeds: Sequence[dict[str, np.ndarray]], max_samples: int) -> list[dict[str, np.ndarray]]:
    """The first `max_samples` rows of the batches, in runs of _CHUNK rows."""
    if not feeds or any(a.ndim == 0 for f in feeds for a in f.values()):
        return _first(feeds, max_samples)
    whole = {name: np.concatenate([f[name] for f in feeds])[:max_samples] for name in feeds[0]}
    total = _rows(whole)
    return [{name: a[i:i + _CHUNK] for name, a in whole.items()} for i in range(0, total, _CHUNK)]
