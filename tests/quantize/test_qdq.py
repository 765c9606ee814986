"""QDQ insertion on tiny graphs: structure, validity, numerics in onnxruntime, and what
onnxruntime's CPU provider fuses the result into."""

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.api import quantize_model
from ptq_cli.recipe import PerTensor, Recipe, TensorSpec, QType
from tests.conftest import (image_batches, make_model, minmax_ranges, ops, run, session, sqnr_db,
                            tiny_conv_relu)


def _quantize(model, batches, recipe=Recipe()):
    before = model.SerializeToString()
    ranges = minmax_ranges(prepare(model), batches)
    out, plan = quantize_model(model, recipe, ranges)
    assert model.SerializeToString() == before, "the input model was modified"
    onnx.checker.check_model(out, full_check=True)
    return out, plan


def _optimized_ops(model, tmp_path) -> list[str]:
    path = tmp_path / "optimized.onnx"
    session(model, optimized_model_filepath=str(path))
    return ops(onnx.load(str(path)))


def test_conv_chain_fuses_into_integer_kernels(rng, tmp_path):
    model = tiny_conv_relu(rng)
    batches = image_batches(rng)
    out, plan = _quantize(model, batches)
    assert plan.fused == {"relu1": "conv1", "relu2": "conv2"}
    assert plan.skipped == ()
    # Weights: int8 per-channel DequantizeLinear with axis 0; bias int32.
    weight_dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w1_quantized"]
    assert len(weight_dq) == 1 and helper.get_attribute_value(weight_dq[0].attribute[0]) == 0
    inits = {t.name: t for t in out.graph.initializer}
    assert inits["w1_quantized"].data_type == TensorProto.INT8
    assert inits["b1_quantized"].data_type == TensorProto.INT32
    assert "w1" not in inits  # the float weight is gone
    # No Q/DQ between a Conv and the Relu it feeds: the Relu's output carries the range.
    conv1 = next(n for n in out.graph.node if n.name == "conv1")
    relu1 = next(n for n in out.graph.node if n.name == "relu1")
    assert relu1.input[0] == conv1.output[0]
    feeds = batches[0]
    ref, got = run(model, feeds)[0], run(out, feeds)[0]
    assert sqnr_db(ref, got) > 30
    fused = _optimized_ops(out, tmp_path)
    assert fused.count("QLinearConv") == 2 and "QGemm" in fused
    assert "Conv" not in fused and "Relu" not in fused and "Gemm" not in fused
    assert "QLinearGlobalAveragePool" in fused


def test_per_tensor_weights_have_scalar_scales(rng):
    recipe = Recipe(weights=TensorSpec(QType.INT8, True, PerTensor()))
    out, _ = _quantize(tiny_conv_relu(rng), image_batches(rng), recipe)
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not node.attribute, node.name
    scales = [t for t in out.graph.initializer if t.name.endswith("_scale")]
    assert scales and all(len(t.dims) == 0 for t in scales)


def test_opset_11_is_upgraded_so_per_channel_is_valid(rng):
    model = tiny_conv_relu(rng, opset=11)
    batches = image_batches(rng)
    out, _ = _quantize(model, batches)
    assert next(o.version for o in out.opset_import if o.domain == "") >= 13
    assert sqnr_db(run(model, batches[0])[0], run(out, batches[0])[0]) > 30


def test_weights_in_constant_nodes_count_as_weights(rng):
    model = tiny_conv_relu(rng)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    const = helper.make_node("Constant", [], ["w1"], name="w1_const", value=w1)
    kept = [t for t in model.graph.initializer if t.name != "w1"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    model.graph.node.insert(0, const)
    out, plan = _quantize(model, image_batches(rng))
    assert "Constant" not in ops(out)
    assert any(t.name == "w1_quantized" and t.data_type == TensorProto.INT8 for t in out.graph.initializer)


def test_batch_norm_is_folded_into_the_conv(rng):
    c = 4
    w = numpy_helper.from_array(rng.normal(0, 1, (c, 3, 3, 3)).astype(np.float32), "w")
    bn = [numpy_helper.from_array(v.astype(np.float32), n) for v, n in [
        (rng.uniform(0.5, 2, c), "g"), (rng.normal(0, 1, c), "beta"), (rng.normal(0, 1, c), "mean"),
        (rng.uniform(0.5, 2, c), "var")]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["y"], name="bn")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 4, 4])], [w, *bn])
    prepared = prepare(model)
    assert ops(prepared) == ["Conv"]
    x = rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(run(prepared, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    out, plan = _quantize(model, [{"x": x}])
    assert plan.quantized == ("conv",)
    # The graph output keeps its name, now written by a DequantizeLinear.
    assert out.graph.output[0].name == "y"
    assert next(n for n in out.graph.node if "y" in n.output).op_type == "DequantizeLinear"


def _after_conv(op_type, rng, extra_inputs=(), initializers=(), **attrs):
    """x -> Conv(3->4) -> OP -> y, so that OP sees a quantized input."""
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(op_type, ["c", *extra_inputs], ["y"], name="op", **attrs)]
    graph = helper.make_graph(nodes, "op", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *initializers])
    inferred = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    y = inferred.graph.output[0]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8, 8])], [y],
                      [w, *initializers])


