"""`ptq inspect` on QDQ, QOperator and dynamic models: parameters, wasted range, requantization."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ptq_cli.cli import main
from ptq_cli.inspect import inspect_model
from ptq_cli.quantization.api import quantize_model
from ptq_cli.quantization.api import quantize
from ptq_cli.quantization.arithmetic.scheme import wasted_fraction
from ptq_cli.recipe import Format, PerTensor, QType, Recipe, TensorSpec
from tests.conftest import image_batches, minmax_ranges, tiny_conv_relu


@pytest.fixture
def case(rng):
    model = tiny_conv_relu(rng)
    return model, minmax_ranges(model, image_batches(rng))


def _by_name(report):
    return {t.tensor: t for t in report.tensors}


def test_qdq_tensors_and_wasted_range(case):
    model, ranges = case
    qdq, plan = quantize_model(model, Recipe(), ranges)
    report = inspect_model(qdq)
    tensors = _by_name(report)
    assert report.format == "qdq" and report.requantization == ()
    assert {"x", "r1", "p1", "r2", "w1_quantized"} <= set(tensors)
    w1 = tensors["w1_quantized"]
    assert (w1.role, w1.qtype, w1.granularity) == ("weight", "int8", "per-channel(axis=0)")
    np.testing.assert_array_equal(w1.scale, plan.weights[("conv1", "w1")].params.scale)
    # Weights: exact, from the stored integers; symmetric int8 never uses -128 at least.
    assert w1.wasted_basis == "stored integers" and w1.wasted >= 1 / 255
    r1 = tensors["r1"]
    assert (r1.qtype, r1.zero_point, r1.wasted, r1.wasted_basis) == ("uint8", (0,), 0.0, "Relu output >= 0")
    assert r1.representable == pytest.approx((0.0, 255 * r1.scale[0]))
    assert tensors["x"].wasted is None  # nothing bounds a graph input without a table


def test_symmetric_activations_after_relu_waste_half_the_range(case):
    # Seed 000: a ReLU output never uses the codes below Z = 128.
    model, ranges = case
    recipe = Recipe(activations=TensorSpec(QType.UINT8, symmetric=True, granularity=PerTensor()))
    qdq, plan = quantize_model(model, recipe, ranges)
    r1 = _by_name(inspect_model(qdq))["r1"]
    assert r1.zero_point == (128,) and r1.wasted == pytest.approx(128 / 255, abs=1e-9)


def test_calibration_ranges_give_the_wasted_fraction_of_every_activation(case):
    model, ranges = case
    qop, plan = quantize_model(model, Recipe(format=Format.QOPERATOR), ranges)
    tensors = _by_name(inspect_model(qop, ranges))
    for name in ("x", "r1", "p1", "g", "y"):
        assert tensors[name].wasted_basis == "calibration table"
        assert tensors[name].wasted == pytest.approx(wasted_fraction(*ranges[name], plan.activations[name]))


def test_qoperator_requantization_multipliers(case):
    model, ranges = case
    qop, plan = quantize_model(model, Recipe(format=Format.QOPERATOR), ranges)
    report = inspect_model(qop)
    assert report.format == "qoperator"
    tensors = _by_name(report)
    assert tensors["r1"].wasted_basis == "folded Relu/Clip bounds" and tensors["r1"].wasted == 0.0
    conv1 = next(r for r in report.requantization if r.node == "conv1")
    expected = (plan.activations["x"].scale.astype(np.float64) * plan.weights[("conv1", "w1")].params.scale
                / plan.activations["r1"].scale)
    np.testing.assert_allclose(conv1.multiplier, expected, rtol=1e-6)
    assert len(conv1.m0) == 4 and all(2**30 <= m0 < 2**31 for m0 in conv1.m0)
    rebuilt = np.array(conv1.m0, np.float64) * np.exp2(-np.array(conv1.shift, np.float64))
    np.testing.assert_allclose(rebuilt, expected, rtol=2**-30)
    assert {r.op_type for r in report.requantization} == {"QLinearConv", "QLinearGlobalAveragePool", "QGemm"}


def test_dynamic_model(case):
    model, _ = case
    report = inspect_model(quantize(model, recipe=Recipe(dynamic=True, dynamic_ops=("MatMul", "Gemm", "Conv")), progress=False).model)
    tensors = _by_name(report)
    assert report.format == "dynamic"
    assert tensors["x"].granularity == "dynamic" and tensors["x"].scale == ()
    assert tensors["wf_quantized"].granularity == "per-channel(axis=1)"
    assert not np.isnan(tensors["w1_quantized"].scale).any()


def test_cli_table_json_and_errors(case, tmp_path):
    model, ranges = case
    qop, _ = quantize_model(model, Recipe(format=Format.QOPERATOR), ranges)
    onnx.save(qop, tmp_path / "q.onnx")
    onnx.save(model, tmp_path / "f.onnx")
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(tmp_path / "q.onnx")])
    assert result.exit_code == 0, result.output
    assert "QLinearConv" in result.output and "per-channel(axis=0)" in result.output
    result = runner.invoke(main, ["inspect", str(tmp_path / "q.onnx"), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["format"] == "qoperator" and {"m0", "shift", "multiplier"} <= set(data["requantization"][0])
    assert {"tensor", "type", "scale", "zero_point", "granularity", "wasted_fraction"} <= set(data["tensors"][0])
    result = runner.invoke(main, ["inspect", str(tmp_path / "f.onnx")])
    assert result.exit_code == 2 and "no quantized tensors" in result.output


def test_cli_with_calibration_table(tmp_path, rng):
    model = tiny_conv_relu(rng)
    onnx.save(model, tmp_path / "m.onnx")
    data = tmp_path / "calib"
    data.mkdir()
    for i, batch in enumerate(image_batches(rng, 4, shape=(1, 3, 8, 8))):
        np.save(data / f"{i}.npy", batch["x"])
    runner = CliRunner()
    table = tmp_path / "m.calib.json"
    assert runner.invoke(main, ["calibrate", str(tmp_path / "m.onnx"), "--data", str(data), "-o", str(table)]
                         ).exit_code == 0
    result = runner.invoke(main, ["quantize", str(tmp_path / "m.onnx"), "--calibration", str(table),
                                  "--format", "qoperator", "-q"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["inspect", str(tmp_path / "m.int8.onnx"), "--calibration", str(table), "--json"])
    assert result.exit_code == 0, result.output
    activations = [t for t in json.loads(result.output)["tensors"] if t["role"] == "activation"]
    assert activations and all(t["wasted_basis"] == "calibration table" for t in activations)


def test_a_static_model_with_a_matmul_at_run_time_is_still_qdq(rng):
    """The drift budget's fallback (or placement) may quantize one MatMul at run time: the model
    is still a static QDQ model, with that MatMul's weights listed beside the others."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.conftest import make_model

    inits = [numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")]
    model = make_model([helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
                        helper.make_node("Relu", ["a"], ["r"], name="act"),
                        helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    x = rng.normal(size=(2, 8)).astype(np.float32)
    ranges = minmax_ranges(model, [{"x": x}])
    mixed, plan = quantize_model(model, Recipe(run_time=("fc2",)), ranges)
    assert plan.quantized == ("fc1",) and plan.dynamic == ("fc2",)
    ops = {n.op_type for n in mixed.graph.node}
    assert {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"} <= ops
    report = inspect_model(mixed)
    assert report.format == "qdq"
