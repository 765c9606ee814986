"""Latency-aware placement with an injected machine (a cost table): what is chosen, what is
recorded, what is reproduced, and that nothing slower than FP32 is written by default."""

from __future__ import annotations

import importlib
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import ptq_cli
from ptq_cli.cli import main
from ptq_cli.quantization.placement.latency import IfSlower, Objective, SlowerThanFloat
from tests.conftest import run
from tests.latency.machines import MOBILE_TABLE, TableMachine, mobile_cnn


@pytest.fixture
def model_and_data(rng, tmp_path):
    model = mobile_cnn(rng)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    data = tmp_path / "calib"
    data.mkdir()
    for i in range(8):
        np.save(data / f"{i}.npy", rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32))
    return path, data


def _conv_inputs_dequantized(model: onnx.ModelProto) -> dict[str, bool]:
    producer = {o: n for n in model.graph.node for o in n.output}
    return {n.name: n.input[0] in producer and producer[n.input[0]].op_type == "DequantizeLinear"
            for n in model.graph.node if n.op_type == "Conv"}


def test_speed_keeps_the_slow_stem_in_float_and_records_it(model_and_data, tmp_path):
    path, data = model_and_data
    before = path.read_bytes()
    machine = TableMachine(MOBILE_TABLE)
    result = ptq_cli.quantize(path, tmp_path / "fast.onnx", data=data, objective=Objective.SPEED,
                              machine=machine, progress=False)
    assert result.recipe.exclude == ("stem", "dw")
    assert {s.node: s.reason for s in result.skipped if s.op_type == "Conv"} == dict.fromkeys(
        ("stem", "dw"), "kept in float by --objective speed: faster in FP32 on this machine")
    assert result.latency.speedup == pytest.approx(105.0 / 63.0)
    trials = [t.float_nodes for t in result.latency.trials]
    assert trials[0] == () and ("stem", "dw") in trials and ("stem",) in trials and len(trials) == 4
    assert machine.timed == [5]  # FP32, the full INT8 and three prefixes, in one interleaved measurement
    written = onnx.load(str(tmp_path / "fast.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert _conv_inputs_dequantized(written) == {"stem": False, "dw": False, "pw": True, "pw2": True}
    meta = {p.key: p.value for p in written.metadata_props}
    assert json.loads(meta["ptq.recipe"])["exclude"] == ["stem", "dw"]
    assert path.read_bytes() == before
    x = np.load(data / "0.npy")
    fp32, int8 = run(onnx.load(str(path)), {"x": x})[0], run(written, {"x": x})[0]
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.99
    # The recorded recipe reproduces the model without timing anything.
    again = ptq_cli.quantize(path, tmp_path / "again.onnx", data=data, recipe=result.recipe, progress=False)
    assert again.latency is None
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "fast.onnx").read_bytes()


def test_the_prefix_runs_float_and_the_rest_integer_in_onnxruntime(model_and_data, tmp_path):
    path, data = model_and_data
    result = ptq_cli.quantize(path, None, data=data, objective=Objective.SPEED,
                              machine=TableMachine(MOBILE_TABLE), progress=False)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(result.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert optimized.count("QLinearConv") == 2  # pw, pw2: onnxruntime did not re-quantize the stem
    assert sum(op in ("Conv", "FusedConv") for op in optimized) == 2  # stem, dw
    assert "QGemm" in optimized


def test_a_slower_int8_model_is_written_only_as_asked(model_and_data, tmp_path):
    path, data = model_and_data
    slow = {name: (fp32, fp32 * 2) for name, (fp32, _) in MOBILE_TABLE.items()}
    out = tmp_path / "out.onnx"
    with pytest.raises(SlowerThanFloat, match="INT8 does not pay on this machine") as info:
        ptq_cli.quantize(path, out, data=data, objective=Objective.SPEED, machine=TableMachine(slow),
                         if_slower=IfSlower.FAIL, progress=False)
    assert info.value.exit_code == 1 and not out.exists()
    # the inputs timed on are named: synthetic ones (a --calibration table, no --data) can mislead
    assert info.value.decision.timed_on and f"timed on {info.value.decision.timed_on});" in str(info.value)
    result = ptq_cli.quantize(path, out, data=data, objective=Objective.SPEED, machine=TableMachine(slow),
                              if_slower=IfSlower.FLOAT, progress=False)
    assert result.float_written and onnx.load(str(out)).graph == onnx.load(str(path)).graph
    result = ptq_cli.quantize(path, out, data=data, objective=Objective.SPEED, machine=TableMachine(slow),
                              if_slower=IfSlower.INT8, force=True, progress=False)
    assert not result.float_written and not result.latency.pays
    assert result.recipe.exclude == () and not any(s.op_type == "Conv" for s in result.skipped)  # all of it
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)


def test_a_tie_goes_to_the_placement_with_fewer_float_nodes(model_and_data):
    path, data = model_and_data
    even = dict(MOBILE_TABLE, stem=(10.0, 10.0), dw=(10.0, 10.5))  # the prefixes save 0 and 0.5 µs
    result = ptq_cli.quantize(path, None, data=data, objective=Objective.SPEED, machine=TableMachine(even),
                              progress=False)
    assert result.recipe.exclude == () and result.latency.pays


def test_cli_speed_summary_and_exit_status(model_and_data, tmp_path, monkeypatch):
    path, data = model_and_data
    table = {"value": MOBILE_TABLE}
    api = importlib.import_module("ptq_cli.quantization.api")
    monkeypatch.setattr(api, "OnnxruntimeMachine", lambda: TableMachine(table["value"]))
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(out),
                                       "--objective", "speed"])
    assert result.exit_code == 0, result.output
    assert "FP32 0.105 ms, INT8 0.063 ms, 1.67x (median of the per-round ratios)" in result.stderr
    assert "kept in float for speed" in result.stderr and "stem, dw" in result.stderr
    table["value"] = {name: (fp32, fp32 * 2) for name, (fp32, _) in MOBILE_TABLE.items()}
    result = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(out), "--force",
                                       "--objective", "speed"])
    assert result.exit_code == 0, result.output  # by default the INT8 model is written, with a warning
    assert "warning: INT8 is slower than FP32 on this machine (" in result.stderr and "written anyway" in result.stderr
    assert "kept in float for speed" not in result.stderr  # written for its size: every node quantized
    out.unlink()
    result = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(out),
                                       "--objective", "speed", "--if-slower", "fail", "-q"])
    assert result.exit_code == 1 and not out.exists()
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert "INT8 does not pay" in result.stderr and "--if-slower float" in result.stderr


