import math

import numpy as np
import pytest

from ptq_cli.drift.metrics import (ClassAccumulator, ErrorAccumulator, SqnrAccumulator, as_rows, hist_edges, rank_of,
                                     is_classification, sqnr_db)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_error_metrics_match_numpy_over_several_batches(rng):
    ref = rng.normal(size=(10, 7))
    cand = ref + rng.normal(scale=0.05, size=ref.shape)
    acc = ErrorAccumulator()
    for start in (0, 3, 4, 9):  # uneven batches must give the same figures as one pass
        stop = {0: 3, 3: 4, 4: 9, 9: 10}[start]
        acc.update(ref[start:stop], cand[start:stop])
    s = acc.summary()
    err = ref - cand
    cos = [np.dot(r, c) / (np.linalg.norm(r) * np.linalg.norm(c)) for r, c in zip(ref, cand)]
    assert s.samples == 10 and s.nonfinite_candidate == 0
    assert s.sqnr_db == pytest.approx(10 * np.log10(np.sum(ref**2) / np.sum(err**2)))
    assert s.cosine_mean == pytest.approx(np.mean(cos))
    assert s.cosine_min == pytest.approx(np.min(cos))
    assert s.max_abs == pytest.approx(np.abs(err).max())
    assert s.mean_abs == pytest.approx(np.abs(err).mean())
    assert s.rmse == pytest.approx(np.sqrt(np.mean(err**2)))
    assert sum(s.hist_counts) == err.size


def test_nan_and_inf_rows_are_counted_not_averaged(rng):
    ref = rng.normal(size=(6, 4))
    cand = ref + 0.1
    cand[1, 2] = np.nan
    cand[4, 0] = np.inf
    acc = ErrorAccumulator()
    acc.update(ref, cand)
    s = acc.summary()
    keep = [0, 2, 3, 5]
    err = ref[keep] - cand[keep]
    assert s.nonfinite_candidate == 2 and s.samples == 4
    assert s.rmse == pytest.approx(0.1)
    assert s.sqnr_db == pytest.approx(10 * np.log10(np.sum(ref[keep] ** 2) / np.sum(err**2)))
    assert math.isfinite(s.cosine_mean)


def test_identical_outputs_give_infinite_sqnr_and_cosine_one():
    ref = np.arange(12.0).reshape(3, 4)
    acc = ErrorAccumulator()
    acc.update(ref, ref.copy())
    s = acc.summary()
    assert s.sqnr_db == math.inf and s.max_abs == 0.0 and s.cosine_mean == pytest.approx(1.0)
    assert s.hist_counts[0] == 12  # exact zeros land in the first bin


def test_sqnr_edge_cases_and_cosine_of_zero_rows():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert math.isnan(sqnr_db(0.0, 0.0))
    assert sqnr_db(0.0, 1.0) == -math.inf
    acc = ErrorAccumulator()
    acc.update(np.zeros((2, 3)), np.array([[0.0, 0, 0], [1.0, 0, 0]]))
    s = acc.summary()
    assert s.cosine_min == 0.0 and s.cosine_mean == pytest.approx(0.5)  # zero vs zero is 1


def test_histogram_bins_cover_tiny_and_huge_errors():
    acc = ErrorAccumulator()
    acc.update(np.zeros((1, 3)), np.array([[1e-12, 0.3, 1e9]]))
    counts = acc.summary().hist_counts
    edges = hist_edges()
    assert counts[0] == 1 and counts[-1] == 1 and sum(counts) == 3
    assert counts[int(np.searchsorted(edges, np.log10(0.3), side="right")) - 1] == 1


def test_top_k_agreement_and_accuracy_by_hand():
    ref = np.array([[0.1, 0.9, 0, 0, 0, 0, 0],    # ref top1 1
                    [0.8, 0.1, 0, 0, 0, 0, 0.05],  # ref top1 0
                    [0, 0, 0.7, 0.2, 0, 0, 0]])    # ref top1 2
    cand = np.array([[0.2, 0.7, 0, 0, 0, 0, 0],    # agrees
                     [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],  # top1 6; top5 = 6,5,4,3,2 (no 0)
                     [0, 0, 0.3, 0.6, 0, 0, 0]])   # top1 3, ref's 2 in top5
    labels = [1, 1, 3]
    acc = ClassAccumulator(7)
    acc.update(ref, cand, labels)
    s = acc.summary()
    assert s.top1_agreement == pytest.approx(1 / 3)
    assert s.top5_agreement == pytest.approx(2 / 3)
    assert s.reference_top1 == pytest.approx(1 / 3)   # only row 0
    assert s.candidate_top1 == pytest.approx(2 / 3)   # rows 0 and 2
    assert s.labelled == 3


