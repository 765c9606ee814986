import onnx
import pytest
from onnx import TensorProto, helper

from ptq_cli.model.passes import NameNodes, Pass, PassError, PassResult, Sequential


class _Boom(Pass):
    name = "boom"

    def __call__(self, model):
        raise KeyError("x")


class _Skip(Pass):
    name = "skipper"

    def __call__(self, model):
        return PassResult(model, False, (), ("left alone: reason",))


def _model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_records_every_pass_and_collects_skip_reasons():
    result = Sequential([NameNodes(), _Skip()])(_model())
    assert result.modified and [r.name for r in result.records] == ["name-nodes", "skipper"]
    assert result.skipped == ("left alone: reason",) and result.changes == ("named 1 nodes",)
    onnx.checker.check_model(result.model, full_check=True)


def test_a_failure_names_the_pass():
    with pytest.raises(PassError, match="graph pass 'boom' failed"):
        Sequential([NameNodes(), _Boom()])(_model())
