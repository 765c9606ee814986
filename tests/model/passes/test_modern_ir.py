import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.passes import ModernIr
from tests.model.passes.helpers import apply, same_outputs


def test_ir3_initializers_stop_being_inputs(rng):
    w = rng.standard_normal((3,)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    result = apply(ModernIr(), model)
    assert result.modified and result.model.ir_version >= 4
    assert [i.name for i in result.model.graph.input] == ["x"]
    same_outputs(model, result.model, {"x": rng.standard_normal(3).astype(np.float32)})
    assert not ModernIr()(result.model).modified
