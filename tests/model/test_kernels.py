"""The host probe, and `--target` through the CLI: what is chosen, and what is recorded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.cli import main
from ptq_cli.model.kernels import HostKernels, host_kernels
from ptq_cli.quantization.arithmetic.pairs import pairing_for, saturates, worst_pair_sums
from tests.conftest import REPO, run

SAMPLE = REPO / "sample_models" / "digits_cnn.onnx"
CALIB = REPO / "calibration" / "digits" / "calib"
HASWELL = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"


def test_the_probe_agrees_with_a_saturating_pair_run_here():
    """A MatMulInteger whose first pair sums past int16: the probe's class says what it returns."""
    weight = numpy_helper.from_array(np.array([[120], [100], [-3], [7]], np.int8), "w")
    model = helper.make_model(helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 1])], [weight]),
        opset_imports=[helper.make_opsetid("", 13)])
    a = np.array([[255, 250, 9, 30]], np.uint8)
    got = int(run(model, {"a": a})[0].ravel()[0])
    exact = int((a.astype(np.int64) @ np.array([120, 100, -3, 7]))[0])
    clipped = 32767 + (9 * -3 + 30 * 7)  # the first pair clips at int16, the second is exact
    assert got == (clipped if host_kernels() is HostKernels.SATURATING else exact)


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-user is not installed (apt-get install qemu-user)")
def test_the_probe_finds_saturating_kernels_on_an_emulated_haswell():
    if host_kernels().saturates:
        pytest.skip("this host's kernels saturate already (an AVX2 CPU, or the suite itself under qemu)")
    code = "from ptq_cli.model.kernels import host_kernels; print(host_kernels().value)"
    out = subprocess.run(["qemu-x86_64", "-cpu", HASWELL, sys.executable, "-c", code], capture_output=True,
                         text=True, check=True, cwd=REPO, timeout=300)
    assert out.stdout.strip() == HostKernels.SATURATING.value


@pytest.mark.parametrize("target", ["portable", "vnni", "host"])
def test_the_cli_target_is_recorded_and_decides_the_weights(tmp_path, target):
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["quantize", str(SAMPLE), "--data", str(CALIB), "-o", str(out),
                                       "--target", target, "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    props = {p.key: p.value for p in model.metadata_props}
    chosen = {"portable": "portable", "vnni": "vnni",
              "host": "portable" if host_kernels().saturates else "vnni"}[target]
    assert report["target"] == json.loads(props["ptq.recipe"])["target"] == chosen
    if target == "host":
        assert report["probed_host"] == props["ptq.host_kernels"] == host_kernels().value
    else:
        assert report["probed_host"] is None and "ptq.host_kernels" not in props
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    producer = {o: n for n in model.graph.node for o in n.output}
    weight = inits[producer[gemm.input[1]].input[0]]
    sums = worst_pair_sums(weight, pairing_for("Gemm", weight.shape, trans_b=True))
    assert saturates(sums) is (chosen == "vnni")  # the sample's classifier has same-sign neighbours
