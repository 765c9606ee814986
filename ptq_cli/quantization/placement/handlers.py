"""What each op family needs quantized: one declarative handler per family, shared by every
output format (QDQ insertion and the QOperator rewrite read the same table).

The placement follows what onnxruntime's CPU provider fuses into integer kernels:
- compute ops (Conv, Gemm, MatMul, Add, ...) get DequantizeLinear on every input and
  QuantizeLinear on the output, which onnxruntime turns into QLinearConv, QGemm, QLinearAdd, ...;
- a Relu/Clip that alone reads a compute op's output is folded into that op's output range:
  the QuantizeLinear goes after the Relu/Clip, whose range starts at 0, and onnxruntime drops it
  (ReluQuantFusion / ClipQuantFusion) so the integer kernel saturates instead;
- data-movement ops (Reshape, Transpose, MaxPool, ...) reuse their input's scale and
  zero-point on the output, so onnxruntime can run them on the integer tensor directly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ptq_cli.model.graph import GraphIndex, attribute


class OutputRule(enum.Enum):
    OWN = "own"  # the output is quantized with its own calibrated range
    PASSTHROUGH = "passthrough"  # the output reuses the input's scale and zero-point
    UNIT = "unit"  # the output lies in [0, 1] by definition (Softmax, Sigmoid)


class Layout(enum.Enum):
    """Input order of onnxruntime's integer ops (QLinear* ops take each operand with its scale and zero point)."""

    BINARY = "binary"  # a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp[, bias]: QLinearConv/MatMul/Add/Mul
    GEMM = "gemm"  # a, a_scale, a_zp, b, b_scale, b_zp, bias, y_scale, y_zp: com.microsoft QGemm
    UNARY = "unary"  # x, x_scale, x_zp, y_scale, y_zp: pools, LeakyRelu, Sigmoid, Softmax
    CONCAT = "concat"  # y_scale, y_zp, then x, x_scale, x_zp for every input: QLinearConcat


@dataclass(frozen=True)
class QLinear:
    """The integer op that replaces a float op in the QOperator format."""

    op_type: str
    domain: str = ""  # "" (ONNX) or "com.microsoft" (onnxruntime contrib ops)
    layout: Layout = Layout.UNARY
    attributes: tuple[str, ...] | None = None  # attributes kept from the float node; None keeps all
    opset_attribute: bool = False  # QLinearSoftmax needs the opset of the Softmax it replaces


_MS = "com.microsoft"


@dataclass(frozen=True)
class OpHandler:
    """How one op family is quantized."""

    activations: tuple[int, ...]  # inputs quantized as activations; () with all_inputs=True = every input
    output: OutputRule = OutputRule.OWN
    weight: int | None = None  # input quantized as a weight when it is a constant
    bias: int | None = None  # input quantized to int32 with S_x * S_w
    fuses_relu: bool = False  # a following lone Relu/Clip folds into the output range
    all_inputs: bool = False
    # The output-channel axis of the weight for per-channel scales (None: per tensor only).
    weight_axis: Callable[[onnx.NodeProto, int], int | None] = lambda node, ndim: None
    # Returns why this node cannot be quantized, or None.
    refuse: Callable[[onnx.NodeProto, GraphIndex], str | None] = lambda node, index: None
    # QOperator format: the integer op that replaces the float one (None: a PASSTHROUGH op runs
    # as is on the integer tensor; a compute op without one stays float between Dequantize/Quantize).
    qlinear: "QLinear | None" = None
    # QOperator format: an input holding a float constant that must become the integer zero point
    # (Pad's constant_value: padding with real 0.0 means padding with Z).
    zero_point_input: int | None = None


def _gemm_axis(node: onnx.NodeProto, ndim: int) -> int | None:
    return 0 if attribute(node, "transB", 0) else 1


def _matmul_axis(node: onnx.NodeProto, ndim: int) -> int | None:
    return ndim - 1 if ndim == 2 else None  # per column of a 2-D B; batched B stays per tensor


def _conv_transpose_axis(node: onnx.NodeProto, ndim: int) -> int | None:
    # Weight is [C_in, C_out / group, k...]. With groups, axis 1 still splits the weight into
    # C_out / group slices (output channel j of every group shares a scale): finer than one scale
    # per tensor. The int32 bias then stays float (it needs one scale per output channel).
    return 1


