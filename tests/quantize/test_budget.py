"""The drift budget of `ptq quantize`: measured drift in the summary/JSON/metadata, the fallback
search finding the node INT8 breaks, exit 3 without output when the budget cannot be met, and
the default budget leaving healthy outputs unchanged."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
from ptq_cli.cli import main
from ptq_cli.drift import Thresholds
from ptq_cli.errors import UsageError
from ptq_cli.quantization.placement.budget import MEASURE_ONLY, Budget, DriftBudgetError
from ptq_cli.quantization.plan import Why
from tests.conftest import REPO, run, save_samples

CALIB = REPO / "calibration" / "digits" / "calib"


def _outlier_model() -> onnx.ModelProto:
    """x[N,8] -> MatMul pre -> Add(offset) -> MatMul fc1 -> Relu -> MatMul fc2 -> y[N,5].

    The offset gives channel 0 of the Add's output a value near 3000 that fc1 ignores (its row 0
    of weights is zero), while the answer lives in channels 1..7 (|h| ~ 1). One uint8 scale for
    the whole tensor (~12 per step) rounds those channels to nothing: fc1's input quantization
    alone destroys the output. Everything else quantizes well."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(8, 8)).astype(np.float32)
    offset = np.zeros(8, np.float32)
    offset[0] = 3000.0
    w1 = rng.normal(size=(8, 16)).astype(np.float32)
    w1[0] = 0.0
    w2 = rng.normal(size=(16, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="pre"),
             helper.make_node("Add", ["h0", "offset"], ["h"], name="shift"),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="fc1"),
             helper.make_node("Relu", ["a"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    inits = [numpy_helper.from_array(v, n) for v, n in ((w0, "w0"), (offset, "offset"), (w1, "w1"), (w2, "w2"))]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def outlier(tmp_path):
    model = _outlier_model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    return path, save_samples(tmp_path / "calib", [rng.normal(size=(1, 8)).astype(np.float32) for _ in range(24)])


def _drift(model: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in model.metadata_props}["ptq.drift"])


def _without_drift(model: onnx.ModelProto) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [p for p in copy.metadata_props if p.key != "ptq.drift"]
    del copy.metadata_props[:]
    copy.metadata_props.extend(kept)
    return copy.SerializeToString()


def test_fallback_finds_the_node_int8_breaks_and_meets_the_budget(outlier, tmp_path):
    path, data = outlier
    before = path.read_bytes()
    broken = ptq_cli.quantize(path, None, data=data, progress=False, budget=MEASURE_ONLY)
    assert _drift(broken.model)["outputs"][0]["cosine_mean"] < 0.9      # INT8 everywhere is broken
    result = ptq_cli.quantize(path, tmp_path / "out.onnx", data=data, progress=False)
    assert path.read_bytes() == before
    drift = _drift(result.model)
    # fc1 reads the broken tensor, the Add makes it (a float fc1 still reads the Add's quantized
    # output): both go back to float, and nothing else.
    assert sorted(drift["fallback"]) == ["fc1", "shift"] and drift["met"]
    assert sorted(result.recipe.exclude) == ["fc1", "shift"]
    assert {"pre", "fc2"} <= set(result.quantized) and not {"fc1", "shift"} & set(result.quantized)
    assert drift["outputs"][0]["cosine_mean"] >= 0.97 and drift["outputs"][0]["top1_agreement"] >= 0.9
    written = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(written, full_check=True)
    x = np.random.default_rng(5).normal(size=(16, 8)).astype(np.float32)
    ref, got = run(_outlier_model(), {"x": x})[0], run(written, {"x": x})[0]
    cosine = np.sum(ref * got, 1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.99
    # The recipe in the metadata reproduces the model without searching again.
    recipe = ptq_cli.Recipe.from_dict(json.loads({p.key: p.value for p in written.metadata_props}["ptq.recipe"]))
    again = ptq_cli.quantize(path, None, data=data, progress=False, recipe=recipe)
    assert again.fallback_trials == 0 and _drift(again.model)["fallback"] == []
    assert again.model.graph.SerializeToString() == written.graph.SerializeToString()


def test_budget_that_cannot_be_met_exits_3_and_writes_nothing(outlier, tmp_path):
    path, data = outlier
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(out),
                                       "--min-sqnr", "200", "-q"])
    assert result.exit_code == 3 and not out.exists()
    assert "cannot be met" in result.output and "min_sqnr" in result.output and "Traceback" not in result.output
    with pytest.raises(DriftBudgetError):
        ptq_cli.quantize(path, None, data=data, progress=False, budget=Budget(Thresholds(min_sqnr=200), where_measurable=False))
    loud = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(out),
                                     "--min-sqnr", "200", "--best-effort", "--json"])
    assert loud.exit_code == 0 and out.exists()
    assert "BEST EFFORT" in loud.output and "NOT MET" in loud.output
    doc = json.loads(loud.stdout)
    assert doc["drift"]["met"] is False and doc["drift"]["thresholds"]["min_sqnr"] == 200


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mixer", "digits_resnet"])
def test_default_budget_leaves_the_sample_models_byte_identical(name):
    model = REPO / "sample_models" / f"{name}.onnx"
    default = ptq_cli.quantize(model, None, data=CALIB, progress=False)
    unbounded = ptq_cli.quantize(model, None, data=CALIB, progress=False, budget=MEASURE_ONLY)
    drift = _drift(default.model)
    assert drift["met"] and drift["fallback"] == [] and default.recipe == ptq_cli.Recipe()
    assert _without_drift(default.model) == _without_drift(unbounded.model)
    assert default.fallback_trials == 0
    assert drift["samples"] == 100 and "100 of the 100 calibration samples (all;" in drift["data"]


