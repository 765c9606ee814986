from onnx import TensorProto, helper

from ptq_cli.model.passes import NameNodes
from tests.model.passes.helpers import apply


def test_unnamed_nodes_get_unique_stable_names():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["Relu_0"]), helper.make_node("Relu", ["Relu_0"], ["y"]),
                               helper.make_node("Neg", ["y"], ["z"], name="keep")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = apply(NameNodes(), model)
    names = [n.name for n in result.model.graph.node]
    assert names == ["Relu_0_1", "Relu_1", "keep"]  # Relu_0 is taken by a tensor
    assert result.changes == ("named 2 nodes",)
    assert not NameNodes()(result.model).modified
