"""Output kinds: an embedding is not a classifier, an int64 pass-through is not scores, a
[N, T, C] softmax is judged per step."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.drift.kinds import OutputKind, output_kinds
from ptq_cli.drift.outputs import OutputState
from ptq_cli.drift.thresholds import Thresholds, evaluate


def _encoder() -> onnx.ModelProto:
    """ids[N,T] int64 -> Gather table -> tokens[N,T,4]; mean over T (ReduceSum/Div) -> sentence[N,4];
    MatMul -> Softmax over the last axis -> steps[N,T,3]; Gemm-like MatMul+Add -> logits[N,3];
    ids copied out as int64."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(10, 4)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array(5.0, np.float32), "count")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["tokens"]),
             helper.make_node("ReduceSum", ["tokens", "axis1"], ["summed"], keepdims=0),
             helper.make_node("Div", ["summed", "count"], ["pooled"]),
             helper.make_node("Concat", ["pooled"], ["sentence"], axis=1),
             helper.make_node("MatMul", ["tokens", "w"], ["step_logits"]),
             helper.make_node("Softmax", ["step_logits"], ["steps"], axis=-1),
             helper.make_node("MatMul", ["sentence", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"]),
             helper.make_node("Identity", ["ids"], ["ids_out"])]
    outputs = [helper.make_tensor_value_info("sentence", TensorProto.FLOAT, ["N", 4]),
               helper.make_tensor_value_info("steps", TensorProto.FLOAT, ["N", "T", 3]),
               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
               helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["N", "T"]),
               helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["N", "T", 4])]
    graph = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_kinds_follow_the_graph_not_the_shape():
    model = _encoder()
    before = model.SerializeToString()
    assert output_kinds(model) == {"sentence": OutputKind.EMBEDDING, "steps": OutputKind.STEP_SCORES,
                                   "logits": OutputKind.SCORES, "ids_out": OutputKind.INTEGER,
                                   "tokens": OutputKind.TENSOR}
    assert model.SerializeToString() == before
    session = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    outs = session.run(None, {"ids": np.array([[1, 2, 3, 4, 5]], np.int64)})
    assert outs[0].shape == (1, 4) and outs[1].shape == (1, 5, 3) and outs[3].dtype == np.int64


def test_step_scores_agree_per_step_and_integers_exactly():
    ref = np.zeros((2, 4, 3), np.float32)
    ref[..., 0] = 1.0                       # class 0 at every step
    cand = ref.copy()
    cand[0, 1] = [0.0, 1.0, 0.0]            # one step of eight changes class
    state = OutputState("steps", "steps", OutputKind.STEP_SCORES)
    state.update(ref, cand, 2)
    report = state.report()
    assert report.classification.per_step and report.classification.classes == 3
    assert report.top1_agreement == 7 / 8
    ids = OutputState("ids", "ids", OutputKind.INTEGER)
    ids.update(np.array([[1, 2], [3, 4], [5, 6]]), np.array([[1, 2], [3, 5], [5, 6]]), 3)
    ids_report = ids.report()
    assert ids_report.classification is None and ids_report.exact_agreement == 2 / 3
    sentence = OutputState("s", "s", OutputKind.EMBEDDING)
    sentence.update(np.ones((2, 384), np.float32), np.ones((2, 384), np.float32), 2)
    assert sentence.report().classification is None and sentence.report().top1_agreement is None
    results = {r.name: r for r in evaluate(Thresholds(min_sqnr=10, min_agreement=0.9),
                                           (report, ids_report, sentence.report()))}
    assert not results["min_agreement"].passed and results["min_agreement"].value == 2 / 3
    assert "'ids'" in results["min_agreement"].detail
    # min_sqnr judges the float outputs only: the int ids have no SQNR worth a verdict.
    assert "'ids'" not in results["min_sqnr"].detail


def test_a_tanh_pooler_output_is_an_embedding_not_scores():
    """BERT exports: pooler_output = Tanh(Gemm(hidden[:, 0])) is [N, d]; its saturated columns
    would make top-1 agreement meaningless, so it is judged by SQNR/cosine as an embedding."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 4)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b"),
             numpy_helper.from_array(np.array(0, np.int64), "first")]
    nodes = [helper.make_node("Gather", ["hidden", "first"], ["cls"], axis=1),
             helper.make_node("Gemm", ["cls", "w", "b"], ["dense"]),
             helper.make_node("Tanh", ["dense"], ["pooler_output"]),
             helper.make_node("MatMul", ["cls", "w"], ["logits"])]
    graph = helper.make_graph(nodes, "pooler", [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", 3, 6])],
                              [helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()
    assert output_kinds(model) == {"pooler_output": OutputKind.EMBEDDING, "logits": OutputKind.SCORES}
    assert model.SerializeToString() == before
    pooled = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(
        ["pooler_output"], {"hidden": rng.normal(size=(2, 3, 6)).astype(np.float32)})[0]
    assert pooled.shape == (2, 4) and np.abs(pooled).max() <= 1.0
