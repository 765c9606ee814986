"""The one session factory: what each SessionSpec field sets, and that a ModelProto, its bytes
and its path give the same session."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from ptq_cli.errors import UsageError
from ptq_cli.model.io import save_model
from ptq_cli.model.sessions import SessionSpec, open_session
from onnx import TensorProto, helper

from tests.conftest import make_model


def relu_model(shape=(1, 3, 2, 2)):
    return make_model([helper.make_node("Relu", ["x"], ["y"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])


def test_the_defaults_are_onnxruntimes_with_warnings_off():
    options = SessionSpec().session_options()
    default = ort.SessionOptions()
    assert options.log_severity_level == 3
    assert options.intra_op_num_threads == default.intra_op_num_threads
    assert options.graph_optimization_level == default.graph_optimization_level
    assert options.execution_order == default.execution_order
    assert not options.enable_profiling


def test_each_field_sets_its_option():
    options = SessionSpec(threads=2, literal=True, priority_order=True, log_severity=2,
                          profile_prefix="/tmp/p").session_options()
    assert options.intra_op_num_threads == 2
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.execution_order == ort.ExecutionOrder.PRIORITY_BASED
    assert options.log_severity_level == 2
    assert options.enable_profiling and options.profile_file_prefix == "/tmp/p"


def test_a_model_its_bytes_and_its_path_run_alike(tmp_path):
    model = relu_model((1, 3, 2, 2))
    path = save_model(model, tmp_path / "relu.onnx")
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 3, 2, 2)
    outs = [open_session(m, SessionSpec(disabled_optimizers=("ConstantFolding",))).run(None, {"x": x})[0]
            for m in (model, model.SerializeToString(), path, str(path))]
    for out in outs:
        np.testing.assert_array_equal(out, np.maximum(x, 0))


def test_an_unavailable_provider_is_a_usage_error():
    with pytest.raises(UsageError, match="execution provider 'NoSuchExecutionProvider' is not available"):
        open_session(relu_model(), SessionSpec(providers=("NoSuchExecutionProvider", "CPUExecutionProvider")))
