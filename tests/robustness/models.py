"""Small bad models, built in code: each is one class of input the corpus found wrong."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, initializers=(), opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def no_kernel() -> onnx.ModelProto:
    """GlobalLpPool at opset 22: valid ONNX, but onnxruntime has no kernel for it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 1, 1])
    return _model([helper.make_node("GlobalLpPool", ["x"], ["y"], name="pool")], [x], [y], opset=22)


def matmul(weight: np.ndarray, dtype=TensorProto.FLOAT) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", dtype, [1, weight.shape[0]])
    y = helper.make_tensor_value_info("y", dtype, [1, weight.shape[1]])
    if dtype == TensorProto.BFLOAT16:
        w = helper.make_tensor("w", dtype, weight.shape, [0] * weight.size)
    else:
        w = numpy_helper.from_array(weight, "w")
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], [x], [y], [w])


def nonfinite_weight() -> onnx.ModelProto:
    w = np.ones((4, 3), np.float32)
    w[0, 0], w[1, 1] = np.nan, np.inf
    return matmul(w)


def empty_weight() -> onnx.ModelProto:
    return matmul(np.zeros((0, 3), np.float32))


def bfloat16() -> onnx.ModelProto:
    return matmul(np.zeros((4, 3), np.float32), TensorProto.BFLOAT16)
