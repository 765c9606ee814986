"""Every command against bad models and bad data: the contract of harness.Run.refused holds for
each (exit 2 or 3, one line on stderr, no traceback, no file left behind, inputs unchanged)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.robustness.harness import invoke


def _bad_models(work):
    good = (work / "model.onnx").read_bytes()
    return {"empty.onnx": b"", "truncated.onnx": good[: len(good) // 2], "json.onnx": b'{"not": "onnx"}',
            "noise.onnx": bytes(range(256)) * 4, "text.onnx": "ünïcödé\n".encode()}


def _commands(work, model):
    data = work / "data"
    return [("quantize", model, "--data", data, "--objective", "size"), ("quantize", model, "--dynamic"),
            ("calibrate", model, "--data", data), ("compare", model, work / "model.onnx", "--data", data),
            ("compare", work / "model.onnx", model, "--data", data), ("inspect", model), ("inspect", model, "--json")]


def test_bad_model_files_in_every_command(work):
    for name, content in _bad_models(work).items():
        (work / name).write_bytes(content)
    for name in _bad_models(work):
        for command in _commands(work, work / name):
            run = invoke(work, *command, "-q" if command[0] != "inspect" else "--json")
            run.refused(run.code if run.code in (2, 3) else 3, name)


def _bad_data(work):
    x = np.random.default_rng(0).normal(size=(1, 3, 8, 8)).astype(np.float32)
    cases = {"empty": {}, "garbage": {"a.npy": b"garbage"}, "shape": {"a.npy": np.zeros((1, 3, 4, 4), np.float32)},
             "rank": {"a.npy": np.zeros((3, 8, 8, 2, 1), np.float32)}, "nan": {"a.npy": np.where(x > 1, np.nan, x)},
             "inf": {"a.npy": np.where(x > 1, np.inf, x).astype(np.float32)}, "strings": {"a.npy": np.array(["a", "b"])},
             "npz-key": {"a.npz": {"wrong": x}}, "pickle": {"a.npy": np.array([{"a": 1}], dtype=object)},
             "rows0": {"a.npy": np.zeros((0, 3, 8, 8), np.float32)}, "pb": {"a.pb": b"\x08\x01garbage"}}
    return cases


def _write_data(folder, files):
    folder.mkdir()
    for name, value in files.items():
        path = folder / name
        if isinstance(value, bytes):
            path.write_bytes(value)
        elif isinstance(value, dict):
            np.savez(path, **value)
        else:
            np.save(path, value, allow_pickle=value.dtype == object)


def test_bad_data_in_every_command(work, quantized):
    for name, files in _bad_data(work).items():
        _write_data(work / f"bad-{name}", files)
    for name in _bad_data(work):
        data = work / f"bad-{name}"
        for command in (("quantize", work / "model.onnx", "--data", data, "--objective", "size"),
                        ("calibrate", work / "model.onnx", "--data", data),
                        ("compare", work / "model.onnx", quantized, "--data", data)):
            run = invoke(work, *command, "-q")
            run.refused(run.code if run.code in (2, 3) else 3)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300))
def test_any_bytes_as_a_model(work, content):
    (work / "any.onnx").write_bytes(content)
    run = invoke(work, "quantize", work / "any.onnx", "--dynamic", "-q")
    run.refused(run.code if run.code in (2, 3) else 3)
    (work / "any.onnx").unlink()


def test_reruns_give_byte_identical_outputs(work):
    for i in (1, 2):
        assert invoke(work, "quantize", work / "model.onnx", "--data", work / "data", "--objective", "size",
                      "-o", work / f"q{i}.onnx", "-q").code == 0
        assert invoke(work, "calibrate", work / "model.onnx", "--data", work / "data", "--method", "entropy",
                      "-o", work / f"t{i}.json", "-q").code == 0
    assert (work / "q1.onnx").read_bytes() == (work / "q2.onnx").read_bytes()
    assert (work / "t1.json").read_bytes() == (work / "t2.json").read_bytes()


def test_an_input_declared_without_a_shape_takes_data_of_any_rank(work):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)   # no shape at all: rank unknown
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g", [x], [y], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), work / "free.onnx")
    np.save(work / "x.npy", np.ones((2, 4), np.float32))
    run = invoke(work, "calibrate", work / "free.onnx", "--data", work / "x.npy", "-q")
    assert run.code == 0, run.result.stderr


def test_conv_without_kernel_shape_attribute_in_gptq(work):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])   # kernel_shape is optional
    onnx.save(helper.make_model(helper.make_graph([conv], "g", [x], [y], [w]),
                                opset_imports=[helper.make_opsetid("", 13)]), work / "k.onnx")
    run = invoke(work, "quantize", work / "k.onnx", "--data", work / "data", "--rounding", "gptq", "--objective",
                 "size", "-q", "-o", work / "k.int8.onnx")
    assert run.code == 0, run.result.stderr
