"""Dynamic quantization: structure, validity, numerics against FP32 in onnxruntime, the CLI."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.cli import main
from ptq_cli.errors import UsageError
from ptq_cli.quantization.api import quantize
from ptq_cli.recipe import PerChannel, PerTensor, QType, Recipe, TensorSpec
from tests.conftest import REPO, make_model, ops, run, sqnr_db, tiny_conv_relu

DYNAMIC = Recipe(dynamic=True)


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _gemm_matmul_model(rng):
    """x[N,8] -> Gemm(transB, alpha, beta) -> MatMul(W) -> MatMul(activation x activation^T)."""
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (6, 8)).astype(np.float32), "wg"),
             numpy_helper.from_array(rng.normal(0, 0.1, (6,)).astype(np.float32), "bg"),
             numpy_helper.from_array(rng.normal(0, 0.5, (6, 5)).astype(np.float32), "wm")]
    nodes = [helper.make_node("Gemm", ["x", "wg", "bg"], ["g"], name="gemm", transB=1, alpha=0.5, beta=2.0),
             helper.make_node("MatMul", ["g", "wm"], ["m"], name="mm"),
             helper.make_node("Transpose", ["m"], ["t"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["m", "t"], ["y"], name="mm_act")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], inits)


def test_matmul_and_gemm_become_matmulinteger_per_column(rng):
    model = _gemm_matmul_model(rng)
    before = copy.deepcopy(model)
    result = quantize(model, recipe=DYNAMIC, progress=False)
    out = result.model
    onnx.checker.check_model(out, full_check=True)
    assert model == before
    assert ops(out).count("MatMulInteger") == 3 and "MatMul" not in ops(out) and "Gemm" not in ops(out)
    assert ops(out).count("DynamicQuantizeLinear") == 4  # x, g, m (shared by mm_act) and t
    assert result.quantized == ("gemm", "mm", "mm_act")
    inits = _inits(out)
    mm = next(n for n in out.graph.node if n.op_type == "MatMulInteger" and n.input[1].startswith("wm"))
    assert inits[mm.input[1]].dtype == np.int8 and inits[mm.input[3]].shape == (5,)  # zero point per column
    x = {"x": rng.normal(0, 1, (4, 8)).astype(np.float32)}
    assert sqnr_db(run(model, x)[0], run(out, x)[0]) > 30


def test_conv_stays_float_unless_asked(rng):
    model = tiny_conv_relu(rng)  # its Gemm is what --dynamic rewrites
    result = quantize(model, recipe=DYNAMIC, progress=False)
    assert "ConvInteger" not in ops(result.model) and "MatMulInteger" in ops(result.model)
    conv = next(s for s in result.skipped if s.op_type == "Conv")
    assert "slower than float Conv" in conv.reason and "--dynamic-ops MatMul,Gemm,LSTM,Conv" in conv.reason
    assert result.notes == ()


def test_a_model_of_convs_only_gets_convinteger_with_a_note(rng):
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    result = quantize(model, recipe=DYNAMIC, progress=False)
    assert result.quantized == ("conv",) and "ConvInteger" in ops(result.model)
    assert "slower than float Conv" in result.notes[0]


def test_conv_becomes_convinteger_with_bias_and_groups(rng):
    model = tiny_conv_relu(rng)
    out = quantize(model, recipe=DYNAMIC.with_(dynamic_ops=("Conv",)), progress=False).model
    assert ops(out)[:6] == ["DynamicQuantizeLinear", "ConvInteger", "Cast", "Mul", "Mul", "Add"]
    conv = out.graph.node[1]
    inits = _inits(out)
    assert inits[conv.input[1]].dtype == np.int8 and inits[conv.input[3]].shape == ()  # one zero point
    scale = next(n for n in out.graph.node if n.op_type == "Mul" and n.input[0].endswith("_scale"))
    assert inits[scale.input[1]].shape == (1, 4, 1, 1)  # per-channel scale, applied in float
    x = {"x": rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)}
    assert sqnr_db(run(model, x)[0], run(out, x)[0]) > 30


def test_depthwise_conv_and_asymmetric_weights_run(rng):
    w = numpy_helper.from_array(rng.normal(0, 0.5, (3, 1, 3, 3)).astype(np.float32), "w")
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="dw", group=3, pads=[1, 1, 1, 1])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])], [w])
    recipe = DYNAMIC.with_(weights=TensorSpec(QType.UINT8, symmetric=False, granularity=PerChannel()),
                           dynamic_ops=("Conv",))
    out = quantize(model, recipe=recipe, progress=False).model
    inits = _inits(out)
    # ConvInteger refuses per-channel zero points: asymmetric weights fall back to one scale.
    assert inits[out.graph.node[1].input[3]].dtype == np.uint8
    x = {"x": rng.normal(0, 1, (1, 3, 6, 6)).astype(np.float32)}
    assert sqnr_db(run(model, x)[0], run(out, x)[0]) > 25


def test_sample_mixer_stays_close_to_fp32(tmp_path):
    source = REPO / "sample_models" / "digits_mixer.onnx"
    result = quantize(source, tmp_path / "mixer.dyn.onnx", recipe=DYNAMIC)
    assert result.output.exists() and not result.skipped == ()
    model, out = onnx.load(source), onnx.load(result.output)
    assert "MatMulInteger" in ops(out) and "MatMul" not in ops(out)
    assert dict((p.key, p.value) for p in out.metadata_props)["ptq.calibration_data"].startswith("none")
    data = np.load(REPO / "calibration" / "digits" / "eval.npz")
    feeds = {model.graph.input[0].name: data["input"][:64]}
    reference, dynamic = run(model, feeds)[0], run(out, feeds)[0]
    assert sqnr_db(reference, dynamic) > 30
    assert np.mean(reference.argmax(1) == dynamic.argmax(1)) > 0.95


def test_wide_weight_types_are_refused(rng):
    recipe = DYNAMIC.with_(weights=TensorSpec(QType.INT4, granularity=PerTensor()))
    with pytest.raises(UsageError, match="int8 or uint8"):
        quantize(tiny_conv_relu(rng), recipe=recipe, progress=False)


def test_cli_dynamic_needs_no_data(tmp_path, rng):
    source = tmp_path / "m.onnx"
    onnx.save(tiny_conv_relu(rng), source)
    result = CliRunner().invoke(main, ["quantize", str(source), "--dynamic", "-q"])
    assert result.exit_code == 0, result.output
    assert "ConvInteger" not in ops(onnx.load(tmp_path / "m.int8.onnx"))
    result = CliRunner().invoke(main, ["quantize", str(source), "--dynamic", "--dynamic-ops", "Conv", "-q", "-f"])
    assert result.exit_code == 0, result.output
    assert "ConvInteger" in ops(onnx.load(tmp_path / "m.int8.onnx"))
    result = CliRunner().invoke(main, ["quantize", str(source), "--dynamic", "--dynamic-ops", "Relu", "-f"])
    assert result.exit_code == 2 and "dynamic ops must be among MatMul, Gemm, Conv, LSTM" in result.output
    result = CliRunner().invoke(main, ["quantize", str(source), "--dynamic", "--activation-type", "int8", "-f"])
    assert result.exit_code == 2 and "uint8 activations" in result.output


def _lstm_model(rng, gru=False):
    hidden, features = 8, 5
    gates = 3 if gru else 4
    w = numpy_helper.from_array(rng.normal(0, 0.4, (1, gates * hidden, features)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.normal(0, 0.3, (1, gates * hidden, hidden)).astype(np.float32), "R")
    b = numpy_helper.from_array(rng.normal(0, 0.1, (1, 2 * gates * hidden)).astype(np.float32), "B")
    attrs = {"hidden_size": hidden}
    node = helper.make_node("GRU" if gru else "LSTM", ["x", "W", "R", "B"], ["y", "y_h"], name="rnn", **attrs)
    seq = [6, "N", features]
    return make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, seq)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b", "c", "d"]),
                       helper.make_tensor_value_info("y_h", TensorProto.FLOAT, ["e", "f", "g"])], [w, b, r], opset=14)


def test_lstm_becomes_dynamic_quantize_lstm_and_gru_stays_float(rng):
    model = _lstm_model(rng)
    result = quantize(model, recipe=DYNAMIC, progress=False)
    onnx.checker.check_model(result.model, full_check=True)
    assert ops(result.model) == ["DynamicQuantizeLSTM"] and result.quantized == ("rnn",)
    x = {"x": rng.normal(0, 1, (6, 2, 5)).astype(np.float32)}
    for want, got in zip(run(model, x), run(result.model, x)):
        assert sqnr_db(want, got) > 30
    gru = quantize(_lstm_model(rng, gru=True), recipe=DYNAMIC.with_(dynamic_ops=("Conv",)), progress=False)
    assert "rewrites only MatMul, Gemm, Conv and LSTM" in gru.skipped[0].reason and "ConvInteger" not in ops(gru.model)
