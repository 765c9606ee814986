"""float16 / float64 / bfloat16 models: computed in float32 between Casts, then quantized."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.errors import DataError
from ptq_cli.model.passes.float32 import ToFloat32
from ptq_cli.recipe import Recipe
from tests.conftest import run, session
from tests.model.passes.helpers import apply


def conv_model(elem=TensorProto.FLOAT16, dtype=np.float16) -> onnx.ModelProto:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> MatMul -> Cast(to=elem) -> Add, all in `elem`."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(dtype), "w"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(dtype), "b"),
             numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.3).astype(dtype), "fw")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "fw"], ["m"], name="fc"),
             helper.make_node("Constant", [], ["one"], name="one", value=numpy_helper.from_array(np.array(1, dtype))),
             helper.make_node("Cast", ["one"], ["one_cast"], name="cast", to=elem),
             helper.make_node("Add", ["m", "one_cast"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", elem, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def matmul_model(elem=TensorProto.DOUBLE, dtype=np.float64) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 5)) * 0.4).astype(dtype), "w"),
             numpy_helper.from_array((rng.standard_normal(5) * 0.1).astype(dtype), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, ["N", 6])],
                              [helper.make_tensor_value_info("y", elem, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pass_keeps_the_edges_and_the_values(rng):
    model = conv_model()
    result = apply(ToFloat32(), model)
    assert result.modified and "float16" in result.changes[0]
    graph = result.model.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert all(t.data_type == TensorProto.FLOAT for t in graph.initializer)
    assert [n.op_type for n in graph.node][0] == "Cast" and [n.op_type for n in graph.node][-1] == "Cast"
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float16)
    want, got = run(model, {"x": x})[0], run(result.model, {"x": x})[0]
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-2)
    assert not apply(ToFloat32(), matmul_model(TensorProto.FLOAT, np.float32)).modified


@pytest.mark.parametrize("make, dtype, name", [(conv_model, np.float16, "float16"),
                                               (matmul_model, np.float64, "float64")])
def test_float16_and_float64_models_quantize(tmp_path, rng, make, dtype, name):
    model = make()
    before = copy.deepcopy(model)
    shape = (1, 3, 8, 8) if make is conv_model else (1, 6)
    folder = tmp_path / "calib"
    folder.mkdir()
    samples = [rng.standard_normal(shape).astype(np.float32) for _ in range(6)]
    for i, sample in enumerate(samples):  # float32 data for a float16/float64 model is cast to its type
        np.save(folder / f"{i}.npy", sample)
    result = ptq_cli.quantize(model, tmp_path / "q.onnx", data=folder, progress=False)
    assert model == before
    onnx.checker.check_model(result.model, full_check=True)
    assert any(name in note for note in result.notes)
    assert "fc" in result.quantized and (make is matmul_model or "conv" in result.quantized)
    assert any(n.op_type == "QuantizeLinear" for n in result.model.graph.node)
    x = np.concatenate(samples[:3]).astype(dtype)  # inside the calibrated ranges
    want, got = run(model, {"x": x})[0], run(result.model, {"x": x})[0]
    assert got.dtype == dtype
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32),
                               atol=0.05 * float(np.abs(want).max()))


def test_bfloat16_quantizes_dynamically_and_static_says_why_not(tmp_path):
    w = helper.make_tensor("w", TensorProto.BFLOAT16, [4, 3], np.linspace(-1, 1, 12).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["N", 3])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = ptq_cli.quantize(model, None, recipe=Recipe(dynamic=True), progress=False)
    assert result.quantized == ("fc",) and "bfloat16" in result.notes[0]
    session(result.model)  # onnxruntime loads it (its Python API cannot feed bfloat16 arrays)
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "0.npy", np.ones((1, 4), np.float32))
    with pytest.raises(DataError, match="bfloat16, which onnxruntime's Python API cannot feed"):
        ptq_cli.quantize(model, None, data=folder, progress=False)
