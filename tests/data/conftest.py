"""Tiny models (built with onnx.helper) and data-writing helpers for the data-reader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.io import input_specs


def relu_model(shape=("N", 3, 4, 4), elem=TensorProto.FLOAT, name="x") -> onnx.ModelProto:
    """One input -> Relu (Identity for non-float types). Symbolic dims are strings."""
    op = "Relu" if elem in (TensorProto.FLOAT, TensorProto.DOUBLE) else "Identity"
    graph = helper.make_graph(
        [helper.make_node(op, [name], ["y"])], "relu",
        [helper.make_tensor_value_info(name, elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, list(shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def add_model(shape_a=("N", 2), shape_b=("N", 2)) -> onnx.ModelProto:
    """Two inputs a, b -> Add."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "add",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(shape_a)),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, list(shape_b))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape_a))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def specs():
    return input_specs(relu_model())


def write_npys(folder: Path, arrays, pattern="{:04d}.npy") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(arrays):
        np.save(folder / pattern.format(i), array)
    return folder


def write_pb(path: Path, array: np.ndarray, name: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(numpy_helper.from_array(array, name).SerializeToString())
    return path
