"""A Conv left in float next to an integer region: reading a per-channel DequantizeLinear keeps
its producer integer and the Conv float in onnxruntime's optimized graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.api import quantize_model
from ptq_cli.recipe import ExcludedConvInput, Recipe
from tests.conftest import minmax_ranges, run, sqnr_db
from tests.latency.machines import mobile_cnn


def _optimized(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def test_excluded_conv_reads_a_per_channel_dequantize_and_its_producer_stays_integer(rng, tmp_path):
    model = mobile_cnn(rng)
    feeds = [{"x": rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    ranges = minmax_ranges(prepare(model), feeds)
    before = model.SerializeToString()
    exact, _ = quantize_model(model, Recipe(exclude=("pw",)), ranges)
    recipe = Recipe(exclude=("pw",), excluded_conv_input=ExcludedConvInput.DEQUANTIZED)
    out, plan = quantize_model(model, recipe, ranges)
    onnx.checker.check_model(out, full_check=True)
    assert model.SerializeToString() == before
    pw = next(n for n in out.graph.node if n.name == "pw")
    dq = next(n for n in out.graph.node if pw.input[0] in n.output)
    assert dq.op_type == "DequantizeLinear" and [a.i for a in dq.attribute if a.name == "axis"] == [1]
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits[dq.input[1]].shape == (8,) and np.all(inits[dq.input[1]] == plan.activations["r1"].scale)
    # dw keeps its integer kernel, pw stays float; reading the float tensor costs dw its kernel.
    assert _optimized(out, tmp_path).count("QLinearConv") == 3
    assert _optimized(exact, tmp_path).count("QLinearConv") == 2
    assert any(op in ("Conv", "FusedConv") for op in _optimized(out, tmp_path))
    x = feeds[0]
    assert sqnr_db(run(model, x)[0], run(out, x)[0]) > 20


def test_the_recipe_records_the_choice():
    recipe = Recipe(excluded_conv_input=ExcludedConvInput.DEQUANTIZED)
    assert recipe.to_dict()["excluded_conv_input"] == "dequantized"
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    assert Recipe.from_dict({}).excluded_conv_input is ExcludedConvInput.FLOAT
