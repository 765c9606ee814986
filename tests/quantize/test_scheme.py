"""The arithmetic contract of quantization/arithmetic/scheme.py, proved on random ranges and checked bit-exactly
against ONNX's own QuantizeLinear (onnx.reference) and onnxruntime."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ptq_cli.quantization.arithmetic.scheme import (compute_qparams, dequantize, fixed_point_multiplier, integer_range,
                                     quantize, quantize_bias, wasted_fraction, weight_range)
from ptq_cli.recipe import QType
from tests.conftest import make_model, run

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32)
qtypes_8_16 = st.sampled_from([QType.UINT8, QType.INT8, QType.UINT16, QType.INT16])


def _range(a, b):
    lo, hi = min(a, b), max(a, b)
    return lo, hi


@settings(max_examples=200, deadline=None)
@given(a=finite, b=finite, qtype=qtypes_8_16, symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(a, b, qtype, symmetric, seed):
    lo, hi = _range(a, b)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric)
    lo0, hi0 = min(lo, 0.0), max(hi, 0.0)
    x = np.random.default_rng(seed).uniform(lo0, hi0, 256).astype(np.float32)
    err = np.abs(dequantize(quantize(x, qp), qp) - x)
    # Half a step, plus float32 rounding of x / S and of the product (q - Z) * S.
    slack = float(qp.scale) * 1e-3 + np.abs(x) * 4e-7
    assert np.all(err <= float(qp.scale) / 2 + slack)


@settings(max_examples=200, deadline=None)
@given(a=finite, b=finite, qtype=qtypes_8_16, symmetric=st.booleans(), reduce=st.booleans())
def test_zero_is_exact_and_the_zero_point_is_in_range(a, b, qtype, symmetric, reduce):
    lo, hi = _range(a, b)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric, reduce_range=reduce)
    q0 = quantize(np.zeros(1, np.float32), qp)
    assert q0[0] == qp.zero_point
    assert dequantize(q0, qp)[0] == 0.0
    qmin, qmax = integer_range(qtype, symmetric=symmetric, reduce_range=reduce)
    assert qmin <= int(qp.zero_point) <= qmax
    assert float(qp.scale) > 0 and np.isfinite(qp.scale)


def _onnx_quantize_linear(x, scale, zero_point, axis=None):
    attrs = {"axis": axis} if axis is not None else {}
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], **attrs)
    graph = helper.make_graph([node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(zero_point.dtype),
                                                             x.shape)],
                              initializer=[numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero_point, "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


@settings(max_examples=100, deadline=None)
@given(a=finite, b=finite, qtype=qtypes_8_16, symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_bit_exact_with_onnx_quantize_linear(a, b, qtype, symmetric, seed):
    lo, hi = _range(a, b)
    qp = compute_qparams(lo, hi, qtype, symmetric=symmetric)
    rng = np.random.default_rng(seed)
    # Include out-of-range values (clamping) and exact half-steps (round half to even).
    x = np.concatenate([rng.uniform(lo - 10, hi + 10, 64),
                        (np.arange(-8, 8) + 0.5) * float(qp.scale)]).astype(np.float32)
    # The reference casts to int32 before clamping, so keep |x / S| < 2^30 (onnxruntime saturates).
    x = np.clip(x, -(2.0**30) * float(qp.scale), 2.0**30 * float(qp.scale)).astype(np.float32)
    expected = _onnx_quantize_linear(x, qp.scale, np.asarray(qp.zero_point))
    np.testing.assert_array_equal(quantize(x, qp), expected)


def test_per_channel_bit_exact_with_onnx_and_onnxruntime(rng):
    w = (rng.normal(0, 1, (5, 3, 2, 2)) * np.array([1e-3, 1, 10, 100, 0])[:, None, None, None]).astype(np.float32)
    lo, hi = weight_range(w, axis=0)
    qp = compute_qparams(lo, hi, QType.INT8, symmetric=True, axis=0)
    assert qp.scale.shape == (5,) and float(qp.scale[4]) == 1.0  # the all-zero channel gets a valid scale
    ours = quantize(w, qp)
    np.testing.assert_array_equal(ours, _onnx_quantize_linear(w, qp.scale, qp.zero_point, axis=0))
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, w.shape)],
                       [helper.make_tensor_value_info("y", TensorProto.INT8, w.shape)],
                       [numpy_helper.from_array(qp.scale, "s"), numpy_helper.from_array(qp.zero_point, "z")])
    np.testing.assert_array_equal(ours, run(model, {"x": w})[0])
    assert np.abs(ours).max() == 127  # symmetric int8 uses the restricted range [-127, 127]


def test_seed_examples():
    # Seed 000: [-20, 1000] on uint8 has scale 4 and zero-point 5; [40, 1000] wastes 3.92 %.
    qp = compute_qparams(-20.0, 1000.0, QType.UINT8, symmetric=False)
    assert float(qp.scale) == 4.0 and int(qp.zero_point) == 5
    assert int(quantize(np.float32([-20.0]), qp)[0]) == 0
    skewed = compute_qparams(40.0, 1000.0, QType.UINT8, symmetric=False)
    assert wasted_fraction(40.0, 1000.0, skewed) == pytest.approx(10 / 255, abs=1e-6)
    # Seed 001: symmetric uint8 with zero-point 128 maps [-1000, 1000] to [1, 255].
    sym = compute_qparams(-1000.0, 1000.0, QType.UINT8, symmetric=True)
    assert int(sym.zero_point) == 128
    np.testing.assert_array_equal(quantize(np.float32([-1000, 0, 1000]), sym), [1, 128, 255])


def test_constant_tensor_and_reduced_range():
    qp = compute_qparams(0.0, 0.0, QType.UINT8, symmetric=False)
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == 0
    assert integer_range(QType.INT8, symmetric=True, reduce_range=True) == (-63, 63)
    assert integer_range(QType.UINT8, symmetric=False, reduce_range=True) == (0, 127)
    red = compute_qparams(-1.0, 1.0, QType.INT8, symmetric=True, reduce_range=True)
    assert np.abs(quantize(np.float32([-1, 1]), red)).max() == 63


def test_power_of_two_scale_covers_the_range():
    qp = compute_qparams(-3.0, 5.0, QType.INT8, symmetric=True, power_of_two=True)
    assert np.log2(float(qp.scale)) == np.round(np.log2(float(qp.scale)))
    assert float(qp.scale) * 127 >= 5.0


def test_int4_range():
    qp = compute_qparams(-1.0, 1.0, QType.INT4, symmetric=True)
    assert integer_range(QType.INT4, symmetric=True) == (-7, 7)
    # Out-of-range values clamp to the type (as QuantizeLinear does), in-range ones stay in [-7, 7].
    assert quantize(np.float32([-1, 1, 0, -2]), qp).tolist() == [-7, 7, 0, -8]


def test_bias_is_int32_with_product_scale():
    bias = np.float32([0.5, -0.25, 1e-4])
    w_scale = np.float32([0.01, 0.02, 0.04])
    q, scale = quantize_bias(bias, np.float32(0.1), w_scale)
    assert q.dtype == np.int32
    np.testing.assert_allclose(scale, 0.1 * w_scale, rtol=1e-6)
    np.testing.assert_allclose(q * scale, bias, atol=scale.max() / 2)


def test_stochastic_rounding_is_unbiased_and_seeded():
    qp = compute_qparams(-1.0, 1.0, QType.INT8, symmetric=True)
    x = np.full(20000, 0.3 * float(qp.scale), np.float32)
    a = quantize(x, qp, rng=np.random.default_rng(1))
    assert abs(a.mean() - 0.3) < 0.02
    np.testing.assert_array_equal(a, quantize(x, qp, rng=np.random.default_rng(1)))


@pytest.mark.parametrize("m", [0.5, 0.0123, 3.7e-5, 0.999999, 1.5])
def test_fixed_point_multiplier(m):
    m0, shift = fixed_point_multiplier(m)
    assert 2**30 <= m0 < 2**31
    assert m0 * 2.0 ** -shift == pytest.approx(m, rel=1e-9)
