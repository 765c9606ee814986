import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.passes import InferTypes
from tests.model.passes.helpers import apply


def _types(model):
    g = model.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}


def test_every_tensor_typed_and_weights_not_copied(rng):
    w = rng.standard_normal((64, 64)).astype(np.float32)  # large: inferred as a typed input only
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Shape", ["m"], ["s"]),
                               helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT),
                               helper.make_node("Relu", ["m"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("f", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = apply(InferTypes(), model)
    types = _types(result.model)
    assert types["m"] == TensorProto.FLOAT and types["s"] == TensorProto.INT64 and result.skipped == ()
    y = next(o for o in result.model.graph.output if o.name == "y")
    assert [d.dim_value for d in y.type.tensor_type.shape.dim] == [2, 64]
    assert [i.name for i in result.model.graph.input] == ["x"]  # the weight stayed an initializer


def test_untyped_tensors_are_a_skip_reason_not_silence():
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["m"], domain="custom.domain"),
                               helper.make_node("Relu", ["m"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("custom.domain", 1)])
    result = InferTypes()(model)
    assert len(result.skipped) == 1 and "'m' of Mystery" in result.skipped[0]
    assert "stay in float" in result.skipped[0]


def test_quantize_reports_what_prepare_could_not_type():
    from ptq_cli.quantization.api import quantize_model
    from ptq_cli.recipe import Recipe

    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["m"], domain="custom.domain"),
                               helper.make_node("Relu", ["m"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("custom.domain", 1)])
    _, plan = quantize_model(model, Recipe(), {})
    assert plan.prepare_skipped and "no known type" in plan.prepare_skipped[0]
