import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptq_cli.calibration.observers import (Histogram, MinMax, MovingAverageMinMax, PerChannelMinMax,
                                         grid_exponent)


def _same(a: Histogram, b: Histogram) -> None:
    assert (a.exp, a.lo, a.min, a.max) == (b.exp, b.lo, b.min, b.max)
    np.testing.assert_array_equal(a.counts, b.counts)


def _batches(rng, n=6):
    # Growing and shrinking scales force several re-binnings, on both sides of 0.
    scales = [0.01, 1.0, 0.5, 30.0, 2.0, 500.0][:n]
    return [(rng.standard_normal(257) * s + rng.uniform(-s, s)).astype(np.float32) for s in scales]


def test_streaming_histogram_equals_histogram_of_concatenated_data():
    rng = np.random.default_rng(0)
    batches = _batches(rng)
    streamed = Histogram(128)
    for b in batches:
        streamed.update(b)
    everything = np.concatenate(batches)
    whole = Histogram(128)
    whole.update(everything)
    _same(streamed, whole)
    # and it is the plain histogram of the data on its own edges
    expected, _ = np.histogram(everything.astype(np.float64), bins=streamed.edges)
    np.testing.assert_array_equal(streamed.counts, expected)
    assert streamed.total == everything.size
    assert 64 <= streamed.counts.size <= 128
    assert streamed.edges[0] <= everything.min() and everything.max() < streamed.edges[-1]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=20), min_size=1, max_size=6),
       st.integers(16, 64))
def test_streaming_is_order_independent_and_exact(chunks, bins):
    arrays = [np.array(c, dtype=np.float32) for c in chunks]
    forward, backward, whole = Histogram(bins), Histogram(bins), Histogram(bins)
    for a in arrays:
        forward.update(a)
    for a in reversed(arrays):
        backward.update(a)
    whole.update(np.concatenate(arrays))
    _same(forward, whole)
    _same(backward, whole)
    if whole.exp is not None:
        expected, _ = np.histogram(np.concatenate(arrays).astype(np.float64), bins=whole.edges)
        np.testing.assert_array_equal(whole.counts, expected)


def test_zeros_first_then_values_rebin_exactly():
    h = Histogram(32)
    h.update(np.zeros(10, np.float32))
    assert h.exp is None and h.counts.tolist() == [10]
    h.update(np.array([-1.5, 0.25, 3.0], np.float32))
    whole = Histogram(32)
    whole.update(np.array([0] * 10 + [-1.5, 0.25, 3.0], np.float32))
    _same(h, whole)


def test_merge_of_shards_equals_single_run():
    rng = np.random.default_rng(1)
    batches = _batches(rng)
    single, a, b = Histogram(256), Histogram(256), Histogram(256)
    for i, batch in enumerate(batches):
        single.update(batch)
        (a if i % 2 == 0 else b).update(batch)
    a.merge(b)
    _same(a, single)


def test_grid_exponent_is_monotone_and_fits():
    rng = np.random.default_rng(2)
    for _ in range(200):
        mn, mx = sorted(rng.standard_normal(2) * 10 ** rng.uniform(-6, 6))
        e = grid_exponent(mn, mx, 100)
        assert math.floor(mx / 2.0**e) - math.floor(mn / 2.0**e) + 1 <= 100
        assert grid_exponent(mn * 2, mx * 2, 100) >= e


def test_folded_counts_absolute_values():
    # |x| of a negative value lying exactly on an edge lands one bin lower; keep off the edges.
    data = np.array([-2.3, -0.4, 0.0, 0.6, 1.7, 2.2, 3.6], np.float32)
    h = Histogram(16)
    h.update(data)
    folded = h.folded()
    expected, _ = np.histogram(np.abs(data), bins=np.arange(folded.size + 1) * h.width)
    np.testing.assert_array_equal(folded, expected)


def test_minmax_ema_per_channel_merge_and_round_trip():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    mm, ema, pc = MinMax(), MovingAverageMinMax(0.5), PerChannelMinMax(axis=1)
    for obs in (mm, ema, pc):
        obs.update(x[:2])
        obs.update(x[2:])
    assert (mm.min, mm.max) == (float(x.min()), float(x.max()))
    first, second = x[:2], x[2:]
    assert ema.min == pytest.approx(first.min() + 0.5 * (second.min() - first.min()))
    np.testing.assert_array_equal(pc.min, x.min(axis=(0, 2)))
    np.testing.assert_array_equal(pc.max, x.max(axis=(0, 2)))
    for obs in (mm, ema, pc):
        back = type(obs).from_dict(obs.to_dict())
        assert back.to_dict() == obs.to_dict()
    other = MinMax()
    other.update(np.array([100.0], np.float32))
    mm.merge(other)
    assert mm.max == 100.0 and mm.min == float(x.min())
