"""Cross-layer equalization: the float model is unchanged on the calibrated inputs, channel ranges
are balanced, a ReLU6 channel that saturates is left alone, and per-tensor INT8 gets better."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.arithmetic.equalize import equalization_pairs, equalize
from tests.conftest import make_model, run, sqnr_db


def _dw_relu6_pw(rng):
    c = 6
    w1 = rng.normal(0, 1, (c, 1, 3, 3)) * np.array([0.02, 0.05, 0.3, 1.0, 2.0, 3.0])[:, None, None, None]
    w2 = rng.normal(0, 0.5, (4, c, 1, 1))
    inits = [numpy_helper.from_array(w1.astype(np.float32), "w1"),
             numpy_helper.from_array(np.float32([0.1, 0.0, 0.2, 0.0, 0.1, 3.0]), "b1"),
             numpy_helper.from_array(w2.astype(np.float32), "w2"),
             numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="dw", group=c, pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r"], name="relu6"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="pw")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 5, 5])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5, 5])], inits)


def _with_output(model, name):
    import copy

    probe = copy.deepcopy(model)
    probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return probe


def test_equalization_keeps_the_function_and_balances_ranges(rng):
    model = prepare(_dw_relu6_pw(rng))
    x = rng.uniform(0, 1, (16, 6, 5, 5)).astype(np.float32)
    assert [(a.name, b.name, c.name) for a, b, c in equalization_pairs(model)] == [("dw", "relu6", "pw")]
    peak = run(_with_output(model, "c1"), {"x": x})[1].max(axis=(0, 2, 3))
    assert peak[5] > 6  # this channel saturates the ReLU6: it must not be scaled
    out, pairs = equalize(model, {"c1": peak})
    assert pairs == 1
    np.testing.assert_allclose(run(out, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(weights["w1"][5], before["w1"][5])
    r1 = np.abs(weights["w1"]).reshape(6, -1).max(axis=1)
    r2 = np.abs(weights["w2"]).transpose(1, 0, 2, 3).reshape(6, -1).max(axis=1)
    free = [0, 1]  # small channels, far from 6: fully balanced
    np.testing.assert_allclose(r1[free], r2[free], rtol=1e-5)
    spread = lambda w: np.ptp(np.log(np.abs(w).reshape(6, -1).max(axis=1)))  # noqa: E731
    assert spread(weights["w1"]) < spread(before["w1"])


def test_equalize_improves_per_tensor_int8(rng, tmp_path):
    model = _dw_relu6_pw(rng)
    data = tmp_path / "data"
    data.mkdir()
    batches = [rng.uniform(0, 1, (1, 6, 5, 5)).astype(np.float32) for _ in range(16)]
    for i, b in enumerate(batches):
        np.save(data / f"{i}.npy", b)
    recipe = ptq_cli.Recipe(weights=ptq_cli.TensorSpec(granularity=ptq_cli.PerTensor()), bias_correction=False)
    plain = ptq_cli.quantize(model, data=data, recipe=recipe, progress=False).model
    equalized = ptq_cli.quantize(model, data=data, recipe=recipe.with_(equalize=True), progress=False).model
    test = {"x": rng.uniform(0, 1, (32, 6, 5, 5)).astype(np.float32)}
    ref = run(model, test)[0]
    assert sqnr_db(ref, run(equalized, test)[0]) > sqnr_db(ref, run(plain, test)[0]) + 3


def test_equalize_needs_data(rng):
    import pytest

    from ptq_cli.errors import UsageError

    with pytest.raises(UsageError, match="--equalize needs --data"):
        ptq_cli.quantize(_dw_relu6_pw(rng), recipe=ptq_cli.Recipe(equalize=True), progress=False)
