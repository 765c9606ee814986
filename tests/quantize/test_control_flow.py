"""Quantizing inside If / Loop / Scan bodies: ranges of body tensors are calibrated (the bodies
pass min/max out), Q/DQ pairs (or dynamic MatMulInteger) are written inside the bodies, and the
numerics are checked in onnxruntime."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.recipe import Recipe
from tests.conftest import run

F = TensorProto.FLOAT


def _branch(name, rng, scale):
    w = numpy_helper.from_array((rng.standard_normal((16, 8)) * scale).astype(np.float32), f"{name}_w")
    b = numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), f"{name}_b")
    nodes = [helper.make_node("MatMul", ["x", f"{name}_w"], [f"{name}_h"], name=f"{name}_mm"),
             helper.make_node("Add", [f"{name}_h", f"{name}_b"], [f"{name}_a"], name=f"{name}_add"),
             helper.make_node("Relu", [f"{name}_a"], [f"{name}_y"], name=f"{name}_relu")]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, None)], [w, b])


def if_model(opset=17):
    """The whole graph is one If on the sample rate (as in a voice-activity detector)."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Equal", ["sr", "k16"], ["is16"], name="is16"),
             helper.make_node("If", ["is16"], ["y"], name="if", then_branch=_branch("then", rng, 0.3),
                              else_branch=_branch("else", rng, 0.5))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["N", 16]),
                                           helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                              [helper.make_tensor_value_info("y", F, ["N", 8])],
                              [numpy_helper.from_array(np.array(16000, np.int64), "k16")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def scan_model():
    """h_t = tanh(x_t W + h_{t-1} U) over a [T, N, 6] sequence; outputs the last h and every h_t."""
    rng = np.random.default_rng(8)
    w = numpy_helper.from_array((rng.standard_normal((6, 5)) * 0.5).astype(np.float32), "w")
    u = numpy_helper.from_array((rng.standard_normal((5, 5)) * 0.3).astype(np.float32), "u")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "w"], ["xw"], name="xw"),
         helper.make_node("MatMul", ["h_in", "u"], ["hu"], name="hu"),
         helper.make_node("Add", ["xw", "hu"], ["pre"], name="pre"),
         helper.make_node("Tanh", ["pre"], ["h_out"], name="tanh"),
         helper.make_node("Identity", ["h_out"], ["h_step"], name="step")],
        "body", [helper.make_tensor_value_info("h_in", F, ["N", 5]), helper.make_tensor_value_info("x_t", F, ["N", 6])],
        [helper.make_tensor_value_info("h_out", F, ["N", 5]), helper.make_tensor_value_info("h_step", F, ["N", 5])])
    nodes = [helper.make_node("Scan", ["h0", "xs"], ["h_last", "hs"], name="scan", body=body, num_scan_inputs=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("h0", F, ["N", 5]),
                                           helper.make_tensor_value_info("xs", F, ["T", "N", 6])],
                              [helper.make_tensor_value_info("h_last", F, ["N", 5]),
                               helper.make_tensor_value_info("hs", F, ["T", "N", 5])], [w, u])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def loop_model():
    """Three iterations of v <- relu(v W + b)."""
    rng = np.random.default_rng(9)
    w = numpy_helper.from_array((rng.standard_normal((4, 4)) * 0.6).astype(np.float32), "lw")
    b = numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "lb")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
         helper.make_node("MatMul", ["v_in", "lw"], ["vw"], name="vw"),
         helper.make_node("Add", ["vw", "lb"], ["vb"], name="vb"),
         helper.make_node("Relu", ["vb"], ["v_out"], name="vrelu")],
        "loop_body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                      helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                      helper.make_tensor_value_info("v_in", F, ["N", 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", F, ["N", 4])])
    nodes = [helper.make_node("Loop", ["trips", "", "v0"], ["v"], name="loop", body=body)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("v0", F, ["N", 4])],
                              [helper.make_tensor_value_info("v", F, ["N", 4])],
                              [w, b, numpy_helper.from_array(np.array(3, np.int64), "trips")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _write(folder, samples):
    folder.mkdir()
    for i, sample in enumerate(samples):
        np.savez(folder / f"{i}.npz", **sample)
    return folder


def _if_samples(model, rng):
    """Six samples, three per branch, none whose float output is all zero (after the Relu): the
    cosine to an all-zero reference is 0 for any non-zero candidate, however small."""
    samples = []
    while len(samples) < 6:
        sample = {"x": rng.standard_normal((1, 16)).astype(np.float32),
                  "sr": np.array(16000 if len(samples) % 2 == 0 else 8000, np.int64)}
        if np.any(run(model, sample)[0]):
            samples.append(sample)
    return samples


def _body_ops(model, node_name):
    node = next(n for n in model.graph.node if n.name == node_name)
    return {a.name: [n.op_type for n in a.g.node] for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}


def _quantize(model, folder, tmp_path, recipe=Recipe()):
    before = copy.deepcopy(model)
    result = ptq_cli.quantize(model, tmp_path / "q.onnx", data=folder, recipe=recipe, progress=False)
    assert model == before
    onnx.checker.check_model(result.model, full_check=True)
    return result


def test_if_on_the_sample_rate_is_quantized_in_both_branches(tmp_path, rng):
    model = if_model()
    samples = _if_samples(model, rng)
    result = _quantize(model, _write(tmp_path / "d", samples), tmp_path)
    assert {"then_mm", "else_mm", "then_add", "else_add"} <= set(result.quantized)
    assert "if" not in {s.node for s in result.skipped}  # its bodies are quantized
    for ops in _body_ops(result.model, "if").values():
        assert ops.count("QuantizeLinear") >= 2 and "MatMul" in ops
    for sample in samples[:2]:  # one per branch
        want, got = run(model, sample)[0], run(result.model, sample)[0]
        np.testing.assert_allclose(got, want, atol=0.03 * float(np.abs(want).max()))


def test_dynamic_if_at_opset_18_is_sorted_and_integer_inside(rng):
    model = if_model(18)
    result = ptq_cli.quantize(model, None, recipe=Recipe(dynamic=True), progress=False)
    onnx.checker.check_model(result.model, full_check=True)  # includes topological order
    assert all("MatMulInteger" in ops for ops in _body_ops(result.model, "if").values())
    for sr in (16000, 8000):
        feeds = {"x": rng.standard_normal((3, 16)).astype(np.float32), "sr": np.array(sr, np.int64)}
        want, got = run(model, feeds)[0], run(result.model, feeds)[0]
        np.testing.assert_allclose(got, want, atol=0.03 * float(np.abs(want).max()))


def test_scan_body_is_quantized(tmp_path, rng):
    model = scan_model()
    samples = [{"h0": np.zeros((1, 5), np.float32), "xs": rng.standard_normal((7, 1, 6)).astype(np.float32)}
               for _ in range(4)]
    result = _quantize(model, _write(tmp_path / "d", samples), tmp_path)
    assert {"xw", "hu", "pre"} <= set(result.quantized)
    assert _body_ops(result.model, "scan")["body"].count("DequantizeLinear") >= 4
    for sample in samples:
        for want, got in zip(run(model, sample), run(result.model, sample)):
            np.testing.assert_allclose(got, want, atol=0.05)


def test_loop_body_is_quantized(tmp_path, rng):
    model = loop_model()
    samples = [{"v0": rng.standard_normal((2, 4)).astype(np.float32)} for _ in range(4)]
    result = _quantize(model, _write(tmp_path / "d", samples), tmp_path)
    assert {"vw", "vb"} <= set(result.quantized)
    assert "QuantizeLinear" in _body_ops(result.model, "loop")["body"]
    for sample in samples:
        want, got = run(model, sample)[0], run(result.model, sample)[0]
        # three chained 8-bit layers: a few percent at worst, well under one on average
        assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
        assert np.abs(got - want).mean() < 0.02 * np.abs(want).max()


def test_lstm_inside_an_if_becomes_dynamic_quantize_lstm(rng):
    hidden = 6
    weights = [numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, 16)) * 0.3).astype(np.float32), "lw"),
               numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.3).astype(np.float32), "lr")]
    body = helper.make_graph([helper.make_node("LSTM", ["seq", "lw", "lr"], ["", "h"], name="lstm", hidden_size=hidden)],
                             "then", [], [helper.make_tensor_value_info("h", F, ["d", "n", "k"])], weights)
    other = helper.make_graph([helper.make_node("ReduceMean", ["seq"], ["m"], name="mean", axes=[0], keepdims=0),
                               helper.make_node("Slice", ["m", "z", "six", "one"], ["h2"], name="cut"),
                               helper.make_node("Unsqueeze", ["h2", "z"], ["h3"], name="lift")],
                              "else", [], [helper.make_tensor_value_info("h3", F, ["d", "n", "k"])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=body, else_branch=other)], "g",
        [helper.make_tensor_value_info("seq", F, [5, "N", 16]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", F, ["d", "n", "k"])],
        [numpy_helper.from_array(np.array([0], np.int64), "z"), numpy_helper.from_array(np.array([6], np.int64), "six"),
         numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = ptq_cli.quantize(model, None, recipe=Recipe(dynamic=True), progress=False)
    onnx.checker.check_model(result.model, full_check=True)
    assert "lstm" in result.quantized and "DynamicQuantizeLSTM" in _body_ops(result.model, "if")["then_branch"]
    feeds = {"seq": rng.standard_normal((5, 2, 16)).astype(np.float32), "flag": np.array(True)}
    want, got = run(model, feeds)[0], run(result.model, feeds)[0]
    np.testing.assert_allclose(got, want, atol=0.05)


def test_qoperator_format_reaches_if_bodies(tmp_path, rng):
    """--format qoperator rewrote only the main graph: a model whose whole graph sits inside an
    If (a voice-activity detector's sample-rate switch) came out with 0 nodes quantized."""
    from ptq_cli.recipe import Format

    model = if_model()
    samples = _if_samples(model, rng)
    result = _quantize(model, _write(tmp_path / "d", samples), tmp_path, Recipe(format=Format.QOPERATOR))
    assert {"then_mm", "else_mm"} <= set(result.quantized)
    for ops in _body_ops(result.model, "if").values():
        assert "QLinearMatMul" in ops and "MatMul" not in ops and "DequantizeLinear" in ops
    for sample in samples[:2]:  # one per branch
        want, got = run(model, sample)[0], run(result.model, sample)[0]
        np.testing.assert_allclose(got, want, atol=0.03 * float(np.abs(want).max()))