def test_eval_samples_are_evenly_spaced_calibration_files_or_the_first_of_eval_data():
    from ptq_cli.quantization.placement.budget import eval_samples

    model = onnx.load(REPO / "sample_models" / "digits_cnn.onnx")
    files = sorted(CALIB.iterdir())
    spaced = eval_samples(model, CALIB, None, None, limit=32)
    picked = [i * len(files) // 32 for i in range(32)]
    assert len(spaced.feeds) == 32 and picked[:3] == [0, 3, 6]
    expected = [np.load(files[i]) for i in picked]
    assert all(np.array_equal(next(iter(f.values())), e) for f, e in zip(spaced.feeds, expected))
    assert spaced.description.startswith("32 of the 100 calibration samples (files 0, 3, 6, ...")
    first = eval_samples(model, None, CALIB, None, limit=32)
    assert all(np.array_equal(next(iter(f.values())), np.load(p)) for f, p in zip(first.feeds, files[:32]))
    assert first.description.startswith("the first 32 of 100 samples")


def test_summary_reports_the_drift_and_no_data_says_so(outlier, tmp_path):
    path, data = outlier
    shown = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(tmp_path / "a.onnx"),
                                      "--eval-data", str(data)])
    assert shown.exit_code == 0, shown.output
    assert "drift on the first 24 of 24 samples" in shown.output and "y (scores): SQNR" in shown.output
    assert "fallback: 2 node(s) returned to float" in shown.output and "fc1" in shown.output
    dynamic = CliRunner().invoke(main, ["quantize", str(path), "--dynamic", "-o", str(tmp_path / "d.onnx")])
    assert dynamic.exit_code == 0 and "drift not measured" in dynamic.output
    bad = CliRunner().invoke(main, ["quantize", str(path), "--dynamic", "--min-cosine", "0.9",
                                    "-o", str(tmp_path / "e.onnx")])
    assert bad.exit_code == 2 and not (tmp_path / "e.onnx").exists()


