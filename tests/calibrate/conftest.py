"""Tiny models and .npy data folders for the calibration tests."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

W = np.array([[1.0, -2.0, 0.5], [0.25, 1.0, -1.0], [-0.5, 0.75, 2.0], [1.5, -0.25, 0.1]], np.float32)


def tiny_model(batch: int | None = None, log: bool = False) -> onnx.ModelProto:
    """x[N,4] -> MatMul W -> y -> Relu -> r -> Mul 3 -> z (or -> Log -> z, NaN for y < 0)."""
    dims = [batch if batch else "N", 4]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
             helper.make_node("Relu", ["y"], ["r"], name="relu"),
             helper.make_node("Constant", [], ["three"], value=numpy_helper.from_array(np.float32(3.0), "three")),
             helper.make_node("Log", ["y"], ["z"], name="log") if log
             else helper.make_node("Mul", ["r", "three"], ["z"], name="mul"),
             helper.make_node("Shape", ["z"], ["shape"], name="shape")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [dims[0], 3]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [numpy_helper.from_array(W, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def reference_tensors(x: np.ndarray) -> dict[str, np.ndarray]:
    """The activations computed by hand with numpy."""
    y = x @ W
    r = np.maximum(y, 0)
    return {"x": x, "y": y, "r": r, "z": r * np.float32(3.0)}


def write_samples(folder, rows: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        np.save(folder / f"s{i:03d}.npy", row[None])


@pytest.fixture
def samples() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32) * 3


@pytest.fixture
def data_dir(tmp_path, samples):
    write_samples(tmp_path / "calib", samples)
    return tmp_path / "calib"


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    return path
