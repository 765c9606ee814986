"""onnx's C++ checker prints "Warning: Model contains experimental ops: ImageScaler" on file
descriptor 1 for opset-7 Keras exports; `--json` on stdout must stay parseable JSON."""

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tests.conftest import save_samples


def _keras_opset7() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.3).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    nodes = [helper.make_node("ImageScaler", ["x"], ["scaled"], name="scaler", scale=1 / 255.0, bias=[0.0]),
             helper.make_node("Conv", ["scaled", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8]),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 1, 3, 3]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])]
    graph = helper.make_graph(nodes, "keras", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3  # initializers listed as inputs, as keras2onnx wrote them
    return model


def test_json_stdout_survives_an_experimental_op(tmp_path):
    model = _keras_opset7()
    src = tmp_path / "keras.onnx"
    onnx.save(model, src)
    before = src.read_bytes()
    rng = np.random.default_rng(1)
    data = save_samples(tmp_path / "calib", [(rng.random((1, 1, 8, 8)) * 255).astype(np.float32) for _ in range(4)])
    out = tmp_path / "keras.int8.onnx"
    done = subprocess.run([sys.executable, "-m", "ptq_cli", "quantize", str(src), "--data", str(data), "-o", str(out),
                           "--objective", "size", "--no-budget", "--json", "-q"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "experimental" not in done.stdout and "experimental" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["output"] == str(out) and summary["quantized"]
    written = onnx.load(out)
    onnx.checker.check_model(written)
    feed = {"x": np.load(data / "00.npy")}
    want = ort.InferenceSession(before, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.abs(want).max()))
    assert src.read_bytes() == before
