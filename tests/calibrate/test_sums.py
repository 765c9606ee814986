"""PairSum: a float64 sum whose value does not depend on how its terms were grouped."""

import math

import numpy as np
import pytest

from ptq_cli.calibration.sums import PairSum


def _terms(rng, count=400, width=16):
    scales = 10.0 ** rng.integers(-8, 9, size=(count, 1))
    return rng.standard_normal((count, width)) * scales


@pytest.mark.parametrize("seed", range(5))
def test_any_grouping_gives_the_correctly_rounded_sum(seed):
    rng = np.random.default_rng(seed)
    terms = _terms(rng)
    exact = np.array([math.fsum(column) for column in terms.T])
    sequential = PairSum()
    for t in terms:
        sequential.add(t)
    np.testing.assert_array_equal(sequential.value, exact)
    plain_differs = False
    for _ in range(20):
        cuts = np.sort(rng.choice(np.arange(1, len(terms)), size=rng.integers(1, 8), replace=False))
        total, plain = PairSum(), np.zeros(terms.shape[1])
        for group in np.split(terms, cuts):
            part, subtotal = PairSum(), np.zeros(terms.shape[1])
            for t in group:
                part.add(t)
                subtotal = subtotal + t
            total.merge(part.copy())
            plain = plain + subtotal
        np.testing.assert_array_equal(total.value, exact)
        plain_differs |= not np.array_equal(plain, np.sum(terms, axis=0))
    assert plain_differs  # the terms are hard enough that plain float64 subtotals do differ


def test_shapes_must_agree_and_an_empty_sum_has_no_value():
    empty = PairSum()
    assert empty.value is None
    empty.merge(PairSum())
    assert empty.value is None
    total = PairSum()
    total.add(np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        total.add(np.ones(4))