def _refuse_pad(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if attribute(node, "mode", b"constant") not in (b"constant", "constant"):
        return None
    value = index.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if value is not None and value.size and float(value.reshape(-1)[0]) != 0.0:
        return "Pad with a non-zero constant would need that value to be exactly representable"
    return None


def _refuse_maxpool(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if len([o for o in node.output if o]) > 1:
        return "MaxPool with an Indices output has no integer kernel"
    return None


def _refuse_gather(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    if node.input[0] in index.initializers:
        return "Gather from a constant table (an embedding) is left in float"
    return None


# A constant this large beside activations is a mask fill (attention's -1e9 / -inf): one scale
# for both would leave the activations a handful of levels.
_MASK_FILL = 1e4


def _refuse_where(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    for name in node.input[1:3]:
        value = index.constant(name)
        if value is not None and value.size and (not np.all(np.isfinite(value)) or np.abs(value).max() > _MASK_FILL):
            return "Where with an infinite or huge constant (a mask fill) stays float: one scale cannot hold both"
    return None


_CONV = OpHandler((0,), weight=1, bias=2, fuses_relu=True, weight_axis=lambda node, ndim: 0,
                  qlinear=QLinear("QLinearConv", layout=Layout.BINARY))
_PASS = OpHandler((0,), OutputRule.PASSTHROUGH)

HANDLERS: dict[str, OpHandler] = {
    "Conv": _CONV,
    "ConvTranspose": OpHandler((0,), weight=1, bias=2, fuses_relu=True, weight_axis=_conv_transpose_axis),
    "Gemm": OpHandler((0,), weight=1, bias=2, fuses_relu=True, weight_axis=_gemm_axis,
                      qlinear=QLinear("QGemm", _MS, Layout.GEMM, ("alpha", "transA", "transB"))),
    "MatMul": OpHandler((0, 1), weight=1, fuses_relu=True, weight_axis=_matmul_axis,
                        qlinear=QLinear("QLinearMatMul", layout=Layout.BINARY)),
    "Add": OpHandler((0, 1), fuses_relu=True, qlinear=QLinear("QLinearAdd", _MS, Layout.BINARY)),
    "Mul": OpHandler((0, 1), fuses_relu=True, qlinear=QLinear("QLinearMul", _MS, Layout.BINARY)),
    "Concat": OpHandler((), all_inputs=True, qlinear=QLinear("QLinearConcat", _MS, Layout.CONCAT)),
    "AveragePool": OpHandler((0,), qlinear=QLinear("QLinearAveragePool", _MS, attributes=(
        "auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides"))),
    "GlobalAveragePool": OpHandler((0,), qlinear=QLinear("QLinearGlobalAveragePool", _MS)),
    "LeakyRelu": OpHandler((0,), qlinear=QLinear("QLinearLeakyRelu", _MS)),
    "Sigmoid": OpHandler((0,), OutputRule.UNIT, qlinear=QLinear("QLinearSigmoid", _MS)),
    "Softmax": OpHandler((0,), OutputRule.UNIT, qlinear=QLinear("QLinearSoftmax", _MS, opset_attribute=True)),
    "MaxPool": OpHandler((0,), OutputRule.PASSTHROUGH, refuse=_refuse_maxpool),
    "Resize": _PASS,
    "Pad": OpHandler((0,), OutputRule.PASSTHROUGH, refuse=_refuse_pad, zero_point_input=2),
    "Reshape": _PASS,
    "Transpose": _PASS,
    "Flatten": _PASS,
    "Squeeze": _PASS,
    "Unsqueeze": _PASS,
    "Slice": _PASS,
    "Split": _PASS,
    "Gather": OpHandler((0,), OutputRule.PASSTHROUGH, refuse=_refuse_gather),
    "DepthToSpace": _PASS,
    "SpaceToDepth": _PASS,
    # Measured on onnxruntime 1.32 (CPU): these run on the integer tensor between a Dequantize and
    # a Quantize of the same parameters (the pair is dropped); max/min commute with quantization.
    "ReduceMax": _PASS,
    "ReduceMin": _PASS,
    "Expand": _PASS,
    "Tile": _PASS,
    # Fused into com.microsoft QLinearWhere; the condition (input 0) is bool.
    "Where": OpHandler((1, 2), refuse=_refuse_where),
}

# Activations that onnxruntime folds into the QuantizeLinear after them.
FUSED_ACTIVATIONS = ("Relu", "Clip")


def handler_for(node: onnx.NodeProto) -> OpHandler | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return HANDLERS.get(node.op_type)


def activation_inputs(node: onnx.NodeProto, handler: OpHandler) -> list[int]:
    indices = range(len(node.input)) if handler.all_inputs else handler.activations
    return [i for i in indices if i < len(node.input) and node.input[i]]
