import copy
import math

import numpy as np
import onnx
import pytest

from ptq_cli.comparison import CompareReport, Thresholds, compare
from ptq_cli.errors import ModelError, UsageError
from tests.compare.models import mlp, two_in_two_out


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def write_npz(folder, rng, files=5, rows=2, negative=True):
    folder.mkdir()
    arrays = []
    for i in range(files):
        a = rng.normal(size=(rows, 3)).astype(np.float32)
        if not negative:
            a = np.abs(a)
        b = rng.normal(size=(rows, 3)).astype(np.float32)
        np.savez(folder / f"{i:03d}.npz", a=a, b=b)
        arrays.append((a, b))
    return arrays


def test_several_inputs_and_outputs_against_numpy(tmp_path, rng):
    ref = two_in_two_out(rng)
    cand = two_in_two_out(rng, noise=0.01)
    arrays = write_npz(tmp_path / "data", rng)
    before = copy.deepcopy(ref)
    report = compare(ref, cand, tmp_path / "data", batch_size=3, progress=False)
    assert isinstance(report, CompareReport) and report.samples == 10
    outs = {o.name: o for o in report.outputs}
    assert set(outs) == {"s", "p"}
    s_ref = np.concatenate([a + b for a, b in arrays]).astype(np.float64)
    assert outs["s"].sqnr_db == pytest.approx(10 * np.log10(np.sum(s_ref**2) / (s_ref.size * 0.01**2)), rel=1e-3)
    assert outs["s"].max_abs_error == pytest.approx(0.01, rel=1e-3)
    assert outs["s"].classification is not None and outs["s"].classification.classes == 3
    assert outs["p"].exact and outs["p"].classification is None   # [N,1] is not a classifier
    assert outs["s"].classification.top1_agreement == 1.0
    assert ref == before


def test_nan_in_candidate_is_reported_and_fails_thresholds(tmp_path, rng):
    arrays = write_npz(tmp_path / "data", rng)
    bad_rows = sum(int((a < 0).any(axis=1).sum()) for a, _ in arrays)
    assert 0 < bad_rows < 10
    report = compare(two_in_two_out(rng), two_in_two_out(rng, nan_branch=True), tmp_path / "data",
                     thresholds=Thresholds(min_sqnr=10, min_cosine=0.9, max_top1_drop=100), progress=False)
    s = next(o for o in report.outputs if o.name == "s")
    assert s.nonfinite_candidate == bad_rows and s.samples == 10 - bad_rows
    assert s.exact            # the finite rows are identical: NaN rows were not averaged in
    assert s.classification.top1_agreement == pytest.approx((10 - bad_rows) / 10)
    failed = {t.name for t in report.thresholds if not t.passed}
    assert failed == {"min_sqnr", "min_cosine"}
    assert any("NaN/Inf" in f for f in report.failures)
    assert any("NaN" in n for n in report.notes)
    assert report.to_dict()["outputs"][0]["sqnr_db"] is None


def test_thresholds_pass_and_fail_on_labels(tmp_path, rng):
    write_npz(tmp_path / "data", rng)
    labels = tmp_path / "labels.txt"
    labels.write_text(" ".join(str(i % 3) for i in range(10)))
    report = compare(two_in_two_out(rng), two_in_two_out(rng, noise=0.01), tmp_path / "data", labels=labels,
                     thresholds=Thresholds(min_sqnr=1000, max_top1_drop=0.0, min_cosine=0.5), progress=False)
    by = {t.name: t for t in report.thresholds}
    assert not by["min_sqnr"].passed and "< 1000 dB" in by["min_sqnr"].detail
    assert by["max_top1_drop"].passed and "vs labels" in by["max_top1_drop"].detail
    assert by["min_cosine"].passed
    assert report.failures == (f"min_sqnr: {by['min_sqnr'].detail}",) and report.exit_code == 1
    cls = report.outputs[0].classification
    assert cls.labelled == 10 and cls.reference_top1 == cls.candidate_top1


def test_top1_threshold_without_a_classifier_is_a_miss(tmp_path, rng):
    x = rng.normal(size=(4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    model = mlp(rng, classes=1)
    report = compare(model, model, tmp_path / "x.npy", thresholds=Thresholds(max_top1_drop=1), progress=False)
    assert not report.passed and "no classification-like output" in report.failures[0]


@pytest.mark.parametrize("change, message", [
    (lambda m: setattr(m.graph.input[1], "name", "c"), "inputs differ"),
    (lambda m: m.graph.input[0].type.tensor_type.shape.dim[1].__setattr__("dim_value", 4), "input 'a' differs"),
    (lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", onnx.TensorProto.DOUBLE), "input 'a' differs"),
])
def test_models_with_different_inputs_are_refused(tmp_path, rng, change, message):
    write_npz(tmp_path / "data", rng)
    cand = two_in_two_out(rng)
    change(cand)
    with pytest.raises(UsageError, match=message):
        compare(two_in_two_out(rng), cand, tmp_path / "data", progress=False)


def test_outputs_missing_from_the_candidate_are_refused(tmp_path, rng):
    write_npz(tmp_path / "data", rng)
    cand = two_in_two_out(rng)
    cand.graph.output.pop()
    with pytest.raises(ModelError, match="no output named 'p'"):
        compare(two_in_two_out(rng), cand, tmp_path / "data", progress=False)


def test_latency_reports_both_models(tmp_path, rng):
    x = rng.normal(size=(6, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    from ptq_cli.comparison import LatencySettings
    report = compare(mlp(rng), mlp(rng), tmp_path / "x.npy", latency=True, batch_size=2, progress=False,
                     latency_settings=LatencySettings(warmup=1, runs=6))
    lat = report.latency
    assert lat.runs == 6 and lat.inputs == 3
    assert 0 < lat.reference.p10_ms <= lat.reference.median_ms <= lat.reference.p90_ms
    assert math.isfinite(lat.speedup) and lat.speedup > 0


def test_bad_arguments_are_usage_errors(tmp_path, rng):
    np.save(tmp_path / "x.npy", rng.normal(size=(2, 4)).astype(np.float32))
    with pytest.raises(UsageError, match="batch size"):
        compare(mlp(rng), mlp(rng), tmp_path / "x.npy", batch_size=0)
    with pytest.raises(UsageError, match="min_cosine"):
        Thresholds(min_cosine=2.0)
