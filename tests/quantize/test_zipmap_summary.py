"""A classifier ending in ai.onnx.ml ZipMap (Keras/sklearn exports): the summary says the
sequence-of-maps output is not measured instead of printing 'SQNR inf dB, cosine inf'."""

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.cli import main
from tests.conftest import save_samples


def _zipmap_classifier() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((8, 3)) * 0.5).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
             helper.make_node("ZipMap", ["probabilities"], ["output_probability"], name="zipmap",
                              domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2])]
    seq_map = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(nodes, "zipmap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 3]),
                               helper.make_value_info("output_probability", seq_map)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_zipmap_output_reported_as_not_measured(tmp_path):
    model = _zipmap_classifier()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    before = src.read_bytes()
    rng = np.random.default_rng(1)
    data = save_samples(tmp_path / "calib", [rng.standard_normal((1, 8)).astype(np.float32) for _ in range(8)])
    out = tmp_path / "m.int8.onnx"
    result = CliRunner().invoke(main, ["quantize", str(src), "--data", str(data), "-o", str(out),
                                       "--objective", "size", "--no-budget"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "output_probability (other): not measured" in text
    assert "cosine inf" not in text and "SQNR inf" not in text
    assert "no known type" not in text  # a sequence of maps is a known type, not a skipped tensor
    assert "probabilities (scores): SQNR" in text
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    assert any(n.op_type == "DequantizeLinear" for n in written.graph.node)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(["probabilities"], {"x": np.load(data / "00.npy")})[0]
    assert probs.shape == (1, 3) and abs(float(probs.sum()) - 1.0) < 1e-2  # Softmax output in 1/255 steps
    assert src.read_bytes() == before
