import numpy as np
from onnx import TensorProto, helper

from ptq_cli.model.io import opset_version
from ptq_cli.model.passes import UpgradeOpset
from tests.model.passes.helpers import apply, same_outputs


def _model(opset, op="Relu"):
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def test_old_opset_is_raised_and_new_ones_kept(rng):
    model = _model(9)
    result = apply(UpgradeOpset(13), model)
    assert result.modified and opset_version(result.model) == 13 and result.changes == ("opset 9 -> 13",)
    same_outputs(model, result.model, {"x": rng.standard_normal((2, 3)).astype(np.float32)})
    kept = _model(17)
    unchanged = UpgradeOpset(13)(kept)
    assert not unchanged.modified and unchanged.model is kept


def test_a_failed_conversion_keeps_the_model_and_says_why():
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    result = UpgradeOpset(13)(model)  # never a refusal: the recipe degrades to the opset reached
    assert not result.modified and opset_version(result.model) == 9
    assert [s.split(" (")[0] for s in result.skipped] == [
        f"onnx's version converter cannot take opset 9 to {v}" for v in (13, 11, 10)]
