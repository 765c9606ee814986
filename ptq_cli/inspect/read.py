"""Read the quantization parameters out of a quantized model of any format ptq writes.

Quantized tensors are found where their parameters are: QuantizeLinear/DequantizeLinear (QDQ),
the (tensor, scale, zero point) triples of QLinear* ops and QGemm (QOperator, in the input order
the op handlers declare), DynamicQuantizeLinear and the constant weights of MatMulInteger/
ConvInteger (dynamic).

Wasted fraction: the integer range [qmin, qmax] represents the float range
[(qmin - Z)·S, (qmax - Z)·S]; of it, a tensor whose values lie in [lo, hi] only ever uses the
codes from q(lo) to q(hi). We report 1 - (q(hi) - q(lo)) / (qmax - qmin) (per channel: the mean
and the worst channel), with [lo, hi] taken, in order of preference, from
- the stored integers themselves, for constants (weights): exact;
- a calibration table, when one is given (the ranges the model was calibrated with);
- the graph: the output of a Relu (lo = 0), a Clip (its min/max), a Sigmoid/Softmax ([0, 1]);
  in QOperator models the bounds of a Relu/Clip folded into its producer are in the model's
  `ptq.integer_tensors` metadata;
and reported as unknown otherwise. When only one bound is known (a Relu output), the other is taken
at the end of the representable range, so the figure is a lower bound of the waste.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx

from ptq_cli.drift.record import DRIFT_KEY, DriftRecord
from ptq_cli.inspect.portability import portability
from ptq_cli.inspect.report import InspectReport, RequantInfo, TensorInfo
from ptq_cli.model.graph import GraphIndex, attribute
from ptq_cli.quantization.placement.handlers import HANDLERS, Layout, OutputRule
from ptq_cli.quantization.emitters.qoperator import INTEGER_TENSORS_KEY
from ptq_cli.quantization.arithmetic.scheme import fixed_point_multiplier
from ptq_cli.recipe import QType

Range = tuple[float | None, float | None]
_LAYOUTS = {h.qlinear.op_type: h.qlinear.layout for h in HANDLERS.values() if h.qlinear is not None}
_QTYPES = {q.onnx_type: q for q in QType}
_TABLES = ("QLinearSigmoid", "QLinearSoftmax")  # computed through a lookup table, no multiplier
# Ops whose output values lie within the bounds of their first input's (data movement, averages).
_BOUND_KEEPING = ({op for op, h in HANDLERS.items() if h.output is OutputRule.PASSTHROUGH}
                  | {"QuantizeLinear", "DequantizeLinear", "AveragePool", "GlobalAveragePool",
                     "QLinearAveragePool", "QLinearGlobalAveragePool"})


def inspect_model(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]] | None = None,
                  name: str = "") -> InspectReport:
    """Every quantized tensor of `model`, the requantization of its integer ops and the 16-bit
    pair sums of its integer matrix kernels."""
    reader, kinds = _read(model, ranges or {})
    # A static QDQ model may quantize some MatMuls at run time (placement, the drift budget's
    # fallback): it is still QDQ; "dynamic" is a model with no static activation quantization.
    fmt = ("qoperator" if kinds & set(_LAYOUTS) else "qdq" if "QuantizeLinear" in kinds
           else "dynamic" if "DynamicQuantizeLinear" in kinds
           else "qdq" if "DequantizeLinear" in kinds else "float")
    return InspectReport(name or model.graph.name, fmt, tuple(reader.tensors), tuple(reader.requant),
                         portability(model), recorded_drift(model))


def recorded_drift(model: onnx.ModelProto) -> DriftRecord | None:
    """The drift ptq measured when it wrote `model` (its ptq.drift metadata); None when there is
    none, or when it was written by hand or by an older version in another shape."""
    text = {p.key: p.value for p in model.metadata_props}.get(DRIFT_KEY)
    if text is None:
        return None
    try:
        return DriftRecord.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError):
        return None


def _read(model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]]) -> tuple[_Reader, set[str]]:
    """The tensors and requantization of `model` and its bodies, and every op type they hold."""
    reader = _Reader(model, ranges)
    for node in model.graph.node:
        reader.visit(node)
    kinds = {n.op_type for n in model.graph.node}
    for body in _bodies(model.graph):  # If/Loop/Scan bodies are quantized as graphs of their own
        inner, inner_kinds = _read(_as_model(model, body), ranges)
        reader.tensors.extend(inner.tensors)
        reader.requant.extend(inner.requant)
        kinds |= inner_kinds
    return reader, kinds


def _bodies(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graphs held by the nodes of `graph` (one level; inspect_model recurses)."""
    return [a.g for node in graph.node for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]


