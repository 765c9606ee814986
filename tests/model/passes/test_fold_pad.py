import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.passes import FoldPad
from tests.model.passes.helpers import apply, same_outputs


def _pad_conv(rng, pads, value=0.0):
    inits = [numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(pads, np.int64), "pads"),
             numpy_helper.from_array(np.array(value, np.float32), "value")]
    nodes = [helper.make_node("Pad", ["x", "pads", "value"], ["p"], name="pad"),
             helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=[1, 0, 1, 0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 7, 7])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_zero_spatial_pad_becomes_conv_padding(rng):
    model = _pad_conv(rng, [0, 0, 1, 2, 0, 0, 0, 1])
    result = apply(FoldPad(), model)
    conv, = result.model.graph.node
    assert list(next(a.ints for a in conv.attribute if a.name == "pads")) == [2, 2, 1, 1]
    assert {t.name for t in result.model.graph.initializer} == {"w"}
    same_outputs(model, result.model, {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)})


def test_non_zero_or_channel_pads_stay(rng):
    for model in (_pad_conv(rng, [0, 0, 1, 1, 0, 0, 1, 1], value=1.0), _pad_conv(rng, [0, 1, 1, 1, 0, 0, 1, 1])):
        assert not FoldPad()(model).modified
