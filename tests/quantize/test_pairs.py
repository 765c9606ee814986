"""The portable target: int8 weights whose 16-bit pair sums cannot saturate on x86 without VNNI.

Each integer op family is run through onnxruntime with weights built to saturate a pair and
inputs at the top of their calibrated range (raw uint8 255), and checked against the same
integers multiplied in int64 numpy. On a host whose kernels saturate (the probe says so: the
suite also runs under `qemu-x86_64 -cpu Haswell` in CI), the full-range (--target vnni) model
is checked to show the saturation the portable one avoids.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.model.kernels import HostKernels, host_kernels
from ptq_cli.quantization.arithmetic.pairs import (PAIR_LIMIT, SCALE_STEPS, adjacent_partners, bound_pairs,
                                               conv_partners, fit_pairs, pairing_for, saturates, worst_pair_sums)
from ptq_cli.quantization.arithmetic.scheme import dequantize, quantize
from ptq_cli.quantization.static import quantize_model
from ptq_cli.recipe import Format, QType, Recipe, Target
from tests.conftest import make_model, minmax_ranges, run

F = TensorProto.FLOAT


# --- the arithmetic --------------------------------------------------------------------------

def test_conv_partners_follow_the_kernel_order_tap_major():
    # C_in = 4, one tap: channels (0, 1) and (2, 3).
    assert conv_partners(4, 1).tolist() == [1, 0, 3, 2]
    # C_in = 3, two taps: the kernel reads (t0c0 t0c1) (t0c2 t1c0) (t1c1 t1c2); ONNX order is c*2 + t.
    assert conv_partners(3, 2).tolist() == [2, 4, 0, 5, 1, 3]
    assert adjacent_partners(5).tolist() == [1, 0, 3, 2, -1]


@given(arrays(np.int8, (6, 10), elements=st.integers(-127, 127)))
def test_bounded_pairs_never_saturate_and_pairs_in_range_are_kept(q):
    pairing = pairing_for("Gemm", q.shape, trans_b=True)
    bounded = bound_pairs(q, q.astype(np.float64), pairing)
    assert not saturates(worst_pair_sums(bounded, pairing))
    a, b = q[:, 0::2].astype(int), q[:, 1::2].astype(int)
    fine = (np.maximum(a, 0) + np.maximum(b, 0) <= PAIR_LIMIT) & (np.minimum(a, 0) + np.minimum(b, 0) >= -PAIR_LIMIT)
    np.testing.assert_array_equal(bounded[:, 0::2][fine], q[:, 0::2][fine])
    np.testing.assert_array_equal(bounded[:, 1::2][fine], q[:, 1::2][fine])
    assert bounded.dtype == np.int8


def test_a_bounded_pair_lands_on_the_limit_nearest_its_float_values():
    pairing = pairing_for("MatMul", (2, 1))
    q = np.array([[127], [120]], np.int8)
    bounded = bound_pairs(q, np.array([[127.0], [119.6]]), pairing)
    assert bounded.ravel().tolist() == [68, 60]  # sums to 128, split as the float values lean
    assert bound_pairs(-q, -np.array([[127.0], [119.6]]), pairing).ravel().tolist() == [-68, -60]


def test_gptq_keeps_each_pair_in_range_given_its_partner(rng):
    from ptq_cli.quantization.arithmetic.gptq import gptq_round

    w = np.abs(rng.normal(0, 1, (8, 12)))  # [rows, inputs]: same-sign rows, many pairs over the limit
    x = rng.normal(0, 1, (200, 12))
    scale = np.abs(w).max(axis=1, keepdims=True) / 127
    partner = adjacent_partners(12)
    free = gptq_round(w, x.T @ x, scale, np.zeros_like(scale), -127, 127)
    bounded = gptq_round(w, x.T @ x, scale, np.zeros_like(scale), -127, 127, partner=partner, pair_limit=PAIR_LIMIT)
    pairing = pairing_for("Gemm", w.shape, trans_b=True)  # rows × inputs, pairs (k, k+1)
    assert saturates(worst_pair_sums(free, pairing))
    assert not saturates(worst_pair_sums(bounded, pairing))
    assert np.abs(bounded).max() <= 127


def test_fit_pairs_is_never_worse_than_seven_bits_or_plain_bounding(rng):
    w = np.abs(rng.normal(0, 1, (16, 9, 3, 3))).astype(np.float32)  # same-sign: many pairs clip
    pairing = pairing_for("Conv", w.shape)
    scale = np.abs(w).reshape(16, -1).max(axis=1) / 127
    q, factors = fit_pairs(w, scale, pairing, -127, 127, per_row=True)
    assert not saturates(worst_pair_sums(q, pairing))
    assert set(np.round(factors, 3)) <= set(np.round(SCALE_STEPS, 3))

    def error(integers, step):
        return ((integers * step.reshape(-1, 1, 1, 1) - w) ** 2).sum()
    fitted = error(q, scale * factors)
    seven_bits = error(np.clip(np.rint(w / (2 * scale).reshape(-1, 1, 1, 1)), -127, 127), 2 * scale)
    plain = bound_pairs(np.clip(np.rint(w / scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8),
                        w / scale.reshape(-1, 1, 1, 1), pairing)
    assert fitted <= seven_bits and fitted <= error(plain, scale)


def test_depthwise_conv_and_conv_integer_pair_nothing():
    assert pairing_for("Conv", (8, 1, 3, 3), group=8) is None
    assert pairing_for("ConvInteger", (8, 4, 3, 3)) is None
    assert pairing_for("Conv", (16, 1, 3, 3), group=8) is not None  # depth multiplier 2: a GEMM


# --- every integer op family through onnxruntime, against int64 numpy --------------------

def _single(op: str, weight: np.ndarray, x_shape, y_shape, **attrs) -> onnx.ModelProto:
    inputs = ["x", "w"] + (["b"] if op != "MatMul" else [])
    inits = [numpy_helper.from_array(weight, "w")]
    if op != "MatMul":
        channels = weight.shape[0] if op == "Conv" or attrs.get("transB") else weight.shape[1]
        inits.append(numpy_helper.from_array(np.linspace(-0.5, 0.5, channels).astype(np.float32), "b"))
    node = helper.make_node(op, inputs, ["y"], name="node", **attrs)
    return make_model([node], [helper.make_tensor_value_info("x", F, list(x_shape))],
                      [helper.make_tensor_value_info("y", F, list(y_shape))], inits)


FAMILIES = {
    "conv_even_channels": lambda rng: _single("Conv", _same_sign(rng, (6, 4, 3, 3)), (1, 4, 5, 5), (1, 6, 3, 3)),
    "conv_rgb_stem": lambda rng: _single("Conv", _same_sign(rng, (6, 3, 3, 3)), (1, 3, 5, 5), (1, 6, 3, 3)),
    "matmul": lambda rng: _single("MatMul", _same_sign_columns(rng, (16, 6)), (2, 16), (2, 6)),
    "gemm_trans_b": lambda rng: _single("Gemm", _same_sign(rng, (6, 16)), (2, 16), (2, 6), transB=1),
    "gemm": lambda rng: _single("Gemm", _same_sign_columns(rng, (16, 6)), (2, 16), (2, 6)),
    "conv_grouped": lambda rng: _single("Conv", _same_sign(rng, (6, 2, 3, 3)), (1, 4, 5, 5), (1, 6, 3, 3), group=2),
}


def _same_sign_columns(rng, shape) -> np.ndarray:
    """A [K, N] weight whose columns (the output channels) crowd the top of their range."""
    return np.ascontiguousarray(_same_sign(rng, shape[::-1]).T)


def _same_sign(rng, shape) -> np.ndarray:
    """Weights whose entries crowd the top of each channel's range: full-range int8 pairs clip."""
    return (rng.uniform(0.7, 1.0, shape) * rng.choice([1.0, -1.0], shape[:1] + (1,) * (len(shape) - 1))
            ).astype(np.float32)


