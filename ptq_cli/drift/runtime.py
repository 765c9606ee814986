"""onnxruntime sessions for compare: plain models, and models with extra (intermediate) outputs."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ptq_cli.errors import ModelError
from ptq_cli.model.sessions import SessionSpec, open_session
from ptq_cli.foreign_errors import onnxruntime_message


def make_session(model: onnx.ModelProto | bytes, what: str, *, extra_outputs: tuple[str, ...] = (),
                 disabled_optimizers: tuple[str, ...] = (), literal: bool = False,
                 threads: int = 0) -> ort.InferenceSession:
    """A CPU session for `model` (or its serialized bytes), optionally exposing `extra_outputs` too
    (the input is not modified). `literal`: no graph optimization at all, so Q/DQ pairs run as
    written (exact fake quantization) and the session loads several times faster. threads > 0
    fixes onnxruntime's intra-op threads (one per task on a cluster worker)."""
    if extra_outputs:
        model = with_outputs(model, extra_outputs)
    spec = SessionSpec(threads=threads, literal=literal, disabled_optimizers=tuple(disabled_optimizers))
    try:
        return open_session(model, spec)
    except Exception as exc:  # onnxruntime raises its own exception types for every load failure
        raise ModelError(onnxruntime_message(exc, f"the {what} model", "load")) from None


def with_outputs(model: onnx.ModelProto, names: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `names` (typed from shape inference when known)."""
    out = copy.deepcopy(model)
    known = {v.name: v for v in _value_infos(out)}
    present = {o.name for o in out.graph.output}
    for name in names:
        if name in present:
            continue
        info = known.get(name)
        out.graph.output.append(copy.deepcopy(info) if info is not None
                                else helper.make_empty_tensor_value_info(name))
        present.add(name)
    return out


def _value_infos(model: onnx.ModelProto):
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # fall back to untyped outputs, which onnxruntime accepts
        inferred = model
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            yield value


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], what: str,
        names: list[str] | None = None) -> dict[str, np.ndarray]:
    names = names or [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, feeds)
    except Exception as exc:
        raise ModelError(onnxruntime_message(exc, f"the {what} model")) from None
    return dict(zip(names, values))