def test_the_real_machine_times_every_placement_interleaved(model_and_data):
    """onnxruntime's clock decides here, so only what does not depend on it is asserted."""
    from ptq_cli.quantization.placement.latency.machine import OnnxruntimeMachine

    path, data = model_and_data
    machine = OnnxruntimeMachine(threads=1, seconds=0.05, min_rounds=3, block_seconds=0.002, profile_runs=2)
    result = ptq_cli.quantize(path, None, data=data, objective=Objective.SPEED, machine=machine,
                              if_slower=IfSlower.FLOAT, progress=False)
    decision = result.latency
    assert len(decision.fp32.rounds) >= 3 and all(len(t.timing.rounds) == len(decision.fp32.rounds)
                                                  for t in decision.trials)
    assert all(t.timing.median_ms > 0 and t.speedup > 0 for t in decision.trials)
    assert result.recipe.exclude in [t.float_nodes for t in decision.trials]
    assert decision.pays == (decision.speedup > 1.0)
    low, high = decision.fp32.spread_ms
    assert low <= decision.fp32.median_ms <= high


def test_accuracy_keeps_the_largest_float_prefix_that_still_beats_fp32(model_and_data):
    path, data = model_and_data
    result = ptq_cli.quantize(path, None, data=data, objective=Objective.ACCURACY,
                              machine=TableMachine(MOBILE_TABLE), progress=False)
    # Timed: (), (stem, dw), (stem,), (stem, dw, pw) at 98, 63, 78 and 93 µs against FP32's 105.
    assert result.recipe.exclude == ("stem", "dw", "pw") and result.latency.pays
    assert result.latency.speedup == pytest.approx(105.0 / 93.0)


def test_speed_also_times_per_channel_reads_for_convs_the_user_excluded(model_and_data):
    from ptq_cli.recipe import ExcludedConvInput, Recipe

    path, data = model_and_data
    result = ptq_cli.quantize(path, None, data=data, objective=Objective.SPEED, recipe=Recipe(exclude=("pw",)),
                              machine=TableMachine(MOBILE_TABLE), progress=False)
    variants = [(t.float_nodes, t.variant) for t in result.latency.trials]
    assert ((), "excluded_conv_input=dequantized") in variants and ((), "") in variants
    assert "pw" in result.recipe.exclude
    chosen = result.latency.chosen  # the table prices both reads alike: the tie keeps the recipe as asked
    assert chosen.variant == "" and result.recipe.excluded_conv_input is ExcludedConvInput.FLOAT


