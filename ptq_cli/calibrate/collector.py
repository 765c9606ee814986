"""Run the model in onnxruntime once per batch and fold every wanted activation into observers.

The wanted tensors become extra graph outputs; each batch's arrays are reduced into the
observers and dropped, so memory holds one batch of activations whatever the sample count.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph
from tqdm import tqdm

from ptq_cli.calibrate.stats import TensorStats
from ptq_cli.data import Batch
from ptq_cli.errors import CalibrationError, DataError, ModelError, UsageError
from ptq_cli.recipe import CalibrationSpec

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
_TWO_GB = 2**31 - 1


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Float graph inputs and node outputs, in graph order (initializers and Constant outputs,
    which are weights rather than activations, are left out)."""
    types = _elem_types(model)
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in model.graph.input if v.name not in initializers]
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        names.extend(out for out in node.output if out)
    seen: set[str] = set()
    chosen = []
    for name in names:
        if name not in seen and types.get(name) in _FLOAT_TYPES:
            seen.add(name)
            chosen.append(name)
    return chosen


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model) if model.ByteSize() < _TWO_GB else model
    except Exception:  # inference fails on some exotic/custom ops: fall back to what is declared
        inferred = model
    graph = inferred.graph
    return {v.name: v.type.tensor_type.elem_type
            for v in [*graph.input, *graph.value_info, *graph.output]
            if v.type.HasField("tensor_type")}


def select_tensors(model: onnx.ModelProto, tensors: Sequence[str] | None) -> list[str]:
    available = float_tensors(model)
    if tensors is None:
        return available
    known = set(available)
    unknown = [t for t in tensors if t not in known]
    if unknown:
        raise UsageError(f"tensor(s) {unknown} are not float activations of the model; "
                         f"choose among e.g. {available[:5]} ({len(available)} in all)")
    return list(dict.fromkeys(tensors))


def augmented(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs `names` (the input model is not touched)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def make_session(model: onnx.ModelProto, provider: str) -> ort.InferenceSession:
    """A session on `model`, from bytes (no file in the cwd); via a private temp dir over 2 GB."""
    if provider not in ort.get_available_providers():
        raise UsageError(f"execution provider {provider!r} is not available here; "
                         f"choose one of {ort.get_available_providers()}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # One core is left to the numpy observers, which run between inferences. Measured on 2 cores
    # (MobileNetV1-0.25, batch 1): 1 onnxruntime thread runs the graph faster than 2 (2.0 vs
    # 4.4 ms/sample with all activations fetched), because the observers and onnxruntime's
    # spinning threads otherwise fight for the cores.
    options.intra_op_num_threads = max(1, (os.cpu_count() or 1) - 1)
    providers = list(dict.fromkeys([provider, "CPUExecutionProvider"]))  # CPU runs what it cannot
    try:
        if model.ByteSize() < _TWO_GB:
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        with tempfile.TemporaryDirectory(prefix="ptq-calib-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True, location="model.data")
            return ort.InferenceSession(str(path), options, providers=providers)
    except (Fail, InvalidGraph) as exc:
        raise ModelError(f"onnxruntime cannot load the model for calibration: {exc}") from None


def bias_correction_inputs(model: onnx.ModelProto) -> set[str]:
    """The activations whose per-channel mean bias correction uses: data inputs of Conv and of
    Gemm (without transA), where axis 1 is the channel the weight's error is summed over."""
    producer = {out: node for node in model.graph.node for out in node.output}
    names = set()
    for node in model.graph.node:
        if node.op_type == "Conv" or (node.op_type == "Gemm" and not _attr(node, "transA")):
            names.add(node.input[0])
            pad = producer.get(node.input[0])
            if pad is not None and pad.op_type == "Pad":
                names.add(pad.input[0])  # quantization folds a zero Pad into the Conv
    return names


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next((a.i for a in node.attribute if a.name == name), 0)


def collect(model: onnx.ModelProto, batches: Iterable[Batch], *, spec: CalibrationSpec,
            tensors: Sequence[str] | None = None, provider: str = "CPUExecutionProvider",
            progress: bool = True, total: int | None = None, histograms: bool | None = None,
            channel_axis: int | None = None) -> tuple[dict[str, TensorStats], int]:
    """Observe every wanted tensor over all batches; returns (stats per tensor, samples seen).

    Inputs of Conv/Gemm also get per-channel means, which bias correction needs."""
    names = select_tensors(model, tensors)
    mean_of = bias_correction_inputs(model)
    inputs = {v.name for v in model.graph.input}
    fed = [n for n in names if n in inputs]  # graph inputs are observed from the feeds directly
    fetched = [n for n in names if n not in inputs]
    session = make_session(augmented(model, fetched), provider)
    stats = {n: TensorStats.for_spec(spec, histogram=histograms, channel_axis=channel_axis, mean=n in mean_of)
             for n in names}
    samples = 0
    with tqdm(total=total, unit="sample", desc="calibrating", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        for batch in batches:
            _observe(session, batch, fed, fetched, stats)
            samples += batch.size
            bar.update(batch.size)
    return stats, samples


def _observe(session: ort.InferenceSession, batch: Batch, fed: list[str], fetched: list[str],
             stats: dict[str, TensorStats]) -> None:
    where = ", ".join(batch.sources[:3]) + (", ..." if batch.size > 3 else "")
    try:
        arrays = session.run(fetched, batch.feeds) if fetched else []
    except (Fail, InvalidArgument) as exc:
        raise DataError(f"onnxruntime failed on {where}: {str(exc).strip().splitlines()[0]}") from None
    try:
        for name in fed:
            stats[name].update(name, np.asarray(batch.feeds[name]))
        for name, array in zip(fetched, arrays):
            stats[name].update(name, array)
    except CalibrationError as exc:
        raise CalibrationError(f"{exc}; the batch was {where}") from None
