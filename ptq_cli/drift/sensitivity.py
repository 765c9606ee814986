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

import collections
import math
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
from tqdm import tqdm

from ptq_cli.drift.layers import Matching
from ptq_cli.drift.kinds import OutputKind
from ptq_cli.drift.outputs import OutputState
from ptq_cli.drift.report import SensitivityReport, SensitivityRow
from ptq_cli.drift.runtime import make_session, run
from ptq_cli.drift.switches import FloatBase

_CHUNK = 16  # samples per run when the model's batch is free: fewer, larger runs
# onnxruntime (>= 1.20) quantizes the float weights of a node fed by a DequantizeLinear when it
# loads the model; that would quantize weights switched off here behind our back.
_KEEP_FLOAT_WEIGHTS = ("WeightBiasQuantization",)


def measure_sensitivity(reference: onnx.ModelProto, candidate: onnx.ModelProto, matching: Matching,
                        feeds: Sequence[dict[str, np.ndarray]], output_pairs: list[tuple[str, str]], *,
                        max_samples: int, batch_free: bool = True, progress: bool = False,
                        kinds: dict[str, OutputKind] | None = None) -> SensitivityReport:
    """Output SQNR and top-1 agreement of `candidate` with only one quantized node's quantization on,
    for each such node, over the first `max_samples` rows of `feeds` (batches); worst first.

    The reference's outputs on those rows are held in memory, so that each variant is loaded once."""
    base = FloatBase(reference, candidate, matching)
    chunks = regroup(feeds, max_samples) if batch_free else _first(feeds, max_samples)
    samples = sum(_rows(c) for c in chunks)
    fixed = tuple(n.name for n in base.nodes if n.fixed)
    if not base.nodes or not samples:
        return SensitivityReport(samples, (), fixed)
    ref_session = make_session(reference, "reference")
    expected = [run(ref_session, chunk, "reference", [r for r, _ in output_pairs]) for chunk in chunks]
    rows = isolated_rows(base, chunks, expected, output_pairs, kinds or {}, progress=progress)
    return SensitivityReport(samples, tuple(rows), fixed)


def isolated_rows(base: FloatBase, chunks: Sequence[dict[str, np.ndarray]], expected: Sequence[dict],
                  output_pairs: list[tuple[str, str]], kinds: dict[str, OutputKind], *,
                  nodes: Sequence[int] | None = None, progress: bool = False,
                  in_time: Callable[[], bool] | None = None, literal: bool = False,
                  workers: int = 1, desc: str = "sensitivity") -> list[SensitivityRow]:
    """One row per node of `base` (or the indices `nodes`): the outputs on `chunks` with only that
    node quantized, against the reference's `expected` outputs on the same chunks. Worst first.
    Stops early, with the rows measured so far, once `in_time()` turns false. `literal` runs the
    variants unoptimized (see runtime.make_session): faster to load, for a ranking. `workers`
    variants are measured at once, in threads, one onnxruntime thread each (the same rows)."""
    todo = list(range(len(base.nodes)) if nodes is None else nodes)

    def row(k: int) -> SensitivityRow:
        node = base.nodes[k]
        what = f"variant with only {node.name or node.op_type!r} quantized"
        session = make_session(base.variant(k), what, disabled_optimizers=_KEEP_FLOAT_WEIGHTS, literal=literal,
                               threads=1 if workers > 1 else 0)
        state = _VariantState(output_pairs, kinds)
        for chunk, ref in zip(chunks, expected):
            state.update(ref, run(session, chunk, what, [c for _, c in output_pairs]), _rows(chunk))
        return state.row(node.name, node.op_type)

    rows = []
    with tqdm(total=len(todo), unit="node", desc=desc, disable=not progress, file=sys.stderr) as bar, \
            ThreadPoolExecutor(max(1, workers)) as pool:
        pending = collections.deque()
        for k in todo:
            if in_time is not None and not in_time():
                break
            pending.append(pool.submit(row, k))
            while len(pending) > max(1, workers) or (pending and pending[0].done()):
                rows.append(pending.popleft().result())
                bar.update(1)
        for future in pending:
            rows.append(future.result())
            bar.update(1)
    return sorted(rows, key=_rank)


class _VariantState:
    """Output figures of one variant: the worst SQNR over the float outputs, and the agreement of
    the first output that has one (top-1, per step, or exact for integers)."""

    def __init__(self, output_pairs: list[tuple[str, str]], kinds: dict[str, OutputKind]) -> None:
        self.pairs = output_pairs
        self.states = [OutputState(r, c, kinds.get(r, OutputKind.SCORES), histogram=False) for r, c in output_pairs]

    def update(self, ref: dict, cand: dict, size: int) -> None:
        for state in self.states:
            state.update(ref[state.name], cand[state.cand_name], size)

    def row(self, node: str, op_type: str) -> SensitivityRow:
        reports = [state.report() for state in self.states]
        values = [r.sqnr_db for r in reports if r.kind is not OutputKind.INTEGER and not math.isnan(r.sqnr_db)]
        agreement = next((r.top1_agreement for r in reports if r.top1_agreement is not None), None)
        return SensitivityRow(node, op_type, min(values) if values else math.nan, agreement,
                              sum(r.nonfinite_candidate for r in reports))


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


def regroup(feeds: Sequence[dict[str, np.ndarray]], max_samples: float) -> list[dict[str, np.ndarray]]:
    """The first `max_samples` rows of the batches, in runs of up to _CHUNK rows. Rows are only
    stacked with rows of the same shape (sequence lengths and image widths may differ per sample)."""
    if not feeds or any(a.ndim == 0 for f in feeds for a in f.values()):
        return _first(feeds, max_samples)
    groups: dict[tuple, list[dict[str, np.ndarray]]] = {}
    rows = 0
    for batch in feeds:
        if rows >= max_samples:
            break
        take = int(min(_rows(batch), max_samples - rows))
        signature = tuple((name, a.shape[1:], a.dtype.str) for name, a in sorted(batch.items()))
        groups.setdefault(signature, []).append({name: a[:take] for name, a in batch.items()})
        rows += take
    chunks = []
    for group in groups.values():
        whole = {name: np.concatenate([f[name] for f in group]) for name in group[0]}
        total = _rows(whole)
        chunks += [{name: a[i:i + _CHUNK] for name, a in whole.items()} for i in range(0, total, _CHUNK)]
    return chunks
