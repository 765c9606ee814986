"""Opset-7 IR-3 exports with experimental (ImageScaler) and ai.onnx.ml ops (ZipMap,
ArrayFeatureExtractor): rewritten, upgraded and quantized; when the opset cannot be raised the
recipe degrades (per-tensor, or nothing quantized) and says so instead of refusing the model."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.model.passes import upgrade_opset as upgrade_module
from ptq_cli.model.io import opset_version
from ptq_cli.model.passes.deprecated_ops import rewrite_deprecated_ops
from ptq_cli.recipe import PerTensor, Recipe
from tests.conftest import session


def keras_mnist(opset=7, ir=3) -> onnx.ModelProto:
    """ImageScaler -> Conv -> Relu -> MaxPool -> Reshape -> Gemm -> Softmax -> ZipMap / ArrayFeatureExtractor."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "conv_w"),
             numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "conv_b"),
             numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"),
             numpy_helper.from_array((rng.standard_normal((64, 10)) * 0.3).astype(np.float32), "fc_w"),
             numpy_helper.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "fc_b"),
             numpy_helper.from_array(np.array([3], np.int64), "index")]
    nodes = [helper.make_node("ImageScaler", ["x"], ["scaled"], name="scaler", scale=1 / 255, bias=[-0.5]),
             helper.make_node("Conv", ["scaled", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
             helper.make_node("MaxPool", ["relu"], ["pool"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["pool", "shape"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["probs"], name="softmax"),
             helper.make_node("ArrayFeatureExtractor", ["probs", "index"], ["p3"], name="pick", domain="ai.onnx.ml"),
             helper.make_node("ZipMap", ["probs"], ["classes"], name="zipmap", domain="ai.onnx.ml",
                              classlabels_int64s=list(range(10)))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])]
    if ir < 4:  # IR 3: every initializer is listed as a graph input too
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    classes = helper.make_value_info("classes", helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, None))))
    graph = helper.make_graph(nodes, "keras", inputs,
                              [classes, helper.make_tensor_value_info("p3", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = ir
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def digits(tmp_path):
    rng = np.random.default_rng(6)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(6):
        np.save(folder / f"{i}.npy", (rng.random((1, 1, 8, 8)) * 255).astype(np.float32))
    return folder


def _outputs(model, x):
    classes, p3 = session(model).run(None, {"x": x})
    return np.array([[row[k] for k in range(10)] for row in classes]), p3


def test_image_scaler_becomes_mul_add_with_the_same_values():
    model = keras_mnist(ir=4)
    rewritten = copy.deepcopy(model)
    assert rewrite_deprecated_ops(rewritten) == ["scaler"]
    assert [n.op_type for n in rewritten.graph.node][:2] == ["Mul", "Add"]
    x = (np.random.default_rng(0).random((3, 1, 8, 8)) * 255).astype(np.float32)
    for want, got in zip(_outputs(model, x), _outputs(rewritten, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamic", [False, True])
def test_opset7_ir3_keras_model_quantizes(tmp_path, digits, dynamic):
    model = keras_mnist()
    before = copy.deepcopy(model)
    result = ptq_cli.quantize(model, tmp_path / "q.onnx", data=None if dynamic else digits,
                              recipe=Recipe(dynamic=dynamic), progress=False)
    assert model == before
    onnx.checker.check_model(result.model, full_check=True)
    assert opset_version(result.model) == 13 and not result.notes
    assert {"conv", "fc"} <= set(result.quantized) if not dynamic else "fc" in result.quantized
    reasons = {s.node: s.reason for s in result.skipped}
    assert "no integer kernel" in reasons["zipmap"] or "dynamic" in reasons["zipmap"]
    x = (np.random.default_rng(1).random((2, 1, 8, 8)) * 255).astype(np.float32)
    (want, want_p3), (got, got_p3) = _outputs(model, x), _outputs(result.model, x)
    np.testing.assert_allclose(got, want, atol=0.03)
    np.testing.assert_allclose(got_p3, want_p3, atol=0.03)


def _converter_stops_at(monkeypatch, highest):
    real = upgrade_module.version_converter.convert_version

    def convert(model, target):
        if target > highest:
            raise RuntimeError(f"no adapter to {target}")
        return real(model, target)

    monkeypatch.setattr(upgrade_module.version_converter, "convert_version", convert)


def test_per_tensor_at_the_opset_the_converter_reaches(tmp_path, digits, monkeypatch):
    _converter_stops_at(monkeypatch, 11)
    result = ptq_cli.quantize(keras_mnist(), tmp_path / "q.onnx", data=digits, progress=False)
    assert opset_version(result.model) == 11
    assert any("per tensor" in note for note in result.notes)
    assert {"conv", "fc"} <= set(result.quantized)
    weights = [n for n in result.model.graph.node if n.op_type == "DequantizeLinear"
               and not any(a.name == "axis" for a in n.attribute)]
    assert weights and all(len(n.input) == 3 for n in weights)
    x = (np.random.default_rng(1).random((2, 1, 8, 8)) * 255).astype(np.float32)
    np.testing.assert_allclose(_outputs(result.model, x)[0], _outputs(keras_mnist(), x)[0], atol=0.03)


def test_nothing_quantized_but_a_valid_model_when_no_quantizelinear_opset_is_reached(tmp_path, digits,
                                                                                   monkeypatch):
    _converter_stops_at(monkeypatch, 9)
    for recipe, data in ((Recipe(), digits), (Recipe(dynamic=True), None)):
        result = ptq_cli.quantize(keras_mnist(), None, data=data, recipe=recipe, progress=False)
        assert result.quantized == () and "nothing is quantized" in result.notes[0]
        assert all("opset 7" in s.reason for s in result.skipped)
        x = (np.random.default_rng(1).random((1, 1, 8, 8)) * 255).astype(np.float32)
        np.testing.assert_allclose(_outputs(result.model, x)[1], _outputs(keras_mnist(), x)[1], rtol=1e-5)


def test_per_tensor_recipe_is_kept_without_a_note(tmp_path, digits, monkeypatch):
    _converter_stops_at(monkeypatch, 10)
    from dataclasses import replace
    recipe = Recipe()
    recipe = replace(recipe, weights=replace(recipe.weights, granularity=PerTensor()))
    result = ptq_cli.quantize(keras_mnist(), None, data=digits, recipe=recipe, progress=False)
    assert opset_version(result.model) == 10 and result.notes == () and "conv" in result.quantized