def test_default_budget_is_stricter_on_embeddings_and_steps_than_on_scores():
    from ptq_cli.drift.kinds import OutputKind
    from ptq_cli.drift.report import ClassReport, OutputReport

    def report(kind, cosine, agreement=None, samples=32, sequences=None):
        classes = ClassReport(10, agreement, None, 0, None, None, None, None,
                              per_step=kind is OutputKind.STEP_SCORES) if agreement is not None else None
        return OutputReport("out", (samples, 10), samples, 0, 0, 20.0, cosine, cosine, 0.1, 0.01, 0.02, (), (),
                            classes, kind=kind, sequence_agreement=sequences)

    budget = Budget()
    assert all(r.passed for r in budget.judge((report(OutputKind.SCORES, 0.98, 0.95),)))
    missed = [r for r in budget.judge((report(OutputKind.EMBEDDING, 0.98),)) if not r.passed]
    assert [r.name for r in missed] == ["min_cosine"] and "0.99" in missed[0].detail
    steps = budget.judge((report(OutputKind.STEP_SCORES, 0.995, 0.993, sequences=0.96),))
    assert [r.name for r in steps if not r.passed] == ["min_agreement"]
    assert all(r.passed for r in budget.judge((report(OutputKind.STEP_SCORES, 0.999, 0.997, sequences=0.96),)))
    # 99.7 % of steps agreeing, yet one line in ten reads differently: that misses the budget.
    steps = budget.judge((report(OutputKind.STEP_SCORES, 0.999, 0.997, sequences=0.9),))
    assert [r.name for r in steps if not r.passed] == ["min_sequence_agreement"]
    # Six samples cannot judge a per-sample agreement: one flip would cost 17 points.
    assert all(r.passed for r in budget.judge((report(OutputKind.SCORES, 0.999, 5 / 6, samples=6),)))
    assert not all(r.passed for r in Budget(Thresholds(min_agreement=0.9), by_kind=(), where_measurable=False)
                   .judge((report(OutputKind.SCORES, 0.999, 5 / 6, samples=6),)))


