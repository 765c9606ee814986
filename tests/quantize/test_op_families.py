"""Op families of real models, each decided against what onnxruntime 1.32's CPU provider does:
run on the integer tensor (ReduceMax/Min, Expand, Tile; GlobalMaxPool as ReduceMax), fused into an
integer kernel (Where -> QLinearWhere; ReduceMean over H, W as QLinearGlobalAveragePool), per-channel
weights (grouped ConvTranspose), or left float with a reason (InstanceNormalization, Einsum)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.quantization.api import quantize_model
from ptq_cli.recipe import Recipe
from tests.conftest import make_model, minmax_ranges, ops, run, session

F = TensorProto.FLOAT


def _conv_front(rng, channels=4):
    """x[N,3,6,6] -> Conv(3->C) -> Relu -> r: something quantized ahead of the op under test."""
    w = numpy_helper.from_array(rng.normal(0, 0.5, (channels, 3, 3, 3)).astype(np.float32), "w")
    return [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"], name="relu")], [w]


def _quantize(model, rng, shape=(2, 3, 6, 6), recipe=Recipe()):
    before = copy.deepcopy(model)
    batches = [{"x": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(3)]
    out, plan = quantize_model(model, recipe, minmax_ranges(model, batches))
    assert model == before
    onnx.checker.check_model(out, full_check=True)
    for feeds in batches:
        for want, got in zip(run(model, feeds), run(out, feeds)):
            np.testing.assert_allclose(got, want, atol=0.06 * float(np.abs(want).max()) + 1e-6)
    return out, plan


def _optimized_ops(model, tmp_path) -> list[str]:
    path = tmp_path / "optimized.onnx"
    session(model, optimized_model_filepath=str(path))
    return ops(onnx.load(path))


def test_global_max_pool_runs_as_reduce_max_on_integers(rng, tmp_path):
    nodes, inits = _conv_front(rng)
    nodes += [helper.make_node("GlobalMaxPool", ["r"], ["g"], name="gmp"),
              helper.make_node("Flatten", ["g"], ["y"], name="flat")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 6, 6])],
                       [helper.make_tensor_value_info("y", F, ["N", 4])], inits)
    out, plan = _quantize(model, rng)
    assert "GlobalMaxPool" not in ops(out) and "gmp" in plan.quantized
    optimized = _optimized_ops(out, tmp_path)
    assert "ReduceMax" in optimized and optimized[optimized.index("ReduceMax") - 1] != "DequantizeLinear"


@pytest.mark.parametrize("keepdims", [0, 1])
def test_spatial_reduce_mean_becomes_qlinear_global_average_pool(rng, tmp_path, keepdims):
    nodes, inits = _conv_front(rng)
    nodes += [helper.make_node("ReduceMean", ["r"], ["m"], name="mean", axes=[2, 3], keepdims=keepdims),
              helper.make_node("Relu", ["m"], ["y"], name="tail")]
    shape = ["N", 4, 1, 1] if keepdims else ["N", 4]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 6, 6])],
                       [helper.make_tensor_value_info("y", F, shape)], inits)
    out, plan = _quantize(model, rng)
    assert "ReduceMean" not in ops(out) and "mean" in plan.quantized
    assert "QLinearGlobalAveragePool" in _optimized_ops(out, tmp_path)


def test_reduce_max_expand_and_tile_follow_quantized_data(rng):
    nodes, inits = _conv_front(rng)
    inits += [numpy_helper.from_array(np.array([1, 1, 2, 1], np.int64), "repeats"),
              numpy_helper.from_array(np.array([2, 1, 1, 1], np.int64), "shape")]
    nodes += [helper.make_node("ReduceMax", ["r"], ["rm"], name="rmax", axes=[3], keepdims=1),
              helper.make_node("Tile", ["rm", "repeats"], ["t"], name="tile"),
              helper.make_node("Expand", ["t", "shape"], ["y"], name="expand")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, [1, 3, 6, 6])],
                       [helper.make_tensor_value_info("y", F, [2, 4, 12, 1])], inits)
    _, plan = _quantize(model, rng, shape=(1, 3, 6, 6))
    assert {"rmax", "tile", "expand"} <= set(plan.quantized)


def test_where_is_fused_and_a_mask_fill_stays_float(rng, tmp_path):
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (6, 5)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (6, 5)).astype(np.float32), "w2")
    zero = numpy_helper.from_array(np.float32(0), "zero")
    fill = numpy_helper.from_array(np.float32(-1e9), "fill")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
             helper.make_node("MatMul", ["x", "w2"], ["b"], name="mm2"),
             helper.make_node("Greater", ["a", "zero"], ["cond"], name="gt"),
             helper.make_node("Where", ["cond", "a", "b"], ["y"], name="where"),
             helper.make_node("Where", ["cond", "b", "fill"], ["masked"], name="mask")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 6])],
                       [helper.make_tensor_value_info("y", F, ["N", 5]),
                        helper.make_tensor_value_info("masked", F, ["N", 5])], [w1, w2, zero, fill])
    batches = [{"x": rng.normal(0, 1, (4, 6)).astype(np.float32)} for _ in range(3)]
    out, plan = quantize_model(model, Recipe(), minmax_ranges(model, batches))
    onnx.checker.check_model(out, full_check=True)
    assert "where" in plan.quantized
    assert "mask fill" in {s.node: s.reason for s in plan.skipped}["mask"]
    assert "QLinearWhere" in _optimized_ops(out, tmp_path)
    want, got = run(model, batches[0]), run(out, batches[0])
    np.testing.assert_allclose(got[0], want[0], atol=0.05 * np.abs(want[0]).max())
    np.testing.assert_array_equal(got[1] == -1e9, want[1] == -1e9)


def test_instance_norm_and_einsum_stay_float_with_a_reason(rng):
    nodes, inits = _conv_front(rng)
    inits += [numpy_helper.from_array(np.ones(4, np.float32), "gamma"),
              numpy_helper.from_array(np.zeros(4, np.float32), "beta")]
    nodes += [helper.make_node("InstanceNormalization", ["r"], ["n"], name="inorm"),
              helper.make_node("Einsum", ["n", "n"], ["y"], name="einsum", equation="nchw,nchw->nc")]
    nodes[2].input.extend(["gamma", "beta"])
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 6, 6])],
                       [helper.make_tensor_value_info("y", F, ["N", 4])], inits)
    _, plan = _quantize(model, rng)
    reasons = {s.node: s.reason for s in plan.skipped}
    assert "no integer kernel for InstanceNormalization" in reasons["inorm"]
    assert "no integer kernel for Einsum" in reasons["einsum"]
    assert "conv" in plan.quantized


def test_grouped_conv_transpose_gets_per_channel_weights(rng):
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "wt")  # group 2: C_out 6
    b = numpy_helper.from_array(rng.normal(0, 0.1, (6,)).astype(np.float32), "bt")
    nodes = [helper.make_node("ConvTranspose", ["x", "wt", "bt"], ["y"], name="up", group=2, strides=[2, 2])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4, 5, 5])],
                       [helper.make_tensor_value_info("y", F, ["N", 6, 11, 11])], [w, b])
    out, plan = _quantize(model, rng, shape=(2, 4, 5, 5))
    assert "up" in plan.quantized and "up" not in plan.biases  # the bias stays float
    weight_dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and "wt" in n.input[0])
    scale = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}[weight_dq.input[1]]
    assert scale.shape == (3,) and helper.get_attribute_value(weight_dq.attribute[0]) == 1
