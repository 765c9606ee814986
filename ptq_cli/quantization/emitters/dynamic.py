"""Dynamic quantization: weights quantized ahead of time, activations at run time.

    x_q, S_x, Z_x = DynamicQuantizeLinear(x)         uint8, from this input's own min/max
    y = float(MatMulInteger(x_q, W_q, Z_x, Z_w)) · (S_x · S_w)  [+ beta · C]

No calibration data is needed: every activation gets the range of the values it actually holds,
which suits MatMul-heavy models (transformers, LSTMs) whose ranges vary from input to input.
MatMul and Gemm (as MatMul + Add, alpha folded into the scale) become MatMulInteger with one
weight scale and zero point per column; Conv becomes ConvInteger, per output channel only when all
channels share one zero point (symmetric weights), since onnxruntime's ConvInteger takes a single
weight zero point. The product is written as Cast + Mul(·, Mul(S_x, S_w)), the pattern
onnxruntime fuses into DynamicQuantizeMatMul / MatMulIntegerToFloat.
"""

from __future__ import annotations


import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.errors import UsageError
from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute, drop_unused_initializers
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.plan import SkipReason, Why
from ptq_cli.quantization.emitters.dynamic_lstm import MS_DOMAIN, dynamic_lstm, refuse_lstm
from ptq_cli.quantization.arithmetic.pairs import POWER_OF_TWO_STEPS, SCALE_STEPS, pairing_for, portable_weight
from ptq_cli.quantization.arithmetic.scheme import QParams, compute_qparams, quantize, weight_range
from ptq_cli.quantization.arithmetic.stochastic import weight_rng
from ptq_cli.recipe import PerChannel, QType, Recipe, Rounding, Target, TensorSpec

DYNAMIC_DATA = "none: dynamic quantization measures activation ranges at run time"
_REWRITTEN = ("MatMul", "Gemm", "Conv", "LSTM")
_CONV_ATTRIBUTES = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def check_dynamic_recipe(recipe: Recipe) -> None:
    if recipe.weights.dtype not in (QType.INT8, QType.UINT8):
        raise UsageError(f"dynamic quantization needs int8 or uint8 weights (MatMulInteger/ConvInteger), "
                         f"got {recipe.weights.dtype.value}; pass --weight-type int8")
    if recipe.rounding is Rounding.GPTQ:
        raise UsageError("GPTQ rounding needs the input Gram matrices of static calibration; dynamic "
                         "quantization has no calibration: use --rounding nearest or stochastic")
    if recipe.activations.dtype is not QType.UINT8:
        raise UsageError(f"dynamic quantization produces uint8 activations (DynamicQuantizeLinear), "
                         f"got --activation-type {recipe.activations.dtype.value}; drop it or use static quantization")


def emit_dynamic(prepared: onnx.ModelProto, recipe: Recipe, only: frozenset[str] | None = None) -> EmitResult:
    """A copy of `prepared` with MatMul/Gemm/Conv on constant weights made integer,
    the names of the rewritten nodes, and why every other node stayed float. With `only`, just
    those nodes are rewritten and the others are left as they are (a static model's float part)."""
    out = onnx.ModelProto()
    out.CopyFrom(prepared)
    rewriter = _DynamicRewriter(out, recipe)
    for node in list(out.graph.node):
        if only is not None and node.name not in only:
            rewriter.nodes.append(node)
            continue
        rewriter.visit(node)
    del out.graph.node[:]
    out.graph.node.extend(rewriter.nodes)
    out.graph.initializer.extend(rewriter.initializers)
    drop_unused_initializers(out.graph)
    if any(n.domain == MS_DOMAIN for n in rewriter.nodes) and \
            not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return EmitResult(out, tuple(rewriter.done), tuple(rewriter.skipped))


