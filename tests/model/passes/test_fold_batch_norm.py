import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.passes import FoldBatchNorm
from tests.model.passes.helpers import apply, same_outputs


def _conv_bn(rng, bias=True, conv_out_read_twice=False):
    c = 4
    inits = [numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "beta"),
             numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "mean"),
             numpy_helper.from_array(rng.uniform(0.1, 1, c).astype(np.float32), "var")]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "b"))
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c"], name="conv", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn",
                              epsilon=1e-3)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])]
    if conv_out_read_twice:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4, 5, 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_batch_norm_folds_into_conv_with_and_without_bias(rng):
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    for bias in (True, False):
        model = _conv_bn(rng, bias)
        result = apply(FoldBatchNorm(), model)
        assert [n.op_type for n in result.model.graph.node] == ["Conv"]
        assert {t.name for t in result.model.graph.initializer} == {"conv_bn_folded_W", "conv_bn_folded_B"}
        same_outputs(model, result.model, {"x": x})


def test_a_conv_output_read_elsewhere_is_left_alone(rng):
    model = _conv_bn(rng, conv_out_read_twice=True)
    result = FoldBatchNorm()(model)
    assert not result.modified and [n.op_type for n in model.graph.node] == ["Conv", "BatchNormalization"]


def _bn_after(rng, node, c, x_shape, y_shape, inits):
    inits = inits + [numpy_helper.from_array(rng.uniform(0.5, 2, c).astype(np.float32), "gamma"),
                     numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "beta"),
                     numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "mean"),
                     numpy_helper.from_array(rng.uniform(0.1, 1, c).astype(np.float32), "var")]
    bn = helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"], name="bn")
    graph = helper.make_graph([node, bn], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_batch_norm_folds_into_grouped_conv_transpose_and_gemm(rng):
    deconv = _bn_after(rng, helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], name="deconv", group=2,
                                             strides=[2, 2]),
                       6, [1, 4, 3, 3], [1, 6, 7, 7],
                       [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
                        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")])
    for trans_b, w_shape in ((0, (5, 3)), (1, (3, 5))):
        gemm = _bn_after(rng, helper.make_node("Gemm", ["x", "w", "b"], ["c"], name="fc", transB=trans_b),
                         3, [2, 5], [2, 3],
                         [numpy_helper.from_array(rng.standard_normal(w_shape).astype(np.float32), "w"),
                          numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")])
        result = apply(FoldBatchNorm(), gemm)
        assert [n.op_type for n in result.model.graph.node] == ["Gemm"]
        assert result.changes == ("folded 1 BatchNormalization into Gemm",)
        same_outputs(gemm, result.model, {"x": rng.standard_normal((2, 5)).astype(np.float32)})
    result = apply(FoldBatchNorm(), deconv)
    assert [n.op_type for n in result.model.graph.node] == ["ConvTranspose"]
    same_outputs(deconv, result.model, {"x": rng.standard_normal((1, 4, 3, 3)).astype(np.float32)})


def test_a_scaled_gemm_is_left_alone(rng):
    gemm = _bn_after(rng, helper.make_node("Gemm", ["x", "w"], ["c"], name="fc", alpha=0.5), 3, [2, 5], [2, 3],
                     [numpy_helper.from_array(rng.standard_normal((5, 3)).astype(np.float32), "w")])
    assert not FoldBatchNorm()(gemm).modified