def _integer_reference(model: onnx.ModelProto, plan, x: np.ndarray) -> np.ndarray:
    """The quantized node computed in int64 from the plan's integers, requantized to its output."""
    node = next(n for n in model.graph.node if n.name == "node")
    x_params = plan.activations["x"]
    x_q = quantize(x, x_params).astype(np.int64) - int(x_params.zero_point)
    weight = plan.weights[("node", "w")]
    value = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    w_q = weight.integers(value).astype(np.int64)
    if node.op_type == "Conv":
        taps, groups = w_q.shape[2:], next((a.i for a in node.attribute if a.name == "group"), 1)
        per_group, in_group = w_q.shape[0] // groups, w_q.shape[1]
        out = np.zeros((1, w_q.shape[0], x.shape[2] - taps[0] + 1, x.shape[3] - taps[1] + 1), np.int64)
        for o in range(w_q.shape[0]):
            g = o // per_group
            for i in range(out.shape[2]):
                for j in range(out.shape[3]):
                    patch = x_q[0, g * in_group:(g + 1) * in_group, i:i + taps[0], j:j + taps[1]]
                    out[0, o, i, j] = (w_q[o] * patch).sum()
        channel_shape = (1, -1, 1, 1)
    else:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        out = x_q @ (w_q.T if trans_b else w_q)
        channel_shape = (1, -1)
    scale = (np.float64(x_params.scale) * weight.params.scale.astype(np.float64)).reshape(channel_shape)
    y = out * scale
    if "node" in plan.biases:
        bias = plan.biases["node"]
        y = y + quantize_bias_like(model, bias, x_params, weight).reshape(channel_shape) * scale
    y_params = plan.activations["y"]
    return dequantize(quantize(y.astype(np.float32), y_params), y_params)


