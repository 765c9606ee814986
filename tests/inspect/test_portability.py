"""`ptq inspect` reports the worst 16-bit pair sum of every integer matrix node and whether the
model is exact on x86 CPUs without VNNI. Nothing here depends on this machine's kernels."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.cli import main
from ptq_cli.inspect import inspect_model
from ptq_cli.inspect.portability import portability
from ptq_cli.recipe import Format, Recipe, Target
from tests.conftest import make_model, save_samples
from tests.dynamic.test_dynamic import _lstm_model

F = TensorProto.FLOAT
INT16_MAX = 32767


def _matmul_model(rng) -> onnx.ModelProto:
    """x[1, 8] @ W[8, 4], W >= 0 with rows 0 and 1 the largest: full-range int8 puts 127 next to
    a large positive partner in every column, a pair sum far beyond 16 bits."""
    w = np.abs(rng.normal(0, 0.3, (8, 4))).astype(np.float32)
    w[:2] += 1.0
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                      [helper.make_tensor_value_info("x", F, [1, 8])],
                      [helper.make_tensor_value_info("y", F, [1, 4])], [numpy_helper.from_array(w, "w")])


def _quantized(model, tmp_path, target: Target, **recipe) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    folder = tmp_path / f"data_{target.value}"
    if not folder.exists():
        save_samples(folder, [rng.uniform(0, 1, shape).astype(np.float32) for _ in range(4)])
    result = ptq_cli.quantize(model, None, data=folder, recipe=Recipe(target=target, **recipe), progress=False)
    return result.model


@pytest.mark.parametrize("recipe", [{"format": Format.QDQ}, {"format": Format.QOPERATOR}, {"dynamic": True}],
                         ids=["qdq", "qoperator", "dynamic"])
def test_full_range_weights_are_not_portable_and_portable_ones_are(recipe, tmp_path, rng):
    model = _matmul_model(rng)
    vnni = portability(_quantized(model, tmp_path, Target.VNNI, **recipe))
    (node,) = vnni.nodes
    assert node.node.startswith("fc") and node.high > INT16_MAX and node.saturates
    assert node.verdict == "saturates without VNNI"
    assert not vnni.portable and vnni.recipe_target == "vnni"
    assert vnni.verdict == "not portable: 1 node can saturate on x86 CPUs without VNNI (AVX2)"

    portable = portability(_quantized(model, tmp_path, Target.PORTABLE, **recipe))
    (node,) = portable.nodes
    assert node.high <= INT16_MAX and node.verdict == "exact everywhere"
    assert portable.portable and portable.verdict == "portable: exact on every CPU"
    assert portable.recipe_target == "portable"


def _qdq_gemm(weight: np.ndarray, *, trans_b: int, weight_type=np.int8) -> onnx.ModelProto:
    """x -> Q/DQ (uint8) -> Gemm(DQ(weight)): the form onnxruntime fuses to QGemm."""
    k = weight.shape[1] if trans_b else weight.shape[0]
    n = weight.shape[0] if trans_b else weight.shape[1]
    inits = [numpy_helper.from_array(weight.astype(weight_type), "w_q"),
             numpy_helper.from_array(np.float32(0.01), "w_s"), numpy_helper.from_array(weight_type(0), "w_z"),
             numpy_helper.from_array(np.float32(0.01), "x_s"), numpy_helper.from_array(np.uint8(0), "x_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_dq"]),
             helper.make_node("Gemm", ["x_dq", "w_dq"], ["y"], name="gemm", transB=trans_b)]
    return make_model(nodes, [helper.make_tensor_value_info("x", F, [1, k])],
                      [helper.make_tensor_value_info("y", F, [1, n])], inits)


def test_gemm_pairs_along_k_whichever_way_its_weight_is_stored():
    # Two large entries side by side in a row: adjacent along K when transB=1 (stored [N, K]),
    # in two different output columns when transB=0 (stored [K, N]).
    row_pair = np.array([[100, 100], [0, 0]])
    assert portability(_qdq_gemm(row_pair, trans_b=1)).nodes[0].high == 200 * 255
    assert portability(_qdq_gemm(row_pair, trans_b=0)).nodes[0].high == 100 * 255
    assert portability(_qdq_gemm(-row_pair.T, trans_b=0)).nodes[0].low == -200 * 255


def test_uint8_weights_are_exact_whatever_their_values():
    (node,) = portability(_qdq_gemm(np.array([[200, 200], [200, 200]]), trans_b=0, weight_type=np.uint8)).nodes
    assert node.unpaired == "uint8 weights" and node.high is None and not node.saturates
    assert node.verdict == "exact everywhere (uint8 weights)"


def test_a_weight_only_dequantize_is_no_integer_kernel():
    model = _qdq_gemm(np.array([[100, 100], [0, 0]]), trans_b=1)
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    gemm.input[0] = "x"  # float activations: onnxruntime runs the Gemm in float
    assert portability(model).nodes == ()


def _conv_model(rng, *, group: int) -> onnx.ModelProto:
    channels = 4
    w = np.abs(rng.normal(0, 0.3, (channels, channels // group, 3, 3))).astype(np.float32) + 1.0
    return make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=group)],
                      [helper.make_tensor_value_info("x", F, [1, channels, 5, 5])],
                      [helper.make_tensor_value_info("y", F, [1, channels, 3, 3])], [numpy_helper.from_array(w, "w")])


def test_depthwise_conv_and_conv_integer_are_exact_with_full_range_weights(tmp_path, rng):
    depthwise = portability(_quantized(_conv_model(rng, group=4), tmp_path, Target.VNNI))
    assert [(n.op_type, n.unpaired, n.verdict) for n in depthwise.nodes] == [
        ("Conv", "depthwise", "exact everywhere (depthwise)")]
    grouped = portability(_quantized(_conv_model(rng, group=2), tmp_path, Target.VNNI))
    assert grouped.nodes[0].unpaired is None and grouped.nodes[0].saturates  # two channels a group: a GEMM
    dynamic = portability(_quantized(_conv_model(rng, group=1), tmp_path, Target.VNNI, dynamic=True,
                                     dynamic_ops=("Conv",)))
    assert [(n.op_type, n.unpaired) for n in dynamic.nodes] == [("ConvInteger", "ConvInteger")]
    assert depthwise.portable and dynamic.portable and not grouped.portable


def test_dynamic_lstm_reports_both_weights(rng):
    model = _lstm_model(rng)
    w = next(t for t in model.graph.initializer if t.name == "W")
    w.CopyFrom(numpy_helper.from_array(np.abs(numpy_helper.to_array(w)) + 1.0, "W"))  # same-sign inputs
    for target, portable in ((Target.VNNI, False), (Target.PORTABLE, True)):
        quantized = ptq_cli.quantize(model, None, recipe=Recipe(dynamic=True, target=target), progress=False).model
        (node,) = portability(quantized).nodes
        assert node.op_type == "DynamicQuantizeLSTM" and len(node.weights) == 2
        assert node.saturates is not portable and portability(quantized).portable is portable


def test_cli_text_and_json(tmp_path, rng):
    onnx.save(_quantized(_matmul_model(rng), tmp_path, Target.VNNI), tmp_path / "vnni.onnx")
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(tmp_path / "vnni.onnx")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "not portable: 1 node can saturate on x86 CPUs without VNNI (AVX2)"
    assert "recipe target: vnni" in lines
    row = next(line for line in lines if line.startswith("fc "))
    assert "MatMul" in row and row.endswith("saturates without VNNI")
    result = runner.invoke(main, ["inspect", str(tmp_path / "vnni.onnx"), "--json"])
    doc = json.loads(result.output)["portability"]
    assert (doc["portable"], doc["saturating_nodes"], doc["recipe_target"]) == (False, 1, "vnni")
    (node,) = doc["nodes"]
    assert node["node"] == "fc" and node["max_pair_sum"] > INT16_MAX and node["exact_without_vnni"] is False


def test_inspect_report_carries_the_verdict(tmp_path, rng):
    report = inspect_model(_quantized(_matmul_model(rng), tmp_path, Target.PORTABLE))
    assert report.portability.portable
    assert report.render().splitlines()[-1] == "portable: exact on every CPU"
