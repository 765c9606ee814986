"""The shipped sample models and digits data are valid, accurate and consistent.

Needs only onnx, onnxruntime and numpy (no torch, no scikit-learn).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "sample_models"
DIGITS = ROOT / "calibration" / "digits"

# Op types each model must contain (the patterns the quantizer is meant to handle).
REQUIRED_OPS = {
    "digits_cnn": {"Conv", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"},
    "digits_resnet": {"Conv", "Add", "Relu", "Clip", "GlobalAveragePool", "Gemm"},
    "digits_mixer": {"MatMul", "Add", "LayerNormalization", "Softmax", "ReduceMean", "Relu"},
}
OPSETS = {"digits_cnn": 13, "digits_resnet": 13, "digits_mixer": 17}


@pytest.fixture(scope="module")
def eval_set() -> tuple[np.ndarray, np.ndarray]:
    data = np.load(DIGITS / "eval.npz")
    return data["input"], data["labels"]


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("name", sorted(REQUIRED_OPS))
def test_model_is_valid_with_expected_ops(name: str) -> None:
    model = onnx.load(str(MODELS / f"{name}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert REQUIRED_OPS[name] <= op_types(model)
    assert "Constant" not in op_types(model)  # weights and constants are initializers
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == OPSETS[name]
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 1, 8, 8]


def test_cnn_batchnorm_is_folded() -> None:
    model = onnx.load(str(MODELS / "digits_cnn.onnx"))
    assert "BatchNormalization" not in op_types(model)


def test_resnet_has_depthwise_conv() -> None:
    model = onnx.load(str(MODELS / "digits_resnet.onnx"))
    groups = [
        attr.i
        for node in model.graph.node
        if node.op_type == "Conv"
        for attr in node.attribute
        if attr.name == "group"
    ]
    assert any(g > 1 for g in groups)


@pytest.mark.parametrize("name", sorted(REQUIRED_OPS))
def test_model_accuracy_on_eval_set(name: str, eval_set: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = eval_set
    before = x.copy()
    sess = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"input": x})[0]
    assert logits.shape == (300, 10)
    assert float(np.mean(logits.argmax(axis=1) == labels)) > 0.9
    np.testing.assert_array_equal(x, before)


def test_sample_files_agree_with_npz(eval_set: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = eval_set
    assert x.dtype == np.float32 and x.shape == (300, 1, 8, 8)
    assert labels.shape == (300,)
    files = sorted((DIGITS / "eval").glob("*.npy"))
    assert [f.name for f in files] == [f"{i:04d}.npy" for i in range(300)]
    stacked = np.concatenate([np.load(f) for f in files])
    np.testing.assert_array_equal(stacked, x)
    text_labels = [int(line) for line in (DIGITS / "eval_labels.txt").read_text().split()]
    assert text_labels == labels.tolist()
    assert set(text_labels) == set(range(10))


def test_calibration_samples() -> None:
    files = sorted((DIGITS / "calib").glob("*.npy"))
    assert [f.name for f in files] == [f"{i:04d}.npy" for i in range(100)]
    calib = [np.load(f) for f in files]
    assert all(a.dtype == np.float32 and a.shape == (1, 1, 8, 8) for a in calib)
    stacked = np.concatenate(calib)
    assert stacked.min() >= 0.0 and stacked.max() <= 1.0
    assert len({a.tobytes() for a in calib}) == 100  # no duplicates


def test_calibration_and_eval_do_not_overlap(eval_set: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = eval_set
    calib = {np.load(f).tobytes() for f in (DIGITS / "calib").glob("*.npy")}
    assert not any(sample[None].tobytes() in calib for sample in x)