def _loudness_model() -> onnx.ModelProto:
    """x[1, T, 8] -> MatMul fc1 -> Relu -> MatMul fc2 -> y[1, T, 5]. Half the samples are 50x louder
    than the others: one static range per tensor, set by the loud ones, rounds the quiet ones to
    nothing, while a range measured on each sample (at run time) suits both."""
    rng = np.random.default_rng(2)
    w1 = rng.normal(size=(8, 16)).astype(np.float32)
    w2 = rng.normal(size=(16, 5)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
             helper.make_node("Relu", ["a"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "loudness", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", 5])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_fallback_quantizes_matmuls_at_run_time_before_it_leaves_them_float(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_loudness_model(), path)
    before = path.read_bytes()
    rng = np.random.default_rng(3)
    # Lengths differ, so every sample runs alone, as it will in use.
    samples = [rng.normal(size=(1, 3 + i % 5, 8)).astype(np.float32) * (50.0 if i % 2 else 1.0) for i in range(24)]
    data = save_samples(tmp_path / "calib", samples)
    broken = ptq_cli.quantize(path, None, data=data, progress=False, budget=MEASURE_ONLY)
    assert _drift(broken.model)["outputs"][0]["cosine_mean"] < 0.97

    result = ptq_cli.quantize(path, tmp_path / "out.onnx", data=data, progress=False)
    drift = _drift(result.model)
    assert drift["met"] and drift["fallback"] == [] and sorted(drift["run_time"]) == ["fc1", "fc2"]
    assert sorted(result.recipe.run_time) == ["fc1", "fc2"] and result.recipe.exclude == ()
    written = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(written, full_check=True)
    ops = [n.op_type for n in written.graph.node]
    assert ops.count("MatMulInteger") == 2 and ops.count("DynamicQuantizeLinear") == 2
    assert "QuantizeLinear" not in ops
    for x in samples:
        ref, got = run(_loudness_model(), {"x": x})[0], run(written, {"x": x})[0]
        assert np.sum(ref * got) / np.linalg.norm(ref) / np.linalg.norm(got) > 0.99
    assert path.read_bytes() == before
    # The recipe reproduces it, and a run_time that names no quantizable MatMul is refused.
    again = ptq_cli.quantize(path, tmp_path / "again.onnx", data=data, progress=False, recipe=result.recipe)
    rebuilt = onnx.load(tmp_path / "again.onnx")  # (written: every MatMul at run time is no "nothing quantized")
    assert again.fallback_trials == 0 and rebuilt.graph.SerializeToString() == written.graph.SerializeToString()
    with pytest.raises(UsageError, match="run_time names .act."):
        ptq_cli.quantize(path, None, data=data, progress=False, recipe=ptq_cli.Recipe(run_time=("act",)))



def test_the_ladder_keeps_the_fewest_units_off_int8_and_measures_each_recipe_once(monkeypatch):
    """A MatMul M that run time does not fix, ranked first: the run-time pass needs three Convs
    in float besides; the float pass finds M alone. No recipe is measured twice."""
    import types

    from ptq_cli.quantization.placement import fallback

    measured = []

    def fake_evaluate(build, probe, judge, recipe, floated=(), run_time=(), stop_early=False, workers=1):
        measured.append((tuple(sorted(recipe.exclude)), tuple(sorted(recipe.run_time))))
        ok = "M" in recipe.exclude or {"C1", "C2", "C3"} <= set(recipe.exclude)
        drift = types.SimpleNamespace(passed=ok, score=lambda: 1.0 if ok else 0.0, results=(), outputs=())
        return fallback.Trial(recipe, None, types.SimpleNamespace(quantizes_anything=True), drift, floated, run_time)

    monkeypatch.setattr(fallback, "evaluate", fake_evaluate)
    first = fallback.Trial(ptq_cli.Recipe(), None, types.SimpleNamespace(quantizes_anything=True),
                           types.SimpleNamespace(passed=False, score=lambda: 0.0))
    bar = types.SimpleNamespace(update=lambda n: None, set_postfix_str=lambda s: None)
    trials = fallback._Trials(None, None, None, first, bar, lambda: True)
    ranked = [("M",), ("C1",), ("C2",), ("C3",), ("C4",), ("C5",)]
    fallback._grow(trials, ranked, {("M",)})
    fallback._prune(trials, {("M",)})
    assert trials.passing.fallback == ("M",) and trials.passing.run_time == ()
    assert len(measured) == len(set(measured)) == trials.count - 1


def test_a_prefix_that_leaves_nothing_quantized_bounds_the_search_from_above(monkeypatch):
    """With all but the last unit in float, the glue left (a pooling reading only float nodes)
    goes float too: that candidate quantizes nothing and is no answer, but the answer lies below
    it, so the search bisects there instead of giving up (MobileNetV1 per tensor: 21 nodes in
    float, top-1 agreement 0.93, where the search had stopped at 0.89)."""
    import types

    from ptq_cli.quantization.placement import fallback

    ranked = [(f"C{i}",) for i in range(10)] + [("pool",)]

    def fake_evaluate(build, probe, judge, recipe, floated=(), run_time=(), stop_early=False, workers=1):
        k = len(recipe.exclude)
        anything = k < len(ranked) - 1  # the pool is glue: float once every Conv is
        ok = 9 <= k  # above 8, the last power of two the search tries
        drift = types.SimpleNamespace(passed=ok, score=lambda: float(k), results=(), outputs=())
        return fallback.Trial(recipe, None, types.SimpleNamespace(quantizes_anything=anything), drift, floated,
                              run_time)

    monkeypatch.setattr(fallback, "evaluate", fake_evaluate)
    first = fallback.Trial(ptq_cli.Recipe(), None, types.SimpleNamespace(quantizes_anything=True),
                           types.SimpleNamespace(passed=False, score=lambda: 0.0))
    bar = types.SimpleNamespace(update=lambda n: None, set_postfix_str=lambda s: None)
    trials = fallback._Trials(None, None, None, first, bar, lambda: True)
    fallback._grow(trials, ranked, set())
    assert trials.passing is not None and trials.passing.fallback == tuple(f"C{i}" for i in range(9))


def test_under_a_share_limit_the_passing_prefix_is_not_pruned(monkeypatch):
    """A share of the samples moves in steps: giving units back while it still holds fits the
    evaluation samples, so under such a limit the prefix found is kept whole; under cosine alone,
    or when the share is only the exact agreement of an integer output (a mask passed through),
    the unit the budget does not need goes back to INT8."""
    import types

    from ptq_cli.drift.report import ThresholdResult
    from ptq_cli.quantization.placement import fallback

    sequences = types.SimpleNamespace(classification=None, sequence_agreement=0.95)
    integers = types.SimpleNamespace(classification=None, sequence_agreement=None)
    cases = (("min_sequence_agreement", sequences, False), ("min_cosine", sequences, True),
             ("min_agreement", integers, True))
    for limit, output, pruned in cases:
        def fake_evaluate(build, probe, judge, recipe, floated=(), run_time=(), limit=limit, output=output,
                          stop_early=False, workers=1):
            ok = "A" in recipe.exclude  # only A is needed; B rides along in the prefix
            results = (ThresholdResult(limit, 0.9, 0.95 if ok else 0.5, ok, ""),)
            drift = types.SimpleNamespace(passed=ok, score=lambda: 1.0 if ok else 0.0, results=results,
                                          outputs=(output,))
            return fallback.Trial(recipe, None, types.SimpleNamespace(quantizes_anything=True), drift, floated, run_time)

        monkeypatch.setattr(fallback, "evaluate", fake_evaluate)
        first = fallback.Trial(ptq_cli.Recipe(), None, types.SimpleNamespace(quantizes_anything=True),
                               types.SimpleNamespace(passed=False, score=lambda: 0.0, results=(), outputs=()))
        bar = types.SimpleNamespace(update=lambda n: None, set_postfix_str=lambda s: None)
        trials = fallback._Trials(None, None, None, first, bar, lambda: True)
        fallback._grow(trials, [("B",), ("A",), ("C",)], set())
        fallback._prune(trials, set())
        assert trials.passing.fallback == (("A",) if pruned else ("B", "A")), limit


def test_parallel_early_stopped_remembered_searches_write_the_bytes_of_the_plain_one(outlier, tmp_path):
    """The search with one session and every sample run (best effort measures every candidate
    whole), with two sessions, and again with the fitted weights remembered from the first runs:
    the same file, byte for byte; the early stop ran fewer samples on the failing candidates."""
    from ptq_cli.quantization.arithmetic import pairs

    path, data = outlier
    pairs._FITTED.answers.clear()
    written = {}
    for name, budget in (("plain", Budget(workers=1, best_effort=True)), ("early", Budget(workers=1)),
                         ("parallel", Budget(workers=2)), ("remembered", Budget(workers=2))):
        result = ptq_cli.quantize(path, tmp_path / f"{name}.onnx", data=data, progress=False, budget=budget)
        written[name] = (tmp_path / f"{name}.onnx").read_bytes()
        trials = result.seconds["trials"]
        assert result.fallback_trials >= 2 and len(trials) == result.fallback_trials + 1
        stopped = [t for t in trials if t["samples"] < t["of"]]
        assert bool(stopped) is (name != "plain") and all(not t["passed"] for t in stopped)
    assert len(set(written.values())) == 1
    onnx.checker.check_model(onnx.load_from_string(written["plain"]), full_check=True)


def test_the_search_measures_at_most_its_trials_and_says_so(outlier, tmp_path):
    """Two candidates (the first one and one more) are too few for this model: nothing is
    written and the message says how many were measured; enough trials meet the budget."""
    path, data = outlier
    with pytest.raises(DriftBudgetError, match="best of 2 candidates"):
        ptq_cli.quantize(path, tmp_path / "out.onnx", data=data, progress=False, budget=Budget(trials=2))
    assert not (tmp_path / "out.onnx").exists()
    result = ptq_cli.quantize(path, tmp_path / "out.onnx", data=data, progress=False, budget=Budget(trials=24))
    assert _drift(result.model)["met"] and result.fallback_trials + 1 <= 24
    cli = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(tmp_path / "cli.onnx"),
                                    "--budget-trials", "2", "-q"])
    assert cli.exit_code == 3 and "best of 2 candidates" in cli.output


def _mlp(tmp_path, rng):
    """Three 32x32 MatMuls in a row, saved, with 24 calibration samples."""
    weights = [rng.normal(size=(32, 32)).astype(np.float32) for _ in range(3)]
    nodes = [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"], name=f"fc{i}") for i in range(3)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", 32])],
                              [helper.make_tensor_value_info("h3", TensorProto.FLOAT, ["N", 32])],
                              [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(weights)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    data = save_samples(tmp_path / "calib", [rng.normal(size=(1, 32)).astype(np.float32) for _ in range(24)])
    return model, path, data


def test_a_weight_only_search_sends_no_matmul_to_run_time(tmp_path):
    """Weight-only int4 that misses the budget: the search returns MatMuls to float (a recipe
    of weight-only cannot name run-time MatMuls: the search used to fail with a usage error)."""
    from ptq_cli.recipe import WeightOnly

    rng = np.random.default_rng(4)
    model, path, data = _mlp(tmp_path, rng)
    strict = Budget(Thresholds(min_sqnr=22), by_kind=(), where_measurable=False)
    result = ptq_cli.quantize(path, tmp_path / "out.onnx", data=data, progress=False, budget=strict,
                              recipe=ptq_cli.Recipe(weight_only=WeightOnly(block_size=16)))
    drift = _drift(result.model)
    assert drift["met"] and drift["fallback"] and drift["run_time"] == [] and result.recipe.run_time == ()
    assert drift["outputs"][0]["sqnr_db"] >= 22
    written = onnx.load(tmp_path / "out.onnx")
    x = rng.normal(size=(4, 32)).astype(np.float32)
    ref, got = run(model, {"h0": x})[0], run(written, {"h0": x})[0]
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) >= 20


