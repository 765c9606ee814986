"""Classes 2 and 3: OS, onnx and onnxruntime errors become one line naming the op, tensor or
file and what to do; click's usage errors are one line too; Ctrl-C, also while importing."""

from __future__ import annotations

import os
import subprocess
import sys

import onnx
import pytest

from tests.robustness import models
from tests.robustness.harness import invoke


@pytest.mark.parametrize("make, args, words", [
    (models.no_kernel, ("--dynamic",), ()),
    (models.nonfinite_weight, ("--dynamic",), ("'w'", "'mm'", "NaN/Inf", "--exclude mm")),
    (models.empty_weight, ("--dynamic",), ("'w'", "'mm'", "empty", "--exclude mm")),
    # bfloat16 MatMul (no CPU kernel) is no longer refused: it is computed in float32 between
    # Casts and quantized (tests/model/passes/test_float32.py); see test_bfloat16_is_quantized.
])
def test_models_onnxruntime_or_numpy_cannot_handle(work, make, args, words):
    onnx.save(make(), work / "bad.onnx")
    run = invoke(work, "quantize", work / "bad.onnx", *args, "-q")
    line = run.refused(3, *words)
    assert "internal error" not in line


def test_bfloat16_is_quantized(work):
    onnx.save(models.bfloat16(), work / "bf16.onnx")
    run = invoke(work, "quantize", work / "bf16.onnx", "--dynamic", "-q")
    assert run.code == 0, run.result.output
    assert run.created == {"bf16.int8.onnx"}


def test_no_kernel_is_named_in_every_command(work):
    import numpy as np

    onnx.save(models.no_kernel(), work / "lp.onnx")
    np.save(work / "x.npy", np.zeros((1, 3, 4, 4), np.float32))
    for command in (("quantize", work / "lp.onnx", "--data", work / "x.npy"),
                    ("calibrate", work / "lp.onnx", "--data", work / "x.npy"),
                    ("compare", work / "lp.onnx", work / "lp.onnx", "--data", work / "x.npy")):
        invoke(work, *command, "-q").refused(3, "no kernel for GlobalLpPool (opset 22)", "'pool'")


@pytest.mark.parametrize("args", [("quantize",), ("quantize", "{model}", "--bogus"), ("compare", "{model}"),
                                  ("calibrate", "{model}", "--shard", "5/2"), ("nonsense",),
                                  ("quantize", "{model}", "--batch-size", "0")])
def test_usage_errors_are_one_line_exit_two(work, args):
    args = [a.format(model=work / "model.onnx") for a in args]
    invoke(work, *args).refused(2, "--help")


def test_unexpected_errors_are_one_line_without_debug_and_a_traceback_with_it(work, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr("ptq_cli.quantization.modes.emit_dynamic", broken)
    invoke(work, "quantize", work / "model.onnx", "--dynamic", "-q").refused(3, "internal error", "--debug")
    run = invoke(work, "--debug", "quantize", work / "model.onnx", "--dynamic", "-q")
    assert isinstance(run.result.exception, RuntimeError)


def test_unreadable_inputs(work):
    (work / "dir.onnx").mkdir()
    invoke(work, "quantize", work / "dir.onnx", "--dynamic").refused(2, "dir.onnx")
    invoke(work, "quantize", "/proc/self/status", "--dynamic", "-o", work / "o.onnx").refused(3, "ONNX")
    if os.geteuid() != 0:
        (work / "locked.onnx").write_bytes((work / "model.onnx").read_bytes())
        (work / "locked.onnx").chmod(0)
        invoke(work, "quantize", work / "locked.onnx", "--dynamic", "-o", work / "o.onnx").refused(3, "locked.onnx")


# A Ctrl-C that lands while onnx is being imported (deterministic: the import itself raises it).
_INTERRUPT_ON_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "onnx":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
from ptq_cli.__main__ import run
run()
"""


def test_ctrl_c_while_importing_is_one_line_and_exit_130(work):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_ON_IMPORT, "quantize", str(work / "model.onnx"),
                           "--dynamic", "-q"], capture_output=True, env=env, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.strip()] == ["ptq: interrupted; no output was written"]
    assert not (work / "model.int8.onnx").exists()


@pytest.mark.parametrize("command", ["quantize", "calibrate"])
def test_ctrl_c_during_calibration_leaves_nothing(work, monkeypatch, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("ptq_cli.calibration.in_process.collect", interrupted)
    extra = ("--objective", "size") if command == "quantize" else ()
    run = invoke(work, command, work / "model.onnx", "--data", work / "data", *extra, "-q")
    run.refused(130, "interrupted")