def test_a_model_changed_by_the_drift_budget_is_timed_again(model_and_data):
    from ptq_cli.quantization.placement.latency.search import retime

    path, data = model_and_data
    machine = TableMachine(MOBILE_TABLE)
    result = ptq_cli.quantize(path, None, data=data, objective=Objective.SPEED, machine=machine, progress=False)
    fallback = result.recipe.with_(exclude=result.recipe.exclude + ("pw", "pw2"))
    model, plan = ptq_cli.quantize(path, None, data=data, recipe=fallback, progress=False).model, None
    final = retime(result.latency, onnx.load(str(path)), model, plan, fallback, [{}], machine)
    # Everything but fc in float: 10 + 10 + 40 + 40 + 3 + one crossing of 20 = 123 µs against 105.
    assert final.chosen.float_nodes == ("stem", "dw", "pw", "pw2") and final.recipe == fallback
    assert final.speedup == pytest.approx(105.0 / 123.0) and not final.pays
    assert final.trials[-1] is final.chosen and "drift budget" in final.chosen.variant


def test_a_prefix_must_beat_the_fully_quantized_model_in_most_rounds():
    from ptq_cli.quantization.placement.latency.machine import Timing
    from ptq_cli.quantization.placement.latency.search import Trial, _choose

    fp32 = Timing((10.0,) * 8)
    full = Timing((8.0,) * 8)
    noisy = Timing((5.0, 5.0, 5.0, 5.0, 9.0, 9.0, 9.0, 9.0))  # a better median, 4 wins in 8 rounds
    steady = Timing((7.0,) * 7 + (9.0,))  # 7 wins in 8
    trials = [Trial((), 0.0, full, full.speedup_over(fp32)), Trial(("stem",), 0.0, noisy, noisy.speedup_over(fp32))]
    assert _choose(trials, 0.03).float_nodes == ()
    trials[1] = Trial(("stem",), 0.0, steady, steady.speedup_over(fp32))
    assert _choose(trials, 0.03).float_nodes == ("stem",)


def test_nodes_slower_in_int8_anywhere_are_timed_as_float_islands(model_and_data, tmp_path):
    """A depthwise Conv slower in INT8 in the middle of the network, its neighbours faster: no
    float prefix helps, the island does (as PP-OCRv4's depthwise Convs between pointwise ones)."""
    path, data = model_and_data
    before = path.read_bytes()
    table = {"stem": (40.0, 10.0), "dw": (10.0, 40.0), "pw": (40.0, 10.0), "pw2": (40.0, 10.0), "fc": (5.0, 3.0)}
    result = ptq_cli.quantize(path, tmp_path / "island.onnx", data=data, objective=Objective.SPEED,
                              machine=TableMachine(table), progress=False)
    trials = {t.float_nodes: t.speedup for t in result.latency.trials}
    assert ("dw",) in trials                # the island, besides the prefixes
    assert result.recipe.exclude == ("dw",) and trials[("dw",)] == max(trials.values())
    written = onnx.load(str(tmp_path / "island.onnx"))
    onnx.checker.check_model(written, full_check=True)
    assert _conv_inputs_dequantized(written) == {"stem": True, "dw": False, "pw": True, "pw2": True}
    x = np.load(data / "0.npy")
    fp32, int8 = run(onnx.load(str(path)), {"x": x})[0], run(written, {"x": x})[0]
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.99
    assert path.read_bytes() == before


class _NoisyReference(TableMachine):
    """The FP32 reference timed 10 % slow, as noise on a loaded machine can make it."""

    def time(self, models, feeds):
        timings = super().time(models, feeds)
        return [type(timings[0])(tuple(t * 1.1 for t in timings[0].rounds))] + timings[1:]


def test_a_placement_that_leaves_nothing_quantized_is_never_chosen(model_and_data, tmp_path):
    path, data = model_and_data
    slow = {name: (fp32, fp32 * 3) for name, (fp32, _) in MOBILE_TABLE.items()}  # every node loses in INT8
    result = ptq_cli.quantize(path, tmp_path / "out.onnx", data=data, objective=Objective.SPEED,
                              machine=_NoisyReference(slow), progress=False)
    assert all(trial.float_nodes != tuple(MOBILE_TABLE) for trial in result.latency.trials)
    assert result.quantized and not result.float_written
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "out.onnx")).graph.node)
