"""Run the model in onnxruntime once per batch and fold every wanted activation into observers.

Each wanted tensor is reduced inside the graph to its min, max and sum (per-channel sums for
bias correction; see probes.py), so min/max calibration costs about as much time and memory as
plain inference. Histogram methods also fetch the tensors as arrays; each batch's arrays are
folded into the observers and dropped, so memory holds one batch of activations whatever the
sample count.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
from tqdm import tqdm

from ptq_cli.calibration.observers import Scratch
from ptq_cli.calibration.probes import REDUCED_TYPES, Augmented, augment, elem_types
from ptq_cli.calibration.probes import float_tensors as float_tensors  # re-exported
from ptq_cli.calibration.stats import TensorStats, needs_histogram
from ptq_cli.calibration.subgraphs import SubProbe, expose_bodies, has_bodies
from ptq_cli.data import Batch
from ptq_cli.model.sessions import CPU, SessionSpec, open_session, parallel_sessions, run_in_order
from ptq_cli.errors import CalibrationError, DataError, ModelError, UsageError
from ptq_cli.foreign_errors import is_onnxruntime_error, onnxruntime_message
from ptq_cli.recipe import CalibrationSpec



def select_tensors(model: onnx.ModelProto, tensors: Sequence[str] | None,
                   types: dict[str, int] | None = None) -> list[str]:
    available = float_tensors(model, types)
    if tensors is None:
        return available
    known = set(available)
    unknown = [t for t in tensors if t not in known]
    if unknown:
        raise UsageError(f"tensor(s) {unknown} are not float activations of the model; "
                         f"choose among e.g. {available[:5]} ({len(available)} in all)")
    return list(dict.fromkeys(tensors))


def calibration_session(model: onnx.ModelProto, provider: str, *, numpy_work: bool = True,
                        threads: int = 0) -> ort.InferenceSession:
    """A session on `model`, from bytes (no file in the cwd); via a private temp dir over 2 GB.
    threads > 0 fixes onnxruntime's intra-op threads (a cluster worker: one per task); 0 picks
    them for this machine as below."""
    # With arrays to fold (histograms), one core is left to the numpy observers, which run
    # between inferences. Measured on 2 cores (MobileNetV1-0.25, batch 1): 1 onnxruntime thread
    # runs the graph faster than 2 (2.0 vs 4.4 ms/sample with all activations fetched), because
    # the observers and onnxruntime's spinning threads otherwise fight for the cores. With only
    # reductions in the graph there is no numpy work: onnxruntime's default (all cores).
    threads = threads or (max(1, (os.cpu_count() or 1) - 1) if numpy_work else 0)
    # The default order runs the reductions added at the end of the graph after everything
    # else, which keeps every activation alive until then (+10 MB on MobileNetV1-0.25, and
    # slower); priority-based order runs each right after its producer, as in plain inference.
    providers = tuple(dict.fromkeys([provider, CPU]))  # CPU runs what it cannot
    try:
        return open_session(model, SessionSpec(providers=providers, threads=threads, priority_order=True))
    except Exception as exc:  # onnxruntime raises its own exception types for every load failure
        if not is_onnxruntime_error(exc):
            raise
        raise ModelError(onnxruntime_message(exc, "the model for calibration", "load")) from None


def bias_correction_inputs(model: onnx.ModelProto) -> set[str]:
    """The activations whose per-channel mean bias correction uses: data inputs of Conv and of
    Gemm (without transA), where axis 1 is the channel the weight's error is summed over."""
    names = set()
    for node in model.graph.node:
        if node.op_type == "Conv" or (node.op_type == "Gemm" and not _attr(node, "transA")):
            names.add(node.input[0])
    return names


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def collect(model: onnx.ModelProto, batches: Iterable[Batch], *, spec: CalibrationSpec,
            tensors: Sequence[str] | None = None, provider: str = "CPUExecutionProvider",
            progress: bool = True, total: int | None = None, histograms: bool | None = None,
            channel_axis: int | None = None, overlap: bool | None = None,
            threads: int = 0) -> tuple[dict[str, TensorStats], int]:
    """Observe every wanted tensor over all batches; returns (stats per tensor, samples seen).

    Inputs of Conv/Gemm also get per-channel means, which bias correction needs. With overlap
    (by default when arrays are fetched for histograms), onnxruntime runs the next batch in a
    worker thread while this one is folded in: faster on 2+ cores, one more batch of
    activations in memory."""
    types = elem_types(model)
    names = select_tensors(model, tensors, types)
    mean_of = bias_correction_inputs(model)
    stats = {n: TensorStats.for_spec(spec, histogram=histograms, channel_axis=channel_axis, mean=n in mean_of)
             for n in names}
    inputs = {v.name for v in model.graph.input}
    fed = [n for n in names if n in inputs]  # graph inputs are observed from the feeds directly
    reduced = [n for n in names if n not in inputs and types.get(n) in REDUCED_TYPES]
    fetched = [n for n in names if n not in inputs and (stats[n].needs_array or n not in reduced)]
    bodies: list[SubProbe] = []
    if tensors is None and has_bodies(model) and not histograms and not needs_histogram(spec):
        # If/Loop/Scan bodies pass min/max/size scalars out (min/max only: no histograms there).
        model, bodies = expose_bodies(model)
        for p in bodies:
            stats.setdefault(p.name, TensorStats.for_spec(spec, histogram=False))
        fetched += [n for p in bodies for n in (p.min, p.max, p.size)]
    augmented, plan = augment(model, reduced, [n for n in reduced if stats[n].mean is not None], fetched)
    # Reductions only (min/max, the default): the batches run on one session per core, one
    # onnxruntime thread each, and are folded in their order (the same bits as one session:
    # onnxruntime's CPU kernels split work across threads, not sums). PP-OCRv4's 100 lines on 2
    # busy cores: 15 s instead of 32 s (onnxruntime's spinning threads fight other work).
    count = parallel_sessions(model) if not plan.fetched and not threads and not bodies else 1
    sessions = [calibration_session(augmented, provider, numpy_work=bool(plan.fetched),
                                    threads=1 if count > 1 else threads) for _ in range(count)]
    del augmented  # onnxruntime holds its own copy
    scratch = Scratch()
    samples = 0
    with tqdm(total=total, unit="sample", desc="calibrating", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        overlap = bool(plan.fetched) if overlap is None else overlap
        runs = run_in_order(sessions, lambda session, batch: (batch, _run(session, plan, batch)), batches) \
            if len(sessions) > 1 else (_overlapped if overlap else _in_turn)(sessions[0], plan, batches)
        for batch, values in runs:
            _observe(batch, values, fed, plan, stats, scratch, bodies)
            samples += batch.size
            bar.update(batch.size)
    return stats, samples


def _run(session: ort.InferenceSession, plan: Augmented, batch: Batch) -> list[np.ndarray]:
    try:
        return session.run(plan.outputs, batch.feeds) if plan.outputs else []
    except Exception as exc:  # onnxruntime's own exception types
        if not is_onnxruntime_error(exc):
            raise
        raise DataError(f"onnxruntime failed on {_where(batch)}: {str(exc).strip().splitlines()[0]}") from None


def _in_turn(session, plan, batches):
    for batch in batches:
        yield batch, _run(session, plan, batch)


def _overlapped(session, plan, batches):
    """Like _in_turn, with batch i + 1 running in onnxruntime (which releases the GIL) while the
    caller folds batch i."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for batch in batches:
            future = pool.submit(_run, session, plan, batch)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (batch, future)
        if pending is not None:
            yield pending[0], pending[1].result()


def _where(batch: Batch) -> str:
    return ", ".join(batch.sources[:3]) + (", ..." if batch.size > 3 else "")


def _observe(batch: Batch, values: list[np.ndarray], fed: list[str], plan: Augmented,
             stats: dict[str, TensorStats], scratch: Scratch, bodies: list[SubProbe] = ()) -> None:
    arrays = dict(zip(plan.fetched, values))
    try:
        for p in bodies:
            mn, mx, size = (arrays.pop(n) for n in (p.min, p.max, p.size))
            stats[p.name].update_reduced(p.name, float(mn), float(mx), None, int(size))
        for name in fed:
            stats[name].update(name, np.asarray(batch.feeds[name]), scratch)
        for p in plan.probes:
            stats[p.name].update_reduced(p.name, values[p.min].item(), values[p.max].item(),
                                         None if p.sums is None else values[p.sums], values[p.size].item(),
                                         arrays.pop(p.name, None), scratch)
        for name, array in arrays.items():  # fetched without reductions (e.g. float16)
            stats[name].update(name, array, scratch)
    except CalibrationError as exc:
        raise CalibrationError(f"{exc}; the batch was {_where(batch)}") from None
