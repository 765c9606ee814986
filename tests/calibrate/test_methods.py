import numpy as np
import pytest

from ptq_cli.calibration.methods import (compute_range, entropy_range, entropy_threshold, kl_divergences,
                                       minmax_range, mse_errors, mse_range, mse_range_of, percentile_range)
from ptq_cli.calibration.observers import Histogram
from ptq_cli.errors import CalibrationError
from ptq_cli.recipe import CalibMethod, CalibrationSpec


def _hist(data, bins=512) -> Histogram:
    h = Histogram(bins)
    h.update(np.asarray(data, np.float32))
    return h


# --- entropy: a direct transcription of TensorRT's loop --------------------------------------
def _kl_brute(counts, levels):
    counts = np.asarray(counts, np.float64)
    out = []
    for i in range(levels, counts.size + 1):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        group = np.array([k * levels // i for k in range(i)])
        q = np.zeros(i)
        for j in range(levels):
            members = (group == j) & (counts[:i] > 0)
            if members.any():
                q[members] = counts[:i][group == j].sum() / members.sum()
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        if np.any(q[mask] == 0):
            out.append(np.inf)
        else:
            out.append(float(np.sum(p[mask] * np.log(p[mask] / q[mask]))))
    return np.array(out)


@pytest.mark.parametrize("seed", range(4))
def test_kl_divergences_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(rng.exponential(20, 200) * np.exp(-np.arange(200) / 40)).astype(np.int64)
    counts[rng.integers(0, 200, 15)] = 0  # empty bins inside groups
    fast, slow = kl_divergences(counts, 16), _kl_brute(counts, 16)
    assert fast.shape == slow.shape
    finite = np.isfinite(slow)
    np.testing.assert_array_equal(np.isfinite(fast), finite)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-7, atol=1e-10)
    best_slow = slow.size - 1 - int(np.argmin(slow[::-1]))
    assert entropy_threshold(np.concatenate([[counts[1]], counts[1:]]), 16) == 16 + best_slow


def test_entropy_clips_heavy_tails():
    rng = np.random.default_rng(5)
    heavy = rng.standard_t(3, 200_000)
    lo, hi = entropy_range(_hist(heavy, 2048))
    assert lo == -hi and 3 < hi < 0.5 * heavy.max()
    unsigned = np.abs(heavy)  # 256 levels; the range starts at the data's min
    lo, hi = entropy_range(_hist(unsigned, 2048))
    assert lo == pytest.approx(unsigned.min()) and 3 < hi < 0.6 * unsigned.max()


def test_entropy_keeps_the_range_when_outliers_sit_on_empty_bins():
    # TensorRT's KL is infinite when clipped outliers land on an empty last bin: nothing to clip.
    data = np.concatenate([np.random.default_rng(6).standard_normal(100_000), [60.0, -55.0]])
    assert entropy_range(_hist(data, 2048)) == (-55.0, 55.0)


# --- percentile: against the sorted data -------------------------------------------------------
@pytest.mark.parametrize("p", [99.0, 99.99, 99.999, 100.0])
def test_percentile_brackets_the_exact_quantiles(p):
    rng = np.random.default_rng(7)
    for data in (rng.standard_normal(50_001) ** 3, rng.exponential(size=30_000)):
        data = data.astype(np.float32)
        h = _hist(data)
        lo, hi = percentile_range(h, p)
        s, n = np.sort(data.astype(np.float64)), data.size
        if data.min() >= 0:
            upper_rank = int(np.ceil(p / 100 * n))
            assert lo == s[0]
        else:
            cut = (100 - p) / 200
            upper_rank = int(np.ceil((1 - cut) * n))
            true_lo = s[int(np.floor(cut * n))]
            assert true_lo - h.width <= lo <= true_lo
        true_hi = s[upper_rank - 1]
        assert true_hi <= hi <= true_hi + h.width


# --- MSE: vectorized expected error vs a loop over candidates, and vs real fake-quantization ----
def _mse_brute(h, alphas, bits):
    centres = (h.edges[:-1] + h.edges[1:]) / 2
    counts = h.counts.astype(np.float64)
    lo0, hi0 = min(h.min, 0.0), max(h.max, 0.0)
    out = []
    for a in alphas:
        lo, hi = a * lo0, a * hi0
        step = (hi - lo) / (2**bits - 1)
        err = 0.0
        for c, n in zip(centres, counts):
            err += n * ((c - hi) ** 2 if c > hi else (lo - c) ** 2 if c < lo else step**2 / 12)
        out.append(err / counts.sum())
    return np.array(out)


def test_mse_errors_match_loop():
    rng = np.random.default_rng(11)
    h = _hist(np.concatenate([rng.standard_normal(5000), rng.uniform(-8, 20, 40)]), 128)
    alphas = np.linspace(0.02, 1.0, 50)
    np.testing.assert_allclose(mse_errors(h, alphas, bits=4), _mse_brute(h, alphas, 4), rtol=1e-9)


def _fake_quant_mse(x, lo, hi, bits):
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / (2**bits - 1)
    zero = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero, 0, 2**bits - 1)
    return float(np.mean(((q - zero) * scale - x) ** 2))


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_range_is_near_the_true_optimum(bits):
    rng = np.random.default_rng(bits)
    x = np.concatenate([rng.laplace(size=20_000), [40.0, -25.0]]).astype(np.float32)
    lo, hi = mse_range(_hist(x, 1024), bits=bits)
    best = min(_fake_quant_mse(x, a * x.min(), a * x.max(), bits) for a in np.linspace(0.01, 1, 400))
    assert _fake_quant_mse(x, lo, hi, bits) <= 1.1 * best
    assert _fake_quant_mse(x, lo, hi, bits) < _fake_quant_mse(x, x.min(), x.max(), bits)


def test_mse_for_weights_is_symmetric():
    w = np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32)
    lo, hi = mse_range_of(w, bits=8)
    assert lo == -hi and 0 < hi <= np.abs(w).max()


def test_minmax_and_dispatch():
    h = _hist([-1.0, 2.0, 0.5])
    assert minmax_range(-1.0, 2.0) == (-1.0, 2.0)
    assert compute_range(CalibrationSpec(method=CalibMethod.MINMAX), -1.0, 2.0, None) == (-1.0, 2.0)
    with pytest.raises(CalibrationError, match="needs histograms"):
        compute_range(CalibrationSpec(method=CalibMethod.ENTROPY), -1.0, 2.0, None)
    for method in CalibMethod:
        lo, hi = compute_range(CalibrationSpec(method=method), -1.0, 2.0, h)
        assert -1.0 <= lo <= 0.0 < hi <= 2.0


def test_constant_zero_tensor_gets_its_range():
    h = _hist(np.zeros(10))
    for method in CalibMethod:
        assert compute_range(CalibrationSpec(method=method), 0.0, 0.0, h) == (0.0, 0.0)
