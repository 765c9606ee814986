"""DriftProbe's early stop: a candidate stops running samples once it can no longer pass, and only
then. Every verdict equals the full measurement's; a passing or borderline candidate runs every
sample."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.drift.probe import DriftProbe
from ptq_cli.drift.thresholds import Thresholds, evaluate
from tests.conftest import make_model

CLASSES = 10
SAMPLES = 100


def scores_model(permutation) -> onnx.ModelProto:
    """Softmax(x @ P), batch fixed at 1: P permutes the classes, so a candidate whose P swaps two
    classes disagrees with the identity on exactly the samples whose best class is one of them."""
    matrix = np.eye(CLASSES, dtype=np.float32)[:, permutation]
    return make_model(
        [helper.make_node("MatMul", ["x", "P"], ["logits"]), helper.make_node("Softmax", ["logits"], ["y"], axis=1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CLASSES])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CLASSES])],
        [numpy_helper.from_array(matrix, "P")])


def samples_with_best(classes) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    feeds = []
    for best in classes:
        x = rng.uniform(0, 1, size=(1, CLASSES)).astype(np.float32)
        x[0, best] = 3.0
        feeds.append({"x": x})
    return feeds


SWAP_0_1 = [1, 0, *range(2, CLASSES)]
judge = lambda outputs: evaluate(Thresholds(min_agreement=0.9), outputs)  # noqa: E731


@pytest.mark.parametrize("case, first_classes, expect_passed, expect_samples", [
    ("clear fail: every early sample disagrees", [0] * 30, False, 11),
    ("clear pass: no sample disagrees", [5] * 30, True, SAMPLES),
    ("borderline pass: 10 disagree, at the end", [5] * 90 + [0] * 10, True, SAMPLES),
    ("borderline fail: the 11th disagreement is the last sample", [5] * 89 + [0] * 11, False, SAMPLES),
])
def test_a_candidate_stops_only_once_it_cannot_pass(case, first_classes, expect_passed, expect_samples):
    classes = (first_classes + [5] * SAMPLES)[:SAMPLES]
    reference = scores_model(list(range(CLASSES)))
    candidate = scores_model(SWAP_0_1)
    before = candidate.SerializeToString()
    probe = DriftProbe(reference, samples_with_best(classes), description="test", batch_free=False)
    full = probe.measure(candidate, judge)
    early = probe.measure(candidate, judge, stop_early=True)
    assert full.passed is early.passed is expect_passed, case
    assert [r.passed for r in full.results] == [r.passed for r in early.results]
    assert early.samples == expect_samples and early.complete is (expect_samples == SAMPLES)
    assert full.samples == SAMPLES and full.complete
    if early.complete:  # the same figures, not only the same verdict
        assert early.outputs == full.outputs
    else:  # the bound it failed on is above the full measurement's figure
        assert early.results[0].value >= full.results[0].value
    assert candidate.SerializeToString() == before


def step_scores_model(weight: np.ndarray) -> onnx.ModelProto:
    """[1, T, F] -> Softmax([1, T, F] @ W) over C classes: a CTC-like head."""
    steps, features = 6, weight.shape[0]
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["y"], axis=-1)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, steps, weight.shape[1]])],
        [numpy_helper.from_array(weight, "W")])


@pytest.mark.parametrize("noise", [0.0, 0.05, 0.3, 1.0, 3.0])
@pytest.mark.parametrize("thresholds", [Thresholds(min_sqnr=20), Thresholds(min_cosine=0.99),
                                        Thresholds(min_agreement=0.98, min_sequence_agreement=0.9),
                                        Thresholds(max_top1_drop=2.0)])
def test_stopping_early_gives_the_full_verdict_on_every_limit(noise, thresholds):
    """Candidates from exact to broken, every kind of limit: the verdict never changes, and the
    best case a stopped candidate failed on lies above its full figure."""
    rng = np.random.default_rng(11)
    weight = rng.normal(size=(8, 5)).astype(np.float32)
    candidate_weight = (weight + noise * rng.normal(size=weight.shape)).astype(np.float32)
    feeds = [{"x": rng.normal(size=(1, 6, 8)).astype(np.float32)} for _ in range(40)]
    probe = DriftProbe(step_scores_model(weight), feeds, description="test", batch_free=False)
    candidate = step_scores_model(candidate_weight)
    check = lambda outputs: evaluate(thresholds, outputs)  # noqa: E731
    full = probe.measure(candidate, check)
    early = probe.measure(candidate, check, stop_early=True)
    assert early.passed == full.passed
    assert early.complete or not early.passed
    for bound, result in zip(early.results, full.results):
        assert bound.name == result.name
        if not early.complete and result.value is not None:
            higher_is_better = bound.name != "max_top1_drop"
            assert (bound.value >= result.value) if higher_is_better else (bound.value <= result.value)


def test_labels_turn_the_early_stop_off():
    """With labels the candidate may beat the reference on a sample: no bound, no stop."""
    reference = scores_model(list(range(CLASSES)))
    classes = [0] * 30 + [5] * 70
    probe = DriftProbe(reference, samples_with_best(classes), description="test", batch_free=False,
                       labels=[(c,) for c in classes])
    drift = probe.measure(scores_model(SWAP_0_1), judge, stop_early=True)
    assert drift.complete and drift.samples == SAMPLES and not drift.passed


def test_samples_that_disagreed_run_first_and_the_figures_do_not_depend_on_the_order():
    """A failing candidate reorders the probe (its disagreeing samples first): the next failing
    one stops sooner, and a passing one gets the very figures of a probe never reordered."""
    classes = [5] * 60 + [0] * 40  # the disagreements of SWAP_0_1 come last
    reference = scores_model(list(range(CLASSES)))
    probe = DriftProbe(reference, samples_with_best(classes), description="test", batch_free=False)
    first = probe.measure(scores_model(SWAP_0_1), judge, stop_early=True)
    assert not first.passed and first.samples == 71  # 60 agreeing samples, then 11 that do not
    again = probe.measure(scores_model(SWAP_0_1), judge, stop_early=True)
    assert not again.passed and again.samples == 11
    swap_2_3 = [0, 1, 3, 2, *range(4, CLASSES)]  # disagrees on no sample: passes
    reordered = probe.measure(scores_model(swap_2_3), judge, stop_early=True)
    fresh = DriftProbe(reference, samples_with_best(classes), description="test", batch_free=False)
    assert reordered.passed and reordered.outputs == fresh.measure(scores_model(swap_2_3), judge).outputs


def test_a_miss_never_reads_as_the_limit_itself():
    """0.99596 against 0.996 used to print "worst ... 0.996 ... < 0.996"; a pass keeps 4 digits."""
    import types

    from ptq_cli.drift.thresholds import _worst_share

    def share(value):
        out = types.SimpleNamespace(name="y", top1_agreement=value)
        return _worst_share("min_agreement", 0.996, (out,), lambda o: o.top1_agreement, "agreement", "none")

    assert "agreement 0.99596 on output 'y' < 0.996" in share(0.99596).detail
    assert "agreement 0.9961 on output 'y' >= 0.996" in share(0.996123).detail