def _const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


OPS = {
    "AveragePool": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "GlobalAveragePool": {},
    "MaxPool": dict(kernel_shape=[2, 2], strides=[2, 2]),
    "LeakyRelu": dict(alpha=0.1),
    "Sigmoid": {},
    "Softmax": dict(axis=1),
    "Transpose": dict(perm=[0, 2, 3, 1]),
    "Flatten": dict(axis=1),
    "Reshape": dict(extra_inputs=["shape"], initializers=[_const("shape", np.int64([2, -1]))]),
    "Unsqueeze": dict(extra_inputs=["axes"], initializers=[_const("axes", np.int64([1]))]),
    "Slice": dict(extra_inputs=["starts", "ends"], initializers=[_const("starts", np.int64([0])),
                                                                 _const("ends", np.int64([2]))]),
    "Gather": dict(extra_inputs=["idx"], initializers=[_const("idx", np.int64([0, 2]))], axis=1),
    "Resize": dict(extra_inputs=["", "scales"], initializers=[_const("scales", np.float32([1, 1, 2, 2]))],
                   mode="nearest"),
    "Pad": dict(extra_inputs=["pads"], initializers=[_const("pads", np.int64([0, 0, 1, 1, 0, 0, 1, 1]))]),
    "Add": dict(extra_inputs=["k"], initializers=[_const("k", np.float32(np.linspace(-1, 1, 8)))]),
    "Mul": dict(extra_inputs=["k"], initializers=[_const("k", np.float32(np.linspace(0.5, 2, 8)))]),
    "Concat": dict(extra_inputs=["c"], axis=1),
    "MatMul": dict(extra_inputs=["m"], initializers=[_const("m", np.float32(np.eye(8, 5)))]),
}


@pytest.mark.parametrize("op_type", sorted(OPS))
def test_every_op_family_is_quantized_and_stays_close(op_type, rng):
    spec = dict(OPS[op_type])
    extra, inits = spec.pop("extra_inputs", ()), spec.pop("initializers", ())
    model = _after_conv(op_type, rng, extra, inits, **spec)
    batches = image_batches(rng, n=4)
    out, plan = _quantize(model, batches)
    assert "op" in plan.quantized, plan.skipped
    ref, got = run(model, batches[0])[0], run(out, batches[0])[0]
    assert got.shape == ref.shape
    assert sqnr_db(ref, got) > 25, op_type
    producer = {o: n for n in out.graph.node for o in n.output}
    op = next(n for n in out.graph.node if n.name == "op")
    assert producer[op.input[0]].op_type == "DequantizeLinear"
    if op_type in ("MaxPool", "Transpose", "Reshape", "Resize", "Pad", "Gather"):
        # Data movement reuses the input's parameters, so onnxruntime can run it on integers.
        q_in = producer[producer[op.input[0]].input[0]]
        q_out = next(n for n in out.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == op.output[0])
        assert q_in.input[1:] == q_out.input[1:]


def test_activation_times_activation_matmul_and_conv_transpose(rng):
    w = numpy_helper.from_array(rng.normal(0, 0.5, (3, 2, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["a", "b"], ["m"], name="mm"),
             helper.make_node("ConvTranspose", ["m", "w"], ["y"], name="deconv", strides=[2, 2])]
    model = make_model(nodes, [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 4, 5]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 5, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 9, 9])], [w])
    batches = [{"a": rng.normal(0, 1, (1, 3, 4, 5)).astype(np.float32),
                "b": rng.normal(0, 1, (1, 3, 5, 4)).astype(np.float32)} for _ in range(4)]
    out, plan = _quantize(model, batches)
    assert plan.quantized == ("mm", "deconv")
    deconv_w = next(n for n in out.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "w_quantized")
    assert helper.get_attribute_value(deconv_w.attribute[0]) == 1  # ConvTranspose's output-channel axis
    assert sqnr_db(run(model, batches[0])[0], run(out, batches[0])[0]) > 25


def test_skips_are_explained_and_exclude_works(rng):
    model = tiny_conv_relu(rng)
    batches = image_batches(rng)
    out, plan = _quantize(model, batches, Recipe(exclude=("conv2", "Gemm")))
    reasons = {s.node: s.reason for s in plan.skipped}
    assert reasons["conv2"] == "excluded by --exclude" and reasons["fc"] == "excluded by --exclude"
    assert "relu2" in reasons and "folds into a quantized producer" in reasons["relu2"]
    assert [n.op_type for n in out.graph.node if n.name in ("conv2", "fc")] == ["Conv", "Gemm"]
    assert sqnr_db(run(model, batches[0])[0], run(out, batches[0])[0]) > 30