class _DynamicRewriter:
    def __init__(self, model: onnx.ModelProto, recipe: Recipe) -> None:
        self.index = GraphIndex(model.graph)
        self.names = NameAllocator(model.graph)
        self.recipe = recipe
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.dynamic: dict[str, tuple[str, str, str]] = {}  # activation -> (x_q, S_x, Z_x)
        self.done: list[str] = []
        self.skipped: list[SkipReason] = []

    def visit(self, node: onnx.NodeProto) -> None:
        reason = self._refuse(node)
        if reason is not None:
            why = Why.EXCLUDED if self.recipe.excludes(node.name, node.op_type) else Why.UNSUPPORTED
            self.skipped.append(SkipReason(node.name, node.op_type, reason, why))
            self.nodes.append(node)
            return
        if node.op_type == "Conv":
            self._conv(node)
        elif node.op_type == "LSTM":
            # DynamicQuantizeLSTM's weights are int8 whatever --weight-type says: bounded for the target alone
            lstm, initializers = dynamic_lstm(node, self.index, self.names, self.recipe.target is Target.PORTABLE)
            self.nodes.append(lstm)
            self.initializers.extend(initializers)
        else:
            self._matmul(node)
        self.done.append(node.name)

    def _refuse(self, node: onnx.NodeProto) -> str | None:
        if node.op_type not in _REWRITTEN or node.domain not in ("", "ai.onnx"):
            return "dynamic quantization rewrites only MatMul, Gemm, Conv and LSTM; this runs in float"
        if node.op_type not in self.recipe.dynamic_ops:
            return (f"dynamic quantization leaves {node.op_type} in float by default (onnxruntime's "
                    f"{node.op_type}Integer is slower than float {node.op_type}); "
                    f"--dynamic-ops {','.join(self.recipe.dynamic_ops + (node.op_type,))} rewrites it")
        if self.recipe.excludes(node.name, node.op_type):
            return "excluded by --exclude"
        if node.op_type == "LSTM":
            return refuse_lstm(node, self.index)
        if not self._float_input(node.input[0]):
            return "its input is not float"
        weight = self.index.constant(node.input[1])
        if weight is None and not (node.op_type == "MatMul" and self.index.is_float(node.input[1])):
            return "its weight is computed at run time; dynamic quantization needs a constant weight"
        if node.op_type == "Gemm" and attribute(node, "transA", 0):
            return "Gemm with transA=1 is left in float"
        if node.op_type == "MatMul" and weight is not None and weight.ndim < 2:
            return "MatMul with a 1-D weight is left in float"
        return None

    def _float_input(self, name: str) -> bool:
        """Float by its type, or a DequantizeLinear's output that a static pass (which gives its new
        tensors no type) wrote before a MatMul the fallback quantizes at run time."""
        producer = self.index.producer.get(name)
        return self.index.is_float(name) or (producer is not None and producer.op_type == "DequantizeLinear")

    # --- pieces ----------------------------------------------------------------------------
    def _constant(self, array: np.ndarray, base: str) -> str:
        name = self.names.new(base)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def _node(self, op: str, inputs: list[str], base: str, output: str | None = None, **attrs) -> str:
        output = output or self.names.new(base)
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.names.new(f"{base}_{op}"), **attrs))
        return output

    def _quantized_input(self, tensor: str) -> tuple[str, str, str]:
        """DynamicQuantizeLinear of an activation, shared by all its consumers."""
        if tensor not in self.dynamic:
            outs = [self.names.new(f"{tensor}_{suffix}") for suffix in ("quantized", "scale", "zero_point")]
            self.nodes.append(helper.make_node("DynamicQuantizeLinear", [tensor], outs,
                                               name=self.names.new(f"{tensor}_DynamicQuantizeLinear")))
            self.dynamic[tensor] = (outs[0], outs[1], outs[2])
        return self.dynamic[tensor]

    def _weight_params(self, weight: np.ndarray, axis: int | None, name: str = "", node: str = "") -> QParams:
        spec: TensorSpec = self.recipe.weights
        if not isinstance(spec.granularity, PerChannel):
            axis = None
        lo, hi = weight_range(weight, axis, name, node)
        return compute_qparams(lo, hi, spec.dtype, symmetric=spec.symmetric, reduce_range=spec.reduce_range,
                               power_of_two=spec.power_of_two, axis=axis)

    def _integers(self, weight: np.ndarray, qp: QParams, tensor: str, kernel: str) -> tuple[QParams, np.ndarray]:
        """The parameters and integer weight of a `kernel` (MatMulInteger, ConvInteger), within the
        pair limit of the portable target (pairs.py)."""
        stochastic = self.recipe.rounding is Rounding.STOCHASTIC
        rng = weight_rng(self.recipe.seed, tensor) if stochastic else None
        pairing = pairing_for(kernel, weight.shape) if self.recipe.bounds_pairs else None
        if pairing is None:
            return qp, quantize(weight, qp, rng=rng)
        steps = POWER_OF_TWO_STEPS if self.recipe.weights.power_of_two else SCALE_STEPS
        return portable_weight(weight, qp, pairing, rng, steps)

    def _rescale(self, node: onnx.NodeProto, accumulator: str, x_scale: str, w_scale: np.ndarray,
                 output: str) -> str:
        """float(accumulator) · (S_x · S_w), in the order onnxruntime's fusions match."""
        as_float = self._node("Cast", [accumulator], f"{node.name}_cast", to=onnx.TensorProto.FLOAT)
        w_scale_name = self._constant(w_scale.astype(np.float32), f"{node.input[1]}_scale")
        scale = self._node("Mul", [x_scale, w_scale_name], f"{node.name}_scale")
        return self._node("Mul", [as_float, scale], f"{node.name}_rescaled", output=output)

    # --- ops -------------------------------------------------------------------------------
    def _activation_matmul(self, node: onnx.NodeProto) -> None:
        """Both operands computed at run time (attention): both quantized dynamically."""
        a_q, a_scale, a_zero = self._quantized_input(node.input[0])
        b_q, b_scale, b_zero = self._quantized_input(node.input[1])
        accumulator = self._node("MatMulInteger", [a_q, b_q, a_zero, b_zero], f"{node.name}_int")
        as_float = self._node("Cast", [accumulator], f"{node.name}_cast", to=onnx.TensorProto.FLOAT)
        scale = self._node("Mul", [a_scale, b_scale], f"{node.name}_scale")
        self._node("Mul", [as_float, scale], f"{node.name}_rescaled", output=node.output[0])

    def _matmul(self, node: onnx.NodeProto) -> None:
        if node.input[1] not in self.index.initializers:
            return self._activation_matmul(node)
        weight = self.index.constant(node.input[1]).astype(np.float32)
        alpha = 1.0
        if node.op_type == "Gemm":
            alpha = float(attribute(node, "alpha", 1.0))
            weight = weight.T if attribute(node, "transB", 0) else weight
        qp = self._weight_params(weight, weight.ndim - 1 if weight.ndim == 2 else None, node.input[1], node.name)
        qp, integers = self._integers(weight, qp, node.input[1], "MatMulInteger")
        w_q = self._constant(integers, f"{node.input[1]}_quantized")
        w_zero = self._constant(np.asarray(qp.zero_point), f"{node.input[1]}_zero_point")
        x_q, x_scale, x_zero = self._quantized_input(node.input[0])
        accumulator = self._node("MatMulInteger", [x_q, w_q, x_zero, w_zero], f"{node.name}_int")
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        y = self._rescale(node, accumulator, x_scale, qp.scale * np.float32(alpha),
                          None if has_bias else node.output[0])
        if has_bias:
            beta, bias = float(attribute(node, "beta", 1.0)), self.index.constant(node.input[2])
            if beta == 1.0:
                c = node.input[2]
            elif bias is not None:
                c = self._constant((bias * beta).astype(np.float32), f"{node.input[2]}_scaled")
            else:
                c = self._node("Mul", [node.input[2], self._constant(np.float32(beta), "beta")], f"{node.name}_beta")
            self._node("Add", [y, c], f"{node.name}_bias", output=node.output[0])

    def _conv(self, node: onnx.NodeProto) -> None:
        weight = self.index.constant(node.input[1]).astype(np.float32)
        qp = self._weight_params(weight, 0, node.input[1], node.name)
        if qp.per_channel and len(np.unique(qp.zero_point)) > 1:
            qp = self._weight_params(weight, None)  # ConvInteger takes a single weight zero point
        qp, integers = self._integers(weight, qp, node.input[1], "ConvInteger")
        w_q = self._constant(integers, f"{node.input[1]}_quantized")
        w_zero = self._constant(np.asarray(qp.zero_point).reshape(-1)[:1].reshape(()), f"{node.input[1]}_zero_point")
        x_q, x_scale, x_zero = self._quantized_input(node.input[0])
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in _CONV_ATTRIBUTES}
        accumulator = self._node("ConvInteger", [x_q, w_q, x_zero, w_zero], f"{node.name}_int", **attrs)
        channel_shape = (1, -1) + (1,) * (weight.ndim - 2)  # broadcast over [N, M, spatial...]
        w_scale = qp.scale.reshape(channel_shape) if qp.per_channel else qp.scale
        has_bias = len(node.input) > 2 and node.input[2]
        y = self._rescale(node, accumulator, x_scale, w_scale, None if has_bias else node.output[0])
        if has_bias:
            bias = self.index.constant(node.input[2])
            c = self._constant(bias.reshape(channel_shape).astype(np.float32), f"{node.input[2]}_broadcast") \
                if bias is not None else self._node("Reshape", [node.input[2], self._constant(
                    np.array(channel_shape, np.int64), "bias_shape")], f"{node.name}_bias_shape")
            self._node("Add", [y, c], f"{node.name}_bias", output=node.output[0])