def test_nan_prediction_is_a_miss_and_top5_needs_more_than_five_classes():
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    cand = np.array([[np.nan, 0.0], [0.0, 1.0]])
    acc = ClassAccumulator(2)
    acc.update(ref, cand, [0, 1])
    s = acc.summary()
    assert s.top1_agreement == 0.5 and s.candidate_top1 == 0.5 and s.reference_top1 == 1.0
    assert s.top5_agreement is None and s.candidate_top5 is None


def test_rows_and_classification_shape_rules():
    assert as_rows(np.zeros((4, 2, 3)), 4).shape == (4, 6)
    assert as_rows(np.zeros(()), 4).shape == (1, 1)      # no batch axis: one row
    assert is_classification((8, 10)) and not is_classification((8, 1))
    assert not is_classification((8, 10, 2))


def test_sqnr_accumulator_agrees_with_the_full_one_and_counts_nonfinite_rows(rng):
    """The lean per-layer accumulator: float32 tensors of any rank, float64 sums."""
    ref = rng.normal(size=(6, 3, 5, 5)).astype(np.float32)
    cand = ref + rng.normal(scale=0.03, size=ref.shape).astype(np.float32)
    cand[2, 1, 0, 0] = np.nan
    ref_bad = ref.copy()
    ref_bad[5, 0, 0, 0] = np.inf   # left out, and not blamed on the candidate
    lean, full = SqnrAccumulator(), ErrorAccumulator()
    for start in (0, 4):
        lean.update(ref_bad[start:start + 4], cand[start:start + 4], len(ref_bad[start:start + 4]))
        full.update(as_rows(ref_bad[start:start + 4], 4 if start == 0 else 2),
                    as_rows(cand[start:start + 4], 4 if start == 0 else 2))
    got, want = lean.summary(), full.summary()
    assert (got.samples, got.nonfinite_candidate) == (4, 1) == (want.samples, want.nonfinite_candidate)
    assert got.sqnr_db == pytest.approx(want.sqnr_db, rel=1e-9)
    unbatched = SqnrAccumulator()
    unbatched.update(ref[0], cand[0], 7)   # no batch axis: one row
    assert unbatched.summary().samples == 1


def _sorted_top(scores: np.ndarray, k: int) -> np.ndarray:
    """The definition rank_of replaces: a stable descending sort, ties by lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("classes", [3, 6, 50])
def test_rank_of_places_a_class_where_a_stable_descending_sort_does(rng, classes):
    # Few distinct values, so that ties are everywhere; -inf and the largest float at the edges.
    scores = rng.integers(0, 4, size=(400, classes)).astype(np.float64)
    scores[::7, 0] = -np.inf
    scores[::11, -1] = np.finfo(np.float64).max
    wanted = rng.integers(0, classes, size=400)
    order = np.argsort(-scores, axis=1, kind="stable")
    expected = np.argmax(order == wanted[:, None], axis=1)
    np.testing.assert_array_equal(rank_of(scores, wanted), expected)
    np.testing.assert_array_equal(scores.argmax(axis=1), _sorted_top(scores, 1)[:, 0])


def test_class_figures_with_ties_and_nan_equal_those_of_a_sort(rng):
    ref = rng.integers(0, 3, size=(300, 8)).astype(np.float32)
    cand = rng.integers(0, 3, size=(300, 8)).astype(np.float32)
    cand[::13, 2] = np.nan
    labels = [int(v) if i % 5 else None for i, v in enumerate(rng.integers(0, 8, size=300))]
    acc = ClassAccumulator(8)
    acc.update(ref[:170].astype(np.float64), cand[:170].astype(np.float64), labels[:170])
    acc.update(ref[170:].astype(np.float64), cand[170:].astype(np.float64), labels[170:])
    r_top = _sorted_top(np.nan_to_num(ref, nan=-np.inf), 5)
    c_top = _sorted_top(np.nan_to_num(cand, nan=-np.inf), 5)
    bad = ~np.isfinite(cand).all(axis=1)
    known = np.array([label is not None for label in labels])
    truth = np.array([label if label is not None else -1 for label in labels])
    got = acc.summary()
    assert got.top1_agreement == ((r_top[:, 0] == c_top[:, 0]) & ~bad).mean()
    assert got.top5_agreement == ((c_top == r_top[:, :1]).any(axis=1) & ~bad).mean()
    assert got.reference_top1 == (r_top[known, 0] == truth[known]).mean()
    assert got.reference_top5 == (r_top[known] == truth[known, None]).any(axis=1).mean()
    assert got.candidate_top1 == ((c_top[:, 0] == truth) & ~bad)[known].mean()
    assert got.candidate_top5 == ((c_top == truth[:, None]).any(axis=1) & ~bad)[known].mean()
