"""Write a QuantPlan as onnxruntime's integer operators (the "QOperator" format).

    y_q = clamp(round(M · Σ (x_q - Z_x)(w_q - Z_w) + b_q) + Z_y),   M = S_x·S_w / S_y

Each quantized compute node becomes the integer op its handler names (QLinearConv, QGemm,
QLinearAdd, ...) reading and writing integer tensors; data-movement nodes (Reshape, MaxPool, ...)
run unchanged on the integer tensor. A tensor is quantized (QuantizeLinear) only where an integer
node first needs it and dequantized (DequantizeLinear, which writes the tensor's original name)
only where a float node or a graph output needs it, so consecutive integer nodes pass integers.
A fused Relu/Clip disappears: the producer's output range starts at 0 (or at the Clip's min), so
the integer op saturates there. A quantized node that has no integer form here (ConvTranspose,
a Gemm whose bias is not a plain 1-D vector, ...) runs in float between the two.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper

from ptq_cli.errors import UsageError
from ptq_cli.model.graph import GraphIndex, attribute, drop_unused_initializers
from ptq_cli.model.io import opset_version
from ptq_cli.quantization.placement.handlers import Layout, OpHandler, OutputRule, activation_inputs, handler_for
from ptq_cli.quantization.plan import QuantPlan, WeightPlan
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.emitters.emit import Emitter, typed_constant
from ptq_cli.quantization.arithmetic.scheme import QParams, quantize_bias

MS_DOMAIN = "com.microsoft"
# metadata_props key: {integer tensor: {"float": float tensor, "lo": bound, "hi": bound}} for `ptq inspect`,
# which cannot see the bounds of a Relu/Clip once it is folded into the integer op.
INTEGER_TENSORS_KEY = "ptq.integer_tensors"

Operand = tuple[str, QParams]  # an integer tensor and its parameters


def emit_qoperator(prepared: onnx.ModelProto, plan: QuantPlan) -> EmitResult:
    """A copy of `prepared` with the plan written as integer operators."""
    _check_types(plan)
    out = onnx.ModelProto()
    out.CopyFrom(prepared)
    rewriter = _Rewriter(out, plan)
    for node in list(out.graph.node):
        rewriter.visit(node)
    rewriter.finish()
    out.metadata_props.add(key=INTEGER_TENSORS_KEY, value=json.dumps(rewriter.record, sort_keys=True))
    if any(n.domain == MS_DOMAIN for n in out.graph.node) and \
            not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return EmitResult(out, plan.quantized, plan.skipped)


def _check_types(plan: QuantPlan) -> None:
    params = list(plan.activations.values()) + [w.params for w in plan.weights.values()]
    wide = sorted({qp.qtype.value for qp in params if qp.qtype.bits != 8})
    if wide:
        raise UsageError(f"--format qoperator needs 8-bit types (onnxruntime's QLinear ops take uint8/int8), "
                         f"got {', '.join(wide)}; use --format qdq for them")


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, plan: QuantPlan) -> None:
        self.graph = model.graph
        self.index = GraphIndex(model.graph)
        self.plan = plan
        self.opset = opset_version(model)
        self.emit = Emitter(model)
        self.nodes: list[onnx.NodeProto] = []
        self.ints: dict[str, str] = {}  # tensor -> its integer version
        self.int_only: set[str] = set()  # tensors that exist only as integers so far
        self.weights_done: dict[tuple[str, bytes], str] = {}
        self.quantized = set(plan.quantized)
        self.integer_nodes: set[str] = set()
        by_name = {n.name: n for n in model.graph.node}
        # producer -> the output of the Relu/Clip folded into it
        self.fused_output = {producer: by_name[relu].output[0] for relu, producer in plan.fused.items()}
        self.fused_bounds = {by_name[relu].output[0]: _bounds(by_name[relu], self.index) for relu in plan.fused}
        self.record: dict[str, dict] = {}

    # --- traversal -------------------------------------------------------------------------
    def visit(self, node: onnx.NodeProto) -> None:
        if self.plan.fused.get(node.name) in self.integer_nodes:
            return  # folded into its producer's saturating integer output
        handler = handler_for(node)
        if node.name in self.quantized and handler is not None:
            if handler.output is OutputRule.PASSTHROUGH:
                return self._passthrough(node, handler)
            if handler.qlinear is not None and self._integer_possible(node, handler):
                return self._qlinear(node, handler)
        self._float_node(node)

    def finish(self) -> None:
        for value in self.graph.output:
            self._float(value.name)
        del self.graph.node[:]
        self.graph.node.extend(self.nodes)
        self.graph.initializer.extend(self.emit.initializers)
        drop_unused_initializers(self.graph)

    def _float_node(self, node: onnx.NodeProto) -> None:
        for name in node.input:
            self._float(name)
        self.nodes.append(node)

    # --- tensors in both domains -----------------------------------------------------------
    def _float(self, name: str) -> str:
        """The float tensor `name`, dequantized here if it so far only exists as integers."""
        if name in self.int_only:
            self.int_only.discard(name)
            qp = self.plan.activations[name]
            self.nodes.append(self.emit.dequantize(self.ints[name], qp, name, name))
        return name

    def _int(self, node: onnx.NodeProto, name: str) -> Operand:
        """The integer version of input `name` of `node`: a quantized constant, or an activation
        already integer, or quantized here (the start of an integer region)."""
        weight = self.plan.weights.get((node.name, name))
        if weight is not None:
            return self._weight(weight), weight.params
        qp = self.plan.activations[name]
        if name not in self.ints:
            quantized = self.emit.names.new(f"{name}_quantized")
            self.record[quantized] = {"float": name, "lo": None, "hi": None}
            self.nodes.append(self.emit.quantize(self._float(name), qp, quantized, name))
            self.ints[name] = quantized
        return self.ints[name], qp

    def _weight(self, weight: WeightPlan) -> str:
        tensor, qp = weight.tensor, weight.params
        key = (tensor, qp.scale.tobytes() + qp.zero_point.tobytes() + str(qp.axis).encode())
        if key not in self.weights_done:
            name = self.emit.names.new(f"{tensor}_quantized")
            self.emit.initializers.append(typed_constant(weight.integers(self.index.constant(tensor)), qp, name))
            self.weights_done[key] = name
        return self.weights_done[key]

    def _new_int(self, tensor: str) -> str:
        name = self.emit.names.new(f"{tensor}_quantized")
        lo, hi = self.fused_bounds.get(tensor, (None, None))
        self.record[name] = {"float": tensor, "lo": lo, "hi": hi}
        self.ints[tensor] = name
        self.int_only.add(tensor)
        return name

    # --- integer nodes ---------------------------------------------------------------------
    def _operands(self, node: onnx.NodeProto, handler: OpHandler) -> list[int]:
        extra = {handler.weight} if handler.weight is not None and handler.weight < len(node.input) else set()
        return sorted(set(activation_inputs(node, handler)) | extra)

    def _integer_possible(self, node: onnx.NodeProto, handler: OpHandler) -> bool:
        """Whether onnxruntime's integer op can take this node as planned (else it stays float)."""
        for i in self._operands(node, handler):
            name = node.input[i]
            if (node.name, name) not in self.plan.weights and name not in self.plan.activations:
                return False  # e.g. a Gemm whose B is computed at run time
        if handler.bias is not None and handler.bias < len(node.input) and node.input[handler.bias] \
                and node.name not in self.plan.biases:
            return False  # a bias QGemm/QLinearConv cannot take as int32 (2-D, scaled by beta, ...)
        weight = self.plan.weights.get((node.name, node.input[handler.weight])) if handler.weight is not None \
            and handler.weight < len(node.input) else None
        if weight is not None and weight.params.per_channel and len(np.unique(weight.params.zero_point)) > 1:
            return False  # onnxruntime's integer kernels need one zero point for all channels
        return self._output_tensor(node) in self.plan.activations

    def _output_tensor(self, node: onnx.NodeProto) -> str:
        return self.fused_output.get(node.name, node.output[0])

    def _qlinear(self, node: onnx.NodeProto, handler: OpHandler) -> None:
        spec = handler.qlinear
        operands = [self._int(node, node.input[i]) for i in self._operands(node, handler)]
        out = self._output_tensor(node)
        y_qp = self.plan.activations[out]
        y = self.emit.scale_and_zero(y_qp, out)
        bias = self._bias(node, operands) if handler.bias is not None else None
        inputs = _layout_inputs(spec.layout, [self._triple(o, name) for o, name in
                                              zip(operands, [node.input[i] for i in self._operands(node, handler)])],
                                list(y), bias)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute
                 if spec.attributes is None or a.name in spec.attributes}
        if spec.opset_attribute:
            attrs["opset"] = self.opset
        self.nodes.append(helper.make_node(spec.op_type, inputs, [self._new_int(out)], name=node.name,
                                           domain=spec.domain or None, **attrs))
        self.integer_nodes.add(node.name)

    def _triple(self, operand: Operand, base: str) -> list[str]:
        tensor, qp = operand
        return [tensor, *self.emit.scale_and_zero(qp, base)]

    def _bias(self, node: onnx.NodeProto, operands: list[Operand]) -> str | None:
        plan = self.plan.biases.get(node.name)
        if plan is None:
            return None
        x_qp, w_qp = operands[0][1], operands[1][1]
        q, _ = quantize_bias(self.index.constant(plan.tensor), x_qp.scale, w_qp.scale)
        return self.emit.constant(q.reshape(-1), f"{plan.tensor}_quantized")

    def _passthrough(self, node: onnx.NodeProto, handler: OpHandler) -> None:
        """Data movement on the integer tensor: same op, integer input and outputs."""
        moved = onnx.NodeProto()
        moved.CopyFrom(node)
        tensor, qp = self._int(node, node.input[0])
        moved.input[0] = tensor
        k = handler.zero_point_input
        if k is not None and attribute(node, "mode", b"constant") in (b"constant", "constant"):
            zero = self.emit.constant(np.asarray(qp.zero_point).reshape(()), f"{node.name}_pad_value")
            if k < len(moved.input):
                moved.input[k] = zero
            else:
                moved.input.extend([""] * (k - len(moved.input)) + [zero])
        for i, out in enumerate(node.output):
            if out:
                moved.output[i] = self._new_int(out)
        self.nodes.append(moved)
        self.integer_nodes.add(node.name)


def _bounds(activation: onnx.NodeProto, index: GraphIndex) -> tuple[float | None, float | None]:
    """The output bounds of a folded Relu/Clip (None: unbounded, or not a constant)."""
    if activation.op_type == "Relu":
        return 0.0, None

    def end(i: int) -> float | None:  # Clip's min/max inputs (opset >= 11, which prepare guarantees)
        value = index.constant(activation.input[i]) if i < len(activation.input) and activation.input[i] else None
        return None if value is None else float(value)

    return end(1), end(2)


def _layout_inputs(layout: Layout, operands: list[list[str]], y: list[str], bias: str | None) -> list[str]:
    if layout is Layout.UNARY:
        return operands[0] + y
    if layout is Layout.BINARY:
        return operands[0] + operands[1] + y + ([bias] if bias else [])
    if layout is Layout.GEMM:
        return operands[0] + operands[1] + [bias or ""] + y
    return y + [name for triple in operands for name in triple]  # CONCAT