def _as_model(model: onnx.ModelProto, body: onnx.GraphProto) -> onnx.ModelProto:
    """`body` as a model of its own, with the metadata (QOperator records) of `model`."""
    wrapped = onnx.ModelProto()
    wrapped.graph.CopyFrom(body)
    wrapped.metadata_props.extend(model.metadata_props)
    return wrapped


class _Reader:
    def __init__(self, model: onnx.ModelProto, ranges: Mapping[str, tuple[float, float]]) -> None:
        self.index = GraphIndex(model.graph)
        self.ranges = ranges
        props = {p.key: p.value for p in model.metadata_props}
        self.record: dict[str, dict] = json.loads(props.get(INTEGER_TENSORS_KEY, "{}"))
        self.seen: set[str] = set()
        self.tensors: list[TensorInfo] = []
        self.requant: list[RequantInfo] = []

    # --- per node --------------------------------------------------------------------------
    def visit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op in ("QuantizeLinear", "DequantizeLinear"):
            self._qdq(node)
        elif op in _LAYOUTS:
            self._qlinear(node, _LAYOUTS[op])
        elif op == "DynamicQuantizeLinear" and node.output[0] not in self.seen:
            self.seen.add(node.output[0])
            self.tensors.append(TensorInfo(node.input[0], "activation", "uint8", (), (), None, f"{op} {node.name}",
                                           None, None, None, "scale and zero point computed at run time"))
        elif op in ("MatMulInteger", "ConvInteger"):
            self._integer_weight(node)

    def _qdq(self, node: onnx.NodeProto) -> None:
        stored = self.index.constant(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if node.op_type == "DequantizeLinear" and stored is None:
            return  # the activation was listed at its QuantizeLinear
        qtype = _QTYPES.get(self._type(node, stored))
        if qtype is None:
            return  # an int32 bias: its scale is S_x·S_w by construction, not a choice
        float_name = node.input[0]
        if stored is None and float_name not in self.ranges:  # a graph output: its DQ keeps the name
            float_name = next((c.output[0] for c in self.index.consumers.get(node.output[0], [])
                               if c.output[0] in self.ranges), float_name)
        integer = node.output[0] if stored is None else node.input[0]
        self._tensor(integer, float_name, "weight" if stored is not None else "activation", qtype,
                     node.input[1], _opt(node, 2), attribute(node, "axis", 1), f"{node.op_type} {node.name}", stored)

    def _type(self, node: onnx.NodeProto, stored: np.ndarray | None) -> int | None:
        if len(node.input) > 2 and node.input[2] and node.input[2] in self.index.initializers:
            return self.index.initializers[node.input[2]].data_type
        if stored is not None:
            return self.index.initializers[node.input[0]].data_type
        return onnx.TensorProto.UINT8  # no zero point: uint8 by the ONNX default

    def _qlinear(self, node: onnx.NodeProto, layout: Layout) -> None:
        operands, output = _positions(layout, len(node.input))
        params = []
        for k, (t, s, z) in enumerate(operands):
            stored = self.index.constant(node.input[t])
            qtype = _QTYPES[self._zero_type(node, z)]
            axis = _weight_axis(node) if k == 1 and stored is not None else None
            role = "weight" if stored is not None else "activation"
            params.append(self._tensor(node.input[t], self._float_name(node.input[t]), role, qtype, node.input[s],
                                       _opt(node, z), axis, f"{node.op_type} {node.name}", stored))
        qtype = _QTYPES[self._zero_type(node, output[1])]
        y = self._tensor(node.output[0], self._float_name(node.output[0]), "activation", qtype,
                         node.input[output[0]], _opt(node, output[1]), None, f"{node.op_type} {node.name}", None)
        self._requantization(node, [p[0] for p in params], y[0])

    def _integer_weight(self, node: onnx.NodeProto) -> None:
        stored = self.index.constant(node.input[1])
        if stored is None:
            return
        zero = self.index.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        qtype = _QTYPES[self.index.initializers[node.input[1]].data_type]
        zero = np.zeros((), stored.dtype) if zero is None else zero
        scale = self._dynamic_weight_scale(node)
        axis = (1 if node.op_type == "MatMulInteger" else 0) if zero.ndim or (scale is not None and scale.size > 1) \
            else None
        scale = np.asarray([np.nan]) if scale is None else scale.reshape(-1)
        self._emit(node.input[1], node.input[1], "weight", qtype, scale, zero.reshape(-1), axis,
                   f"{node.op_type} {node.name}", stored)

    def _dynamic_weight_scale(self, node: onnx.NodeProto) -> np.ndarray | None:
        """The constant S_w in the Mul(S_x, S_w) that rescales this op's accumulator."""
        x_scale = next((p.output[1] for p in [self.index.producer.get(node.input[0])]
                        if p is not None and p.op_type == "DynamicQuantizeLinear"), None)
        for mul in self.index.consumers.get(x_scale, []) if x_scale else []:
            other = [self.index.constant(i) for i in mul.input if i != x_scale]
            if mul.op_type == "Mul" and other and other[0] is not None:
                return other[0]
        return None

    # --- tensors ---------------------------------------------------------------------------
    def _tensor(self, tensor, float_name, role, qtype, scale_name, zero_name, axis, source, stored):
        scale = self.index.constant(scale_name)
        zero = self.index.constant(zero_name) if zero_name else None
        scale = np.asarray([np.nan]) if scale is None else scale.reshape(-1).astype(np.float64)
        zero = np.zeros(scale.shape, np.int64) if zero is None else zero.reshape(-1).astype(np.int64)
        axis = axis if scale.size > 1 else None
        self._emit(tensor, float_name, role, qtype, scale, zero, axis, source, stored)
        return scale, zero, qtype

    def _emit(self, tensor, float_name, role, qtype, scale, zero, axis, source, stored) -> None:
        if tensor in self.seen:
            return
        self.seen.add(tensor)
        zero = zero.astype(np.int64)
        lo_hi = ((float(np.min((qtype.qmin - zero) * scale)), float(np.max((qtype.qmax - zero) * scale)))
                 if np.all(np.isfinite(scale)) else None)
        wasted, worst, basis = self._wasted(tensor, float_name, qtype, scale, zero, axis, stored)
        shown = tensor if stored is not None else (float_name or tensor)
        self.tensors.append(TensorInfo(shown, role, qtype.value, tuple(map(float, scale)), tuple(map(int, zero)),
                                       axis, source, lo_hi, wasted, worst, basis))

    def _wasted(self, tensor, float_name, qtype, scale, zero, axis, stored):
        width = float(qtype.qmax - qtype.qmin)
        if stored is not None:
            moved = (stored.reshape(1, -1) if axis is None
                     else np.moveaxis(stored, axis, 0).reshape(stored.shape[axis], -1))
            used = moved.max(axis=1).astype(np.int64) - moved.min(axis=1).astype(np.int64)
            per_channel = 1.0 - used / width
            return float(per_channel.mean()), float(per_channel.max()), "stored integers"
        lo, hi, basis = self._known_range(tensor, float_name)
        if lo is None and hi is None:
            return None, None, basis
        q_lo = qtype.qmin if lo is None else _quantize(lo, scale[0], zero[0], qtype)
        q_hi = qtype.qmax if hi is None else _quantize(hi, scale[0], zero[0], qtype)
        wasted = max(0.0, 1.0 - (q_hi - q_lo) / width)
        return wasted, wasted, basis

    def _known_range(self, tensor: str, float_name: str | None) -> tuple[float | None, float | None, str]:
        """Bounds of the float values behind integer `tensor`: calibrated, or known from the graph by
        walking up through Q/DQ pairs and ops that keep the bounds of their input (MaxPool, Reshape, ...)."""
        if float_name in self.ranges:
            lo, hi = self.ranges[float_name]  # not widened to 0: the codes between 0 and lo are the waste
            return lo, hi, "calibration table"
        for _ in range(len(self.index.producer) + 1):
            record = self.record.get(tensor, {})
            if record.get("lo") is not None or record.get("hi") is not None:
                return record["lo"], record["hi"], "folded Relu/Clip bounds"
            producer = self.index.producer.get(tensor)
            if producer is None:
                break
            if producer.op_type == "Relu":
                return 0.0, None, "Relu output >= 0"
            if producer.op_type == "Clip":
                ends = [self.index.constant(producer.input[i]) if len(producer.input) > i and producer.input[i]
                        else None for i in (1, 2)]
                return (*(None if e is None else float(e) for e in ends), "Clip bounds")
            if producer.op_type in ("Sigmoid", "Softmax") + _TABLES:
                return 0.0, 1.0, f"{producer.op_type} output in [0, 1]"
            if producer.op_type not in _BOUND_KEEPING:
                break
            tensor = producer.input[0]
        return None, None, "unknown: pass --calibration TABLE"

    def _float_name(self, integer_tensor: str) -> str | None:
        """The float tensor an integer tensor of a QOperator model stands for."""
        record = self.record.get(integer_tensor)
        if record is not None:
            return record["float"]
        producer = self.index.producer.get(integer_tensor)
        if producer is not None and producer.op_type == "QuantizeLinear":
            return producer.input[0]
        return None

    def _zero_type(self, node: onnx.NodeProto, z: int) -> int:
        name = node.input[z] if z < len(node.input) else ""
        return self.index.initializers[name].data_type if name in self.index.initializers else onnx.TensorProto.UINT8

    # --- requantization --------------------------------------------------------------------
    def _requantization(self, node: onnx.NodeProto, scales: list[np.ndarray], y_scale: np.ndarray) -> None:
        op = node.op_type
        if op in _TABLES:
            return
        if op in ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearMul"):
            alpha = attribute(node, "alpha", 1.0) if op == "QGemm" else 1.0
            terms = {"S_a·S_b/S_y" if op == "QLinearMul" else "S_x·S_w/S_y": scales[0] * scales[1] * alpha / y_scale}
        elif op == "QLinearAdd":
            terms = {"S_a/S_y": scales[0] / y_scale, "S_b/S_y": scales[1] / y_scale}
        elif op == "QLinearConcat":
            terms = {f"S_{k}/S_y": s / y_scale for k, s in enumerate(scales)}
        else:
            terms = {"S_x/S_y": scales[0] / y_scale}
        for label, multiplier in terms.items():
            fixed = [fixed_point_multiplier(float(m)) for m in multiplier]
            self.requant.append(RequantInfo(node.name, op, label, tuple(map(float, multiplier)),
                                            tuple(f[0] for f in fixed), tuple(f[1] for f in fixed)))


def _positions(layout: Layout, n_inputs: int) -> tuple[list[tuple[int, int, int]], tuple[int, int]]:
    """Input indices of (tensor, scale, zero point) per operand, and of (scale, zero point) of the output."""
    if layout is Layout.UNARY:
        return [(0, 1, 2)], (3, 4)
    if layout is Layout.BINARY:
        return [(0, 1, 2), (3, 4, 5)], (6, 7)
    if layout is Layout.GEMM:
        return [(0, 1, 2), (3, 4, 5)], (7, 8)
    return [(k, k + 1, k + 2) for k in range(2, n_inputs, 3)], (0, 1)


def _weight_axis(node: onnx.NodeProto) -> int:
    if node.op_type == "QGemm":
        return 0 if attribute(node, "transB", 0) else 1
    return 1 if node.op_type == "QLinearMatMul" else 0


def _opt(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if i < len(node.input) else ""


def _quantize(value: float, scale: float, zero: int, qtype: QType) -> int:
    return int(np.clip(np.rint(np.float32(value) / np.float32(scale)) + zero, qtype.qmin, qtype.qmax))
