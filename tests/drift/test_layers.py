import copy

import numpy as np
import onnx
import pytest
from onnx import helper

from ptq_cli.comparison.api import compare_batches
from ptq_cli.drift.layers import match_layers
from ptq_cli.data import Batch
from tests.compare.models import fake_quant, make_qdq, mlp, ranges


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def _batches(x, size=4):
    return [Batch({"x": x[i:i + size]}, tuple(f"s{j}" for j in range(i, i + size))) for i in range(0, len(x), size)]


def _by_ref(matching):
    return {m.reference: m for m in matching.matches}


def test_matches_follow_names_and_the_renamed_graph_output(rng):
    model = mlp(rng)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    qdq = make_qdq(model, ranges(model, {"x": x}))
    before = copy.deepcopy(model)
    matching = match_layers(model, qdq.model)
    found = _by_ref(matching)
    assert {k: v.candidate for k, v in found.items()} == {
        "x": "x_dqa", "mm1": "mm1_dqa", "add1": "add1_dqa", "relu1": "relu1_dqa", "y": "y"}
    assert found["y"].how == "name" and found["y"].quantized   # y is the DQ output, like onnxruntime's
    assert found["mm1"].op_type == "MatMul" and found["mm1"].node == "fc1"
    assert matching.unmatched == ()
    assert model == before


def test_matching_follows_the_graph_when_names_lie(rng):
    """Names that a suffix parser, or a plain name look-up, would pair wrongly."""
    model = mlp(rng)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    scales = ranges(model, {"x": x})
    del scales["y"]
    lies = {"mm1": "relu1", "relu1": "mm1", "add1": "t0",                  # swapped across op types
            "mm1_dqa": "add1_DequantizeLinear_Output", "add1_dqa": "mm1_quantized",
            "relu1_dqa": "x_DequantizeLinear_Output", "w1_dq": "w2_DequantizeLinear_Output"}
    qdq = make_qdq(model, scales, rename=lies)
    found = _by_ref(match_layers(model, qdq.model))
    assert {k: (v.candidate, v.how) for k, v in found.items()} == {
        "x": ("x_dqa", "input"),
        "mm1": ("add1_DequantizeLinear_Output", "graph"),
        "add1": ("mm1_quantized", "graph"),
        "relu1": ("x_DequantizeLinear_Output", "graph"),
        "y": ("y", "name")}
    assert not found["y"].quantized
    # The weights are found through the matched node (initializer -> DequantizeLinear); the
    # figure is the worst output channel (MatMul: columns).
    w1 = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1"))
    w, err = w1.astype(np.float64), (w1 - fake_quant(w1, 0.02)).astype(np.float64)
    expected = min(10 * np.log10(np.sum(w[:, j] ** 2) / np.sum(err[:, j] ** 2)) for j in range(w.shape[1]))
    assert found["mm1"].weight_sqnr_db == pytest.approx(expected, rel=1e-5)


def test_per_layer_sqnr_numbers_worst_first_and_input_quantization(rng):
    model = mlp(rng)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    scales = ranges(model, {"x": x})
    qdq = make_qdq(model, scales)
    report = compare_batches(model, qdq.model, _batches(x), per_layer=True)
    rows = {r.tensor: r for r in report.layers.matched}
    xq = fake_quant(x, scales["x"])
    expected = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - xq).astype(np.float64) ** 2))
    assert rows["x"].sqnr_db == pytest.approx(expected, rel=1e-6)
    assert rows["x"].op_type == "(graph input)"
    values = [r.sqnr_db for r in report.layers.matched]
    assert values == sorted(values)
    # The candidate's final output is the per-layer "y" too: both figures agree.
    assert rows["y"].sqnr_db == pytest.approx(report.outputs[0].sqnr_db, rel=1e-6)
    nsr = lambda db: 10 ** (-db / 10)  # noqa: E731
    assert rows["mm1"].input_sqnr_db == rows["x"].sqnr_db
    assert rows["mm1"].local_sqnr_db == pytest.approx(
        -10 * np.log10(nsr(rows["mm1"].sqnr_db) - nsr(rows["x"].sqnr_db)))


def test_layers_without_counterpart_are_listed(rng):
    model = mlp(rng)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    qdq = make_qdq(model, ranges(model, {"x": x}), rename={"mm1": "other"})
    cand = qdq.model
    # The candidate fuses the bias add and the relu into one op: no Add/Relu to match.
    nodes = [n for n in cand.graph.node if n.op_type not in ("Add", "Relu")
             and not (n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0].startswith(("add1", "relu1")))]
    add_dq = next(n.output[0] for n in cand.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "b1_q")
    src = next(n.output[0] for n in cand.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "mm1_qa")
    nodes.insert(len(nodes) - 3, helper.make_node("Sum", [src, add_dq], ["fused"]))
    nodes.insert(len(nodes) - 3, helper.make_node("Relu", ["fused"], ["relu1_dqa"]))
    graph = helper.make_graph(nodes, "fused", list(cand.graph.input), list(cand.graph.output),
                              initializer=list(cand.graph.initializer))
    fused = helper.make_model(graph, opset_imports=cand.opset_import)
    fused.ir_version = 8
    onnx.checker.check_model(fused, full_check=True)
    matching = match_layers(model, fused)
    unmatched = {u.reference: u for u in matching.unmatched}
    assert set(unmatched) == {"add1", "relu1"}
    assert unmatched["add1"].op_type == "Add" and "no counterpart" in unmatched["add1"].reason
    assert set(_by_ref(matching)) == {"x", "mm1", "y"}
    report = compare_batches(model, fused, _batches(x), per_layer=True)
    assert {u.tensor for u in report.layers.unmatched} == {"add1", "relu1"}


def test_relu_folded_into_the_quantizer_is_matched_as_fused(rng):
    """onnxruntime drops a Relu whose input is quantized from 0 up: Relu output ~ DQ(Q(input))."""
    model = mlp(rng)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    cand = make_qdq(model, ranges(model, {"x": x})).model
    keep = [n for n in cand.graph.node if n.op_type != "Relu"
            and not (n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[0].startswith("relu1"))]
    for node in keep:
        if "relu1_dqa" in node.input:
            node.input[list(node.input).index("relu1_dqa")] = "add1_dqa"
    graph = helper.make_graph(keep, "fused", list(cand.graph.input), list(cand.graph.output),
                              initializer=list(cand.graph.initializer))
    fused = helper.make_model(graph, opset_imports=cand.opset_import)
    fused.ir_version = 8
    onnx.checker.check_model(fused, full_check=True)
    found = _by_ref(match_layers(model, fused))
    assert (found["relu1"].candidate, found["relu1"].how, found["relu1"].quantized) == ("add1_dqa", "fused", True)
    assert (found["add1"].candidate, found["add1"].quantized) == ("add1", False)   # measured before Q
    assert found["y"].how == "name"
