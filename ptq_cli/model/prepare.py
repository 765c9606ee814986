"""Put an FP32 model in the shape the quantizer expects: one sequence of passes (see passes/).

- Constant nodes become initializers (weights stored in Constant nodes count as weights);
- an If on a constant becomes the branch it takes;
- experimental ops of old exports (ImageScaler, ...) become the standard ops they stand for;
- the opset is raised to one with per-axis QuantizeLinear/DequantizeLinear (13), or 21 for
  4- and 16-bit types (or as high as onnx's version converter gets), and the IR version with it;
- BatchNormalization after a Conv is folded into the Conv's weights and bias, and so is a
  constant Mul (and Add) after it (learnable affine blocks);
- a zero Pad before a Conv becomes the Conv's own padding;
- a Div by a constant becomes a Mul by its reciprocal;
- GlobalMaxPool becomes ReduceMax and a ReduceMean over H, W GlobalAveragePool (integer kernels);
- every node gets a name, and every tensor a type (at any model size).

The caller's model is never modified: prepare copies its structure once (external weights stay
on disk) and the passes work on that copy.
"""

from __future__ import annotations

import logging

import onnx

from ptq_cli.model.passes import (DivToMul, FoldAffineIntoConv, FoldBatchNorm, FoldConstantIf, FoldPad, GlobalPools,
                                  InferTypes, LiftConstants, ModernIr, NameNodes, RewriteDeprecatedOps,
                                  SequenceResult, Sequential, UpgradeOpset)
from ptq_cli.model.passes.upgrade_opset import DYNAMIC_OPSET, QDQ_PER_TENSOR_OPSET  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

QDQ_PER_AXIS_OPSET = 13
QDQ_4_16_BIT_OPSET = 21


def prepare_passes(min_opset: int = QDQ_PER_AXIS_OPSET) -> Sequential:
    # ModernIr before the upgrade too: the version converter needs initializers that are not inputs.
    # LiftConstants again after FoldConstantIf: the branch taken may hold Constant nodes.
    return Sequential([LiftConstants(), FoldConstantIf(), LiftConstants(), RewriteDeprecatedOps(), ModernIr(),
                       UpgradeOpset(min_opset), ModernIr(),
                       FoldBatchNorm(), FoldAffineIntoConv(), FoldPad(),
                       DivToMul(), NameNodes(), InferTypes(), GlobalPools()])


def prepare_with_result(model: onnx.ModelProto, *, min_opset: int = QDQ_PER_AXIS_OPSET) -> SequenceResult:
    """Copy `model` and run the prepare passes on the copy; the result says what each did."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    result = prepare_passes(min_opset)(out)
    for change in result.changes:
        log.info("prepare: %s", change)
    return result


def prepare(model: onnx.ModelProto, *, min_opset: int = QDQ_PER_AXIS_OPSET) -> onnx.ModelProto:
    """Copy, normalise and type `model` for quantization."""
    return prepare_with_result(model, min_opset=min_opset).model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every tensor typed, at any size (in place; returned for convenience)."""
    return InferTypes()(model).model
