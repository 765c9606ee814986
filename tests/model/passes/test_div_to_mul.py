import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.passes import DivToMul
from tests.model.passes.helpers import apply, same_outputs


def _div(divisor):
    graph = helper.make_graph([helper.make_node("Div", ["x", "d"], ["y"], name="div")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                              [numpy_helper.from_array(np.asarray(divisor, np.float32), "d")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_div_by_constant_becomes_mul_by_reciprocal(rng):
    model = _div([2.0, 4.0, 8.0])
    result = apply(DivToMul(), model)
    node, = result.model.graph.node
    assert node.op_type == "Mul" and node.input[1] == "d_reciprocal"
    np.testing.assert_array_equal(numpy_helper.to_array(result.model.graph.initializer[0]), [0.5, 0.25, 0.125])
    same_outputs(model, result.model, {"x": rng.standard_normal((2, 3)).astype(np.float32)}, rtol=1e-6)


def test_a_divisor_with_a_zero_is_kept():
    assert not DivToMul()(_div([2.0, 0.0, 1.0])).modified
