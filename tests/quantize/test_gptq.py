"""GPTQ rounding: lower layer-output error than rounding to nearest, on the layer and end to end."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.errors import UsageError
from ptq_cli.quantization.api import quantize
from ptq_cli.quantization.arithmetic.gptq import gptq_round, output_error
from ptq_cli.recipe import PerChannel, PerTensor, QType, Recipe, Rounding, TensorSpec

RNG = np.random.default_rng(11)


def correlated_inputs(n: int, d: int) -> np.ndarray:
    mix = RNG.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)
    return (RNG.standard_normal((n, d)) @ mix).astype(np.float32)


@pytest.mark.parametrize("bits", [8, 4])
def test_gptq_beats_nearest_on_the_layer_output(bits):
    x = correlated_inputs(512, 48).astype(np.float64)
    w = RNG.standard_normal((24, 48))
    h = x.T @ x
    qmax = (1 << (bits - 1)) - 1
    scale = np.abs(w).max(axis=1, keepdims=True) / qmax
    nearest = np.clip(np.rint(w / scale), -qmax, qmax)
    q = gptq_round(w, h, scale, np.zeros_like(scale), -qmax, qmax, block=16)  # several lazy blocks
    assert q.dtype == np.int64 and q.min() >= -qmax and q.max() <= qmax
    gptq_error, nearest_error = output_error(w, q * scale, h), output_error(w, nearest * scale, h)
    assert gptq_error < 0.75 * nearest_error
    assert np.isclose(output_error(w, nearest * scale, h), np.sum((x @ (nearest * scale - w).T) ** 2))


def test_grouped_rounding_equals_one_group_at_a_time():
    x = [correlated_inputs(64, 9).astype(np.float64) for _ in range(3)]
    h = np.stack([a.T @ a for a in x])
    w = RNG.standard_normal((3, 2, 9))
    scale = np.full((3, 2, 1), 0.05)
    together = gptq_round(w, h, scale, 0.0, -127, 127)
    alone = np.stack([gptq_round(w[g], h[g], scale[g], 0.0, -127, 127) for g in range(3)])
    assert np.array_equal(together, alone)


def matmul_conv_model() -> onnx.ModelProto:
    """x[1,4,6,6] -> Conv 3x3 (8 out) -> Relu -> Transpose NHWC -> MatMul [8, 5] -> y."""
    wc = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    wm = RNG.standard_normal((8, 5)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "wc", "bc"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Transpose", ["r"], ["t"], name="nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "wm"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 6, 5])],
                              [numpy_helper.from_array(wc, "wc"), numpy_helper.from_array(wm, "wm"),
                               numpy_helper.from_array(RNG.standard_normal(8).astype(np.float32), "bc")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model: onnx.ModelProto, xs: list[np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.stack([sess.run(None, {"x": x})[0] for x in xs])


@pytest.mark.parametrize("granularity", [PerTensor(), PerChannel()])
def test_gptq_model_is_closer_to_float_than_nearest(tmp_path, granularity):
    model = matmul_conv_model()
    before = model.SerializeToString()
    xs = [np.abs(correlated_inputs(36, 4).T.reshape(1, 4, 6, 6)) for _ in range(24)]
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, x in enumerate(xs):
        np.save(folder / f"{i:02d}.npy", x)
    reference = run(model, xs)
    errors = {}
    for rounding in (Rounding.NEAREST, Rounding.GPTQ):
        recipe = Recipe(weights=TensorSpec(QType.INT4, True, granularity),
                        activations=TensorSpec(QType.UINT16, False, PerTensor()), rounding=rounding)
        result = quantize(model, data=folder, recipe=recipe, progress=False)
        onnx.checker.check_model(result.model, full_check=True)
        assert {"conv", "mm"} <= set(result.quantized)
        errors[rounding] = float(np.mean((run(result.model, xs) - reference) ** 2))
    assert errors[Rounding.GPTQ] < 0.8 * errors[Rounding.NEAREST]
    assert model.SerializeToString() == before


def test_gptq_needs_gram_matrices(tmp_path):
    from ptq_cli.calibration import calibrate

    model = matmul_conv_model()
    folder = tmp_path / "calib"
    folder.mkdir()
    np.save(folder / "0.npy", np.ones((1, 4, 6, 6), np.float32))
    table = calibrate(model, folder, progress=False)
    with pytest.raises(UsageError, match="ptq calibrate --gram"):
        quantize(model, calibration=table, recipe=Recipe(rounding=Rounding.GPTQ), progress=False)
    with_grams = calibrate(model, folder, progress=False, grams=True)
    first = quantize(model, calibration=with_grams, recipe=Recipe(rounding=Rounding.GPTQ), progress=False)
    second = quantize(model, calibration=with_grams, recipe=Recipe(rounding=Rounding.GPTQ), progress=False)
    assert first.model.SerializeToString() == second.model.SerializeToString()  # deterministic
