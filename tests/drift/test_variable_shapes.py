"""`ptq compare --per-layer` on samples of different shapes (sequence lengths, line widths), and a
[N, T, C] softmax judged per step."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.quantization.placement.budget import MEASURE_ONLY


def _sequence_model() -> onnx.ModelProto:
    """x[N,T,8] -> MatMul fc1 -> Relu -> MatMul fc2 -> Softmax(last axis) -> y[N,T,4]."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
             helper.make_node("Relu", ["a"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2"),
             helper.make_node("Softmax", ["logits"], ["y"], name="head", axis=-1)]
    graph = helper.make_graph(nodes, "seq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_per_layer_sensitivity_with_samples_of_different_lengths(tmp_path):
    model = _sequence_model()
    before = model.SerializeToString()
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(2)
    lengths = [3 + i % 4 for i in range(12)]            # four sequence lengths, interleaved
    for i, length in enumerate(lengths):
        np.save(data / f"{i:02d}.npy", rng.normal(size=(1, length, 8)).astype(np.float32))
    quantized = ptq_cli.quantize(model, None, data=data, progress=False, budget=MEASURE_ONLY).model
    report = ptq_cli.compare(model, quantized, data, per_layer=True, progress=False)
    assert model.SerializeToString() == before
    (out,) = report.outputs
    assert out.kind.value == "step_scores" and out.classification.per_step
    assert out.shape == (1, -1, 4)                      # the step axis varies between samples
    assert 0.9 <= out.top1_agreement <= 1.0
    sensitivity = report.layers.sensitivity
    assert sensitivity.samples == 12
    assert {row.node for row in sensitivity.rows} == {"fc1", "fc2", "head"}
    assert all(np.isfinite(row.sqnr_db) and row.sqnr_db > 20 for row in sensitivity.rows)
    # Skipped layers are named by the user's tensors, never by the candidate's Q/DQ names.
    for skipped in report.layers.unmatched:
        assert not any(mark in skipped.reason for mark in ("_quantized", "_dequantized", "__ptq"))