def test_a_codebook_search_calibrates_once(tmp_path, monkeypatch):
    """--weight-codebook under a budget it misses: every trial reuses the prepared graph and the
    Gram matrices of the first calibration (a trial used to calibrate again: minutes on PP-OCRv4;
    bench/bytes.py checks the written files did not change)."""
    from ptq_cli.quantization import modes
    from ptq_cli.recipe import PerTensor, WeightCodebook

    model, path, data = _mlp(tmp_path, np.random.default_rng(4))
    before = path.read_bytes()
    calls = []
    real = modes.calibrate
    monkeypatch.setattr(modes, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    strict = Budget(Thresholds(min_sqnr=20), by_kind=(), where_measurable=False, best_effort=True)
    recipe = ptq_cli.Recipe(weight_codebook=WeightCodebook(bits=2, granularity=PerTensor()))
    result = ptq_cli.quantize(path, tmp_path / "out.onnx", data=data, progress=False, budget=strict, recipe=recipe)
    assert result.fallback_trials >= 2 and len(calls) == 1
    drift = _drift(result.model)
    assert drift["fallback"] and drift["run_time"] == [] and path.read_bytes() == before
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


def test_every_skipped_node_says_why_as_a_kind(outlier, tmp_path):
    """--json gives each node kept off static INT8 a typed "why" beside its text: the user's
    exclude, the fallback search's decision, glue between float nodes."""
    path, data = outlier
    cli = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(tmp_path / "out.onnx"),
                                    "--exclude", "fc2", "--json", "-q"])
    assert cli.exit_code == 0, cli.output
    why = {s["node"]: s["why"] for s in json.loads(cli.stdout)["skipped"]}
    assert why["fc2"] == "excluded" and why["fc1"] == "fallback" and why["shift"] == "fallback"
    assert set(why.values()) <= {w.value for w in Why}


