"""The QOperator rewrite: structure, validity, and numerics against the QDQ model and FP32."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest

from ptq_cli.errors import UsageError
from ptq_cli.quantization.api import quantize_model
from ptq_cli.recipe import Format, PerChannel, PerTensor, QType, Recipe, TensorSpec
from tests.conftest import image_batches, minmax_ranges, ops, run, sqnr_db, tiny_conv_relu
from tests.qoperator import models

QOP = Recipe(format=Format.QOPERATOR)


def _batches(rng, shape, n=6):
    return [{"x": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(n)]


def _both(model, batches, recipe=QOP):
    """QDQ and QOperator models from the same ranges; checks validity and that `model` is untouched."""
    before = copy.deepcopy(model)
    ranges = minmax_ranges(model, batches)
    qdq, _ = quantize_model(model, recipe.with_(format=Format.QDQ), ranges)
    qop, plan = quantize_model(model, recipe, ranges)
    onnx.checker.check_model(qop, full_check=True)
    assert model == before
    return qdq, qop, plan


def _assert_matches(model, qdq, qop, plan, feeds, *, steps=1.0, min_sqnr=20.0):
    """QOperator within `steps` output quantization steps of QDQ, and close to FP32."""
    reference, fake, integer = run(model, feeds), run(qdq, feeds), run(qop, feeds)
    for out, f, a, b in zip(model.graph.output, reference, fake, integer):
        step = float(np.max(plan.activations[out.name].scale)) if out.name in plan.activations else 1e-6
        assert np.max(np.abs(a - b)) <= steps * step + 1e-6, out.name
        assert sqnr_db(f, b) > min_sqnr, out.name


def test_conv_relu_pool_gemm_becomes_integer_ops(rng):
    model = tiny_conv_relu(rng)
    batches = image_batches(rng)
    qdq, qop, plan = _both(model, batches)
    assert ops(qop) == ["QuantizeLinear", "QLinearConv", "MaxPool", "QLinearConv", "QLinearGlobalAveragePool",
                        "Flatten", "QGemm", "DequantizeLinear"]
    assert [o.domain for o in qop.opset_import if o.domain] == ["com.microsoft"]
    conv = qop.graph.node[1]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qop.graph.initializer}
    assert inits[conv.input[3]].dtype == np.int8 and inits[conv.input[4]].shape == (4,)  # per channel
    assert inits[conv.input[8]].dtype == np.int32  # bias
    assert qop.graph.output[0].name == "y" and qop.graph.node[-1].output == ["y"]
    _assert_matches(model, qdq, qop, plan, batches[0], min_sqnr=30)


def test_matmul_add_mul_and_activation_matmul(rng):
    model = models.mlp_add_mul(rng)
    batches = _batches(rng, (4, 8))
    qdq, qop, plan = _both(model, batches)
    assert ops(qop) == ["QuantizeLinear", "QLinearMatMul", "QLinearAdd", "QLinearMatMul", "QLinearMul",
                        "Transpose", "QLinearMatMul", "DequantizeLinear"]
    assert "relu" in plan.fused  # Relu after Add disappears into QLinearAdd's saturating output
    mm = qop.graph.node[1]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in qop.graph.initializer}
    assert inits[mm.input[4]].shape == (6,)  # per-column weight scale
    _assert_matches(model, qdq, qop, plan, batches[0])


def test_concat_pools_leaky_sigmoid_softmax(rng):
    model = models.branches(rng)
    batches = _batches(rng, (2, 3, 8, 8))
    qdq, qop, plan = _both(model, batches)
    assert ops(qop) == ["QuantizeLinear", "QLinearConv", "QLinearConv", "QLinearConcat", "QLinearAveragePool",
                        "QLinearLeakyRelu", "QLinearSigmoid", "QLinearGlobalAveragePool", "Reshape",
                        "QLinearSoftmax", "DequantizeLinear", "DequantizeLinear"]
    softmax = next(n for n in qop.graph.node if n.op_type == "QLinearSoftmax")
    assert {a.name for a in softmax.attribute} == {"axis", "opset"}
    _assert_matches(model, qdq, qop, plan, batches[0], min_sqnr=25)


def test_data_movement_runs_on_the_integer_tensor(rng):
    model = models.data_movement(rng)
    batches = _batches(rng, (1, 3, 6, 6))
    qdq, qop, plan = _both(model, batches)
    assert ops(qop) == ["QuantizeLinear", "QLinearConv", "Pad", "MaxPool", "Resize", "Slice", "Split", "Squeeze",
                        "Unsqueeze", "Gather", "QLinearConcat", "QLinearConv", "DequantizeLinear"]
    pad = next(n for n in qop.graph.node if n.op_type == "Pad")
    pad_value = next(t for t in qop.graph.initializer if t.name == pad.input[2])
    # Padding with real 0.0 is padding with the zero point, in the integer type.
    assert pad_value.data_type == onnx.TensorProto.UINT8
    assert onnx.numpy_helper.to_array(pad_value) == plan.activations["r"].zero_point
    _assert_matches(model, qdq, qop, plan, batches[0], min_sqnr=25)


def test_node_without_integer_kernel_stays_float_between_dq_and_q(rng):
    model = models.conv_transpose(rng)
    batches = _batches(rng, (1, 3, 6, 6))
    qdq, qop, plan = _both(model, batches)
    assert ops(qop) == ["QuantizeLinear", "QLinearConv", "DequantizeLinear", "ConvTranspose", "Relu"]
    _assert_matches(model, qdq, qop, plan, batches[0], steps=2.0, min_sqnr=25)


def test_asymmetric_per_channel_conv_falls_back_to_float(rng):
    # onnxruntime's QLinearConv needs one zero point for all channels.
    model = tiny_conv_relu(rng)
    recipe = QOP.with_(weights=TensorSpec(QType.INT8, symmetric=False, granularity=PerChannel()))
    qdq, qop, plan = _both(model, image_batches(rng), recipe)
    assert "Conv" in ops(qop) and "QLinearConv" not in ops(qop)
    feeds = image_batches(rng, 1)[0]
    assert sqnr_db(run(model, feeds)[0], run(qop, feeds)[0]) > 25


def test_int8_activations(rng):
    model = tiny_conv_relu(rng)
    batches = image_batches(rng)
    recipe = QOP.with_(activations=TensorSpec(QType.INT8, symmetric=False, granularity=PerTensor()))
    qdq, qop, plan = _both(model, batches, recipe)
    assert ops(qop).count("QLinearConv") == 2
    assert plan.activations["x"].qtype is QType.INT8
    _assert_matches(model, qdq, qop, plan, batches[0], min_sqnr=30)


def test_16_bit_types_are_refused_with_the_fix(rng):
    model = tiny_conv_relu(rng)
    recipe = QOP.with_(activations=TensorSpec(QType.UINT16, symmetric=False, granularity=PerTensor()))
    with pytest.raises(UsageError, match="--format qdq"):
        quantize_model(model, recipe, minmax_ranges(model, image_batches(rng, 2)))
