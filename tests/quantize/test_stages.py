"""The stage sequence docs/architecture.md draws is the one quantize() runs: a real quantization,
timed by stage, meets the documented stages in the documented order."""

from __future__ import annotations

import ptq_cli
from ptq_cli.quantization.placement.latency import Objective
from ptq_cli.quantization.placement.latency.machine import OnnxruntimeMachine
from tests.conftest import REPO
from tests.test_docs import _stage_rows

CALIB = REPO / "calibration" / "digits" / "calib"


def documented_stages() -> list[str]:
    return [stage for stage, _, _ in _stage_rows()]  # the table test_docs.py checks against the code


def _in_documented_order(phases: list[str]) -> list[str]:
    stages = documented_stages()
    return [p for p in phases if p in stages]


def test_a_quantization_runs_the_documented_stages_in_the_documented_order(tmp_path):
    stages = documented_stages()
    assert stages[0] == "load" and stages[-2:] == ["check", "write"], stages
    source = REPO / "sample_models" / "digits_cnn.onnx"
    before = source.read_bytes()
    # The speed objective adds the latency search (a short one: this times the order, not the speed).
    machine = OnnxruntimeMachine(seconds=0.05, min_rounds=2, block_seconds=0.001)
    result = ptq_cli.quantize(source, tmp_path / "cnn.int8.onnx", data=CALIB, progress=False,
                              objective=Objective.SPEED, machine=machine)
    timed = _in_documented_order(list(result.seconds["phases"]))
    assert timed == ["load", "prepare", "calibrate", "latency search", "check", "write"], result.seconds
    assert timed == sorted(timed, key=stages.index)
    assert source.read_bytes() == before and result.output.is_file()


def test_the_order_check_can_fail():
    stages = documented_stages()
    swapped = ["load", "calibrate", "prepare", "check", "write"]
    assert _in_documented_order(swapped) != sorted(_in_documented_order(swapped), key=stages.index)
