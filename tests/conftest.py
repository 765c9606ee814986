"""Shared test helpers: tiny model factories and onnxruntime runners."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import settings
from onnx import TensorProto, helper, numpy_helper

# Property tests draw the same examples on every run: CI must not turn red by chance, and a
# failure found once is found again.
settings.register_profile("deterministic", derandomize=True, deadline=None)
settings.load_profile("deterministic")

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def session(model: onnx.ModelProto, **options) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    for key, value in options.items():
        setattr(so, key, value)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def float_tensors(model: onnx.ModelProto) -> list[str]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    inits = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in names if types.get(n) == TensorProto.FLOAT]


def minmax_ranges(model: onnx.ModelProto, batches: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Min/max of every float tensor, by brute force (independent of ptq's collector)."""
    probe = copy.deepcopy(model)
    names = float_tensors(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = session(probe)
    out_names = [o.name for o in sess.get_outputs()]
    ranges: dict[str, tuple[float, float]] = {}
    for feeds in batches:
        for name, value in zip(out_names, sess.run(None, feeds)):
            if name in names:
                lo, hi = ranges.get(name, (np.inf, -np.inf))
                ranges[name] = (min(lo, float(value.min())), max(hi, float(value.max())))
    return ranges


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model, full_check=True)
    return model


def tiny_conv_relu(rng, *, opset: int = 13, channels: int = 4) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(3->C, 3x3, pad 1) + bias -> Relu -> MaxPool 2 -> Conv(C->C) -> GAP -> Flatten -> Gemm(10)."""
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (channels, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.normal(0, 0.1, (channels,)).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (channels, channels, 3, 3)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(rng.normal(0, 0.1, (channels,)).astype(np.float32), "b2")
    wf = numpy_helper.from_array(rng.normal(0, 0.5, (10, channels)).astype(np.float32), "wf")
    bf = numpy_helper.from_array(rng.normal(0, 0.1, (10,)).astype(np.float32), "bf")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    return make_model(nodes, [x], [y], [w1, b1, w2, b2, wf, bf], opset=opset)


def image_batches(rng, n: int = 8, shape=(2, 3, 8, 8)) -> list[dict[str, np.ndarray]]:
    return [{"x": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(n)]


def save_samples(folder: Path, arrays) -> Path:
    """A data folder with one .npy file per array, named so that sorted order is list order."""
    folder.mkdir()
    for i, array in enumerate(arrays):
        np.save(folder / f"{i:02d}.npy", array)
    return folder


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = np.sum((reference - candidate) ** 2)
    return float(10 * np.log10(np.sum(reference ** 2) / max(noise, 1e-30)))
