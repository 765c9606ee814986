import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.passes import LiftConstants
from tests.model.passes.helpers import apply, same_outputs


def test_constant_nodes_become_initializers(rng):
    w = rng.standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = apply(LiftConstants(), model)
    assert result.modified and [n.op_type for n in result.model.graph.node] == ["MatMul"]
    np.testing.assert_array_equal(numpy_helper.to_array(result.model.graph.initializer[0]), w)
    same_outputs(model, result.model, {"x": rng.standard_normal((2, 4)).astype(np.float32)})
    assert not LiftConstants()(result.model).modified