def quantize_bias_like(model, bias, x_params, weight) -> np.ndarray:
    from ptq_cli.quantization.arithmetic.scheme import quantize_bias
    value = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == bias.tensor))
    return quantize_bias(value, x_params.scale, weight.params.scale)[0].astype(np.float64)


def _quantized(model, target: Target, fmt: Format, rng):
    batches = [{"x": rng.uniform(0, 1, [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
                .astype(np.float32)} for _ in range(4)]
    recipe = Recipe(target=target, format=fmt, bias_correction=False)
    return quantize_model(model, recipe, minmax_ranges(model, batches)), batches


@pytest.mark.parametrize("fmt", [Format.QDQ, Format.QOPERATOR], ids=lambda f: f.value)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_portable_weights_are_exact_on_this_host_and_the_full_range_ones_saturate_where_it_can(family, fmt, rng):
    model = FAMILIES[family](rng)
    before = copy.deepcopy(model)
    (portable, plan), batches = _quantized(model, Target.PORTABLE, fmt, rng)
    (full, full_plan), _ = _quantized(model, Target.VNNI, fmt, rng)
    assert model == before
    onnx.checker.check_model(portable, full_check=True)
    node = next(n for n in model.graph.node if n.name == "node")
    value = numpy_helper.to_array(model.graph.initializer[0])
    pairing = pairing_for(node.op_type, value.shape, trans_b=any(a.name == "transB" and a.i for a in node.attribute),
                          group=next((a.i for a in node.attribute if a.name == "group"), 1))
    assert not saturates(worst_pair_sums(plan.weights[("node", "w")].integers(value), pairing))
    assert saturates(worst_pair_sums(full_plan.weights[("node", "w")].integers(value), pairing))
    top = np.full(batches[0]["x"].shape, max(b["x"].max() for b in batches), np.float32)  # raw uint8 255
    step = float(plan.activations["y"].scale)
    for x in (top, batches[0]["x"]):
        got = run(portable, {"x": x})[0]
        np.testing.assert_allclose(got, _integer_reference(model, plan, x), atol=1.01 * step)
    if host_kernels() is HostKernels.SATURATING:
        full_step = float(full_plan.activations["y"].scale)
        error = np.abs(run(full, {"x": top})[0] - _integer_reference(model, full_plan, top)).max()
        assert error > 4 * full_step, "full-range weights should saturate on this host"


def test_dynamic_matmul_is_exact_against_int64(rng):
    import ptq_cli

    model = FAMILIES["gemm_trans_b"](rng)
    result = ptq_cli.quantize(model, None, recipe=Recipe(dynamic=True), progress=False)
    out = result.model
    integer = next(n for n in out.graph.node if n.op_type == "MatMulInteger")
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    w_q = inits[integer.input[1]]
    assert not saturates(worst_pair_sums(w_q, pairing_for("MatMulInteger", w_q.shape)))
    x = rng.uniform(0, 1, (2, 16)).astype(np.float32)
    x_scale = np.float32((max(x.max(), 0) - min(x.min(), 0)) / 255)
    x_zero = np.clip(np.rint(-min(x.min(), 0) / x_scale), 0, 255)
    x_q = np.clip(np.rint(x / x_scale) + x_zero, 0, 255).astype(np.int64) - int(x_zero)
    w_scale = next(v for k, v in inits.items() if k.endswith("_scale") and v.shape == (w_q.shape[1],))
    bias = numpy_helper.to_array(model.graph.initializer[1])
    want = (x_q @ w_q.astype(np.int64)) * (np.float64(x_scale) * w_scale) + bias
    np.testing.assert_allclose(run(out, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_dynamic_lstm_weights_keep_their_pairs_in_range(rng):
    import ptq_cli

    hidden, k = 4, 6
    w = numpy_helper.from_array(np.abs(rng.normal(0, 1, (1, 4 * hidden, k))).astype(np.float32), "W")
    r = numpy_helper.from_array(np.abs(rng.normal(0, 1, (1, 4 * hidden, hidden))).astype(np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=hidden)
    model = make_model([node], [helper.make_tensor_value_info("x", F, [3, 1, k])],
                       [helper.make_tensor_value_info("y", F, [3, 1, 1, hidden])], [w, r])
    for target, portable in ((Target.PORTABLE, True), (Target.VNNI, False)):
        out = ptq_cli.quantize(model, None, recipe=Recipe(dynamic=True, target=target), progress=False).model
        lstm = next(n for n in out.graph.node if n.op_type == "DynamicQuantizeLSTM")
        inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
        for name in lstm.input[1:3]:
            sums = worst_pair_sums(inits[name], pairing_for("LSTM", inits[name].shape))
            assert saturates(sums) is not portable
        x = rng.normal(0, 1, (3, 1, k)).astype(np.float32)
        error = np.abs(run(out, {"x": x})[0] - run(model, {"x": x})[0]).max()
        if portable:
            assert error < 0.02
        elif host_kernels() is HostKernels.SATURATING:
            assert error > 0.05, "full-range LSTM weights should saturate on this host"


def test_a_weight_whose_pairs_fit_keeps_its_scale_and_integers():
    from ptq_cli.quantization.arithmetic.pairs import portable_weight
    from ptq_cli.quantization.arithmetic.scheme import compute_qparams

    w = np.array([[1.0, -1.0], [-0.5, 1.0]], np.float32)  # every pair mixes signs
    qp = compute_qparams(np.array([-1.0, -1.0]), np.array([1.0, 1.0]), QType.INT8, symmetric=True, axis=1)
    params, q = portable_weight(w, qp, pairing_for("MatMul", w.shape))
    assert params is qp and np.array_equal(q, quantize(w, qp))


def test_power_of_two_scales_stay_powers_of_two(rng):
    from ptq_cli.recipe import PerChannel, TensorSpec

    model = FAMILIES["matmul"](rng)
    batches = [{"x": rng.uniform(0, 1, (2, 16)).astype(np.float32)} for _ in range(4)]
    recipe = Recipe(weights=TensorSpec(QType.INT8, True, PerChannel(), power_of_two=True), bias_correction=False)
    _, plan = quantize_model(model, recipe, minmax_ranges(model, batches))
    weight = plan.weights[("node", "w")]
    exponents = np.log2(weight.params.scale.astype(np.float64))
    np.testing.assert_array_equal(exponents, np.round(exponents))
    value = numpy_helper.to_array(model.graph.initializer[0])
    assert not saturates(worst_pair_sums(weight.integers(value), pairing_for("MatMul", value.shape)))