def test_the_drift_record_is_one_object_for_summary_json_metadata_and_inspect(tmp_path):
    """quantize's summary, its --json, the file's ptq.drift metadata and `ptq inspect` render one
    DriftRecord: what a file says about itself is what the run that wrote it said."""
    from ptq_cli.drift.record import DriftRecord
    from ptq_cli.inspect.read import recorded_drift

    source = REPO / "sample_models" / "digits_cnn.onnx"
    before = source.read_bytes()
    out = tmp_path / "cnn.int8.onnx"
    run_ = CliRunner().invoke(main, ["quantize", str(source), "--data", str(CALIB), "-o", str(out), "--json"])
    assert run_.exit_code == 0, run_.output
    said = json.loads(run_.stdout)["drift"]
    written = onnx.load(out)
    record = recorded_drift(written)
    assert isinstance(record, DriftRecord) and record.to_dict() == said == _drift(written)
    assert DriftRecord.from_dict(said) == record and record.met and record.outputs[0].sqnr_db > 30
    shown = CliRunner().invoke(main, ["inspect", str(out)])
    assert shown.exit_code == 0, shown.output
    summary = CliRunner().invoke(main, ["quantize", str(source), "--data", str(CALIB), "-o", str(tmp_path / "again.onnx")])
    assert summary.exit_code == 0, summary.output
    drift_lines = [line for line in summary.output.splitlines() if line in record.lines()]
    assert drift_lines == record.lines() and all(line in shown.output for line in drift_lines)
    assert "budget min_cosine 0.97, min_agreement 0.9, embedding outputs" in summary.output  # the budget's order
    assert json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)["drift"] == said
    assert source.read_bytes() == before
