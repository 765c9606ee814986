"""Tiny float graphs that exercise every op handler of the QOperator rewrite."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import make_model


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def mlp_add_mul(rng) -> onnx.ModelProto:
    """x[N,8] -> MatMul(W) -> Add(const) -> Relu -> Mul(x2 branch) -> MatMul(activation x activation^T)."""
    inits = [_init("w", rng.normal(0, 0.5, (8, 6)).astype(np.float32)),
             _init("c", rng.normal(0, 0.1, (6,)).astype(np.float32)),
             _init("w2", rng.normal(0, 0.5, (8, 6)).astype(np.float32))]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "c"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("MatMul", ["x", "w2"], ["m2"], name="mm2"),
        helper.make_node("Mul", ["r", "m2"], ["p"], name="mul"),
        helper.make_node("Transpose", ["m2"], ["t"], name="tr", perm=[1, 0]),
        helper.make_node("MatMul", ["p", "t"], ["y"], name="mm_act"),
    ]
    return make_model(nodes, [_vi("x", [4, 8])], [_vi("y", [4, 4])], inits)


def branches(rng) -> onnx.ModelProto:
    """Two convs -> Concat -> AveragePool -> LeakyRelu -> Sigmoid, and GAP -> Reshape -> Softmax."""
    inits = [_init("wa", rng.normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32)),
             _init("wb", rng.normal(0, 0.5, (2, 3, 1, 1)).astype(np.float32)),
             _init("shape", np.array([0, -1], np.int64))]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ca"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["cb"], name="conv_b"),
        helper.make_node("Concat", ["ca", "cb"], ["cat"], name="concat", axis=1),
        helper.make_node("AveragePool", ["cat"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("LeakyRelu", ["ap"], ["lr"], name="leaky", alpha=0.1),
        helper.make_node("Sigmoid", ["lr"], ["y1"], name="sigmoid"),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "shape"], ["flat"], name="reshape"),
        helper.make_node("Softmax", ["flat"], ["y2"], name="softmax", axis=-1),
    ]
    return make_model(nodes, [_vi("x", [2, 3, 8, 8])], [_vi("y1", [2, 5, 4, 4]), _vi("y2", [2, 5])], inits)


def data_movement(rng) -> onnx.ModelProto:
    """Conv+Relu -> Pad -> Resize -> Slice -> Split -> Squeeze/Unsqueeze, Gather -> Concat -> Conv."""
    inits = [_init("w", rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)),
             _init("b", rng.normal(0, 0.1, (4,)).astype(np.float32)),
             _init("w2", rng.normal(0, 0.5, (2, 4, 3, 3)).astype(np.float32)),
             _init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
             _init("pad_value", np.array(0.0, np.float32)),
             _init("scales", np.array([1, 1, 2, 2], np.float32)),
             _init("starts", np.array([1], np.int64)), _init("ends", np.array([9], np.int64)),
             _init("axes2", np.array([2], np.int64)), _init("split", np.array([2, 2], np.int64)),
             _init("axes0", np.array([0], np.int64)), _init("idx", np.array([1, 0], np.int64))]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Pad", ["r", "pads", "pad_value"], ["pd"], name="pad"),
        helper.make_node("MaxPool", ["pd"], ["mp"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["mp", "", "scales"], ["rs"], name="resize", mode="nearest"),
        helper.make_node("Slice", ["rs", "starts", "ends", "axes2"], ["sl"], name="slice"),
        helper.make_node("Split", ["sl", "split"], ["s0", "s1"], name="split", axis=1),
        helper.make_node("Squeeze", ["s0", "axes0"], ["sq"], name="squeeze"),
        helper.make_node("Unsqueeze", ["sq", "axes0"], ["us"], name="unsqueeze"),
        helper.make_node("Gather", ["s1", "idx"], ["ga"], name="gather", axis=1),
        helper.make_node("Concat", ["us", "ga"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w2"], ["y"], name="conv2"),
    ]
    return make_model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 2, 5, 6])], inits)


def conv_transpose(rng) -> onnx.ModelProto:
    """Conv -> ConvTranspose -> Relu: ConvTranspose has no integer kernel in onnxruntime's CPU provider."""
    inits = [_init("w", rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)),
             _init("wt", rng.normal(0, 0.5, (4, 2, 2, 2)).astype(np.float32))]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["ct"], name="convt", strides=[2, 2]),
        helper.make_node("Relu", ["ct"], ["y"], name="relu"),
    ]
    return make_model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 2, 12, 12])], inits)
