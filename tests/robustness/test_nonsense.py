"""Classes 5 and 6: silent nonsense is refused, reports say the truth."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import onnxruntime as ort

from tests.robustness.harness import invoke


def test_exclude_of_a_node_or_op_that_does_not_exist(work):
    for entry in ("conv9", "Softmax", "conv"):
        invoke(work, "quantize", work / "model.onnx", "--data", work / "data", "--exclude", entry, "--objective",
               "size", "-q").refused(2, repr(entry), "matches no node")
    for entry in ("conv1", "Relu"):   # a name and an op type that exist
        run = invoke(work, "quantize", work / "model.onnx", "--data", work / "data", "--exclude", entry,
                     "--objective", "size", "-q", "-o", work / f"{entry}.onnx")
        assert run.code == 0, run.result.stderr


def test_calibration_arrays_with_zero_rows(work):
    empty = work / "empty"
    empty.mkdir()
    np.save(empty / "a.npy", np.zeros((0, 3, 8, 8), np.float32))
    for command in ("quantize", "calibrate"):
        invoke(work, command, work / "model.onnx", "--data", empty, "-q").refused(3, "no rows")


def test_nothing_quantized_is_not_written_as_a_quantized_model(work):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Erf", ["x"], ["y"], name="erf")], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, work / "erf.onnx")
    np.save(work / "x.npy", np.ones((1, 4), np.float32))
    invoke(work, "quantize", work / "erf.onnx", "--data", work / "x.npy", "--objective", "size",
           "-q").refused(3, "nothing was quantized", "Erf")


def test_four_bit_activations_leave_conv_in_float_instead_of_a_model_onnxruntime_refuses(work):
    from tests.compare.models import mlp

    onnx.save(mlp(np.random.default_rng(0), classes=8), work / "mlp.onnx")
    np.save(work / "x.npy", np.random.default_rng(1).normal(size=(4, 4)).astype(np.float32))
    for activation in ("uint4", "int4"):
        out = work / f"mlp.{activation}.onnx"
        run = invoke(work, "quantize", work / "mlp.onnx", "--data", work / "x.npy", "--activation-type", activation,
                     "--per-tensor", "--objective", "size", "-q", "-o", out)
        assert run.code == 0, run.result.stderr
        ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])   # loads
        # The Conv model: Conv stays float (named), the rest is quantized or it is refused, never blamed.
        run = invoke(work, "quantize", work / "model.onnx", "--data", work / "data", "--activation-type", activation,
                     "--per-tensor", "--objective", "size", "-o", work / f"conv.{activation}.onnx")
        assert run.code == 0, run.result.stderr
        assert "has no 4-bit activation kernel" in run.result.stderr
        ort.InferenceSession(str(work / f"conv.{activation}.onnx"), providers=["CPUExecutionProvider"])


def test_compare_a_model_with_itself_passes_every_threshold(work):
    run = invoke(work, "compare", work / "model.onnx", work / "model.onnx", "--data", work / "data", "--min-sqnr",
                 "100", "--min-cosine", "0.999", "--max-top1-drop", "0", "--json", "-q")
    assert run.code == 0, run.result.stderr
    doc = json.loads(run.result.stdout)
    assert doc["passed"] and all(t["passed"] for t in doc["thresholds"])


def test_inspect_json_is_strict_json(work, quantized):
    def refuse(constant):
        raise ValueError(f"bare {constant} is not JSON")

    for args in ((quantized,), (quantized, "--calibration", _table(work))):
        run = invoke(work, "inspect", *args, "--json")
        assert run.code == 0, run.result.stderr
        json.loads(run.result.stdout, parse_constant=refuse)


def test_json_outputs_never_hold_nan(work):
    from ptq_cli.cli.reporting import _plain

    assert _plain({"a": [math.nan, np.float32(math.inf), 1.5], "b": np.int64(3)}) == {"a": [None, None, 1.5], "b": 3}


def _table(work):
    assert invoke(work, "calibrate", work / "model.onnx", "--data", work / "data", "-q").code == 0
    return work / "model.calib.json"