def test_output_is_deterministic(rng):
    model = tiny_conv_relu(rng)
    batches = image_batches(rng)
    a, _ = _quantize(model, batches)
    b, _ = _quantize(copy.deepcopy(model), batches)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_int16_activations_use_opset_21(rng):
    recipe = Recipe(activations=TensorSpec(QType.INT16, symmetric=True, granularity=PerTensor()),
                    weights=TensorSpec(QType.INT16, symmetric=True))
    model = tiny_conv_relu(rng)
    batches = image_batches(rng)
    out, _ = _quantize(model, batches, recipe)
    assert next(o.version for o in out.opset_import if o.domain == "") >= 21
    out8, _ = _quantize(model, batches)
    ref = run(model, batches[0])[0]
    assert sqnr_db(ref, run(out, batches[0])[0]) > sqnr_db(ref, run(out8, batches[0])[0]) + 20


def test_zero_pad_is_folded_into_the_next_conv(rng, tmp_path):
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    pads = _const("pads", np.int64([0, 0, 0, 1, 0, 0, 1, 2]))
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "w"], ["c"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 6])], [w, pads])
    prepared = prepare(model)
    assert ops(prepared) == ["Conv", "Relu"]
    conv = prepared.graph.node[0]
    assert helper.get_attribute_value(next(a for a in conv.attribute if a.name == "pads")) == [1, 2, 2, 3]
    x = rng.normal(0, 1, (1, 3, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(run(prepared, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    out, _ = _quantize(model, [{"x": x}])
    fused = _optimized_ops(out, tmp_path)
    assert "QLinearConv" in fused and "Pad" not in fused and "Conv" not in fused


def test_relu_after_max_pool_sets_the_conv_output_range(rng, tmp_path):
    """Conv -> MaxPool -> Relu (as PyTorch exports it): max-pool and relu commute, so the Conv
    output takes the Relu's range and onnxruntime runs the chain without requantizing."""
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])], [w1, w2])
    batches = image_batches(rng, n=4, shape=(1, 3, 8, 8))
    out, plan = _quantize(model, batches)
    assert plan.range_source == {"c": "r"}
    assert int(plan.activations["c"].zero_point) == 0  # the range starts at 0
    assert plan.activations["c"].same_as(plan.activations["r"])
    fused = _optimized_ops(out, tmp_path)
    assert fused.count("QuantizeLinear") == 1 and fused.count("DequantizeLinear") == 1, fused
    assert sqnr_db(run(model, batches[0])[0], run(out, batches[0])[0]) > 30


def test_excluded_conv_reads_float_so_onnxruntime_keeps_it_float(rng, tmp_path):
    """onnxruntime's WeightBiasQuantization would re-quantize a float Conv between a DequantizeLinear
    and a QuantizeLinear; an excluded Conv must really run in float."""
    model = tiny_conv_relu(rng)
    batches = image_batches(rng)
    out, plan = _quantize(model, batches, Recipe(exclude=("conv2",)))
    conv2 = next(n for n in out.graph.node if n.name == "conv2")
    assert conv2.input[0] == "p1" and conv2.input[1] == "w2"  # float input, float weight
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "p1" for n in out.graph.node)  # no dead pair
    fused = _optimized_ops(out, tmp_path)
    # conv2 stays float; so does conv1, whose output now has no QuantizeLinear to fuse with.
    assert fused.count("Conv") + fused.count("FusedConv") == 2 and "QLinearConv" not in fused
    assert "QGemm" in fused
    ref = run(model, batches[0])[0]
    assert sqnr_db(ref, run(out, batches[0])[0]) > sqnr_db(ref, run(_quantize(model, batches)[0], batches[0])[0])


def test_dead_filter_keeps_its_bias(rng):
    """A filter whose weights are ~0 (BatchNorm folding leaves such channels) outputs its bias;
    the weight scale must be large enough for bias / (S_x * S_w) to fit in int32."""
    w = rng.normal(0, 0.5, (3, 3, 1, 1)).astype(np.float32)
    w[1] = 1e-13
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                       [numpy_helper.from_array(w, "w"), _const("b", np.float32([0.1, 0.7, -0.2]))])
    batches = image_batches(rng, n=4, shape=(1, 3, 4, 4))
    out, plan = _quantize(model, batches)
    got = run(out, batches[0])[0]
    np.testing.assert_allclose(got[0, 1], 0.7, atol=float(plan.activations["y"].scale))
    bias_q = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == "b_quantized"))
    assert np.abs(bias_q.astype(np.int64)).max() < 2**31 - 1


def test_division_by_a_constant_becomes_an_integer_mul(rng, tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Div", ["m", "d"], ["y"], name="scale")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                       [numpy_helper.from_array(rng.normal(0, 1, (8, 8)).astype(np.float32), "w"),
                        _const("d", np.float32(np.sqrt(8.0)))])
    prepared = prepare(model)
    assert ops(prepared) == ["MatMul", "Mul"]
    x = rng.normal(0, 1, (4, 8)).astype(np.float32)
    np.testing.assert_allclose(run(prepared, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-6)
    out, plan = _quantize(model, [{"x": rng.normal(0, 1, (4, 8)).astype(np.float32)} for _ in range(4)])
    assert plan.quantized == ("mm", "scale")
    assert "QLinearMul" in _optimized_ops(out, tmp_path)
