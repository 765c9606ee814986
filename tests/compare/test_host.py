"""`ptq compare` names this host's integer kernel class in every report, and warns when it gates a
candidate that can saturate 16-bit pair sums on a host that cannot show it. The real host may be
of either class: tests that need one replace the probe, the others only compare with it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import ptq_cli
import ptq_cli.comparison.host as HOST
from ptq_cli.cli import main
from ptq_cli.comparison import compare
from ptq_cli.model.kernels import HostKernels, host_kernels
from ptq_cli.recipe import Recipe, Target
from tests.conftest import make_model, save_samples

WARNING = ("the candidate can saturate 16-bit pair sums on x86 CPUs without VNNI; this host (exact 32-bit) "
           "cannot show it: quantize with --target portable or gate on such a host")


def _matmul_model() -> onnx.ModelProto:
    """x[1, 8] @ W[8, 4] with W >= 0 and rows 0, 1 the largest: full-range int8 pairs saturate."""
    w = np.abs(np.random.default_rng(2).normal(0, 0.3, (8, 4))).astype(np.float32)
    w[:2] += 1.0
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                      [numpy_helper.from_array(w, "w")])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """ref.onnx, its vnni.onnx and portable.onnx, and a data folder."""
    folder = tmp_path_factory.mktemp("host")
    rng = np.random.default_rng(3)
    data = save_samples(folder / "data", [rng.uniform(0, 1, (1, 8)).astype(np.float32) for _ in range(6)])
    model = _matmul_model()
    onnx.save(model, folder / "ref.onnx")
    for target in Target:
        result = ptq_cli.quantize(model, None, data=data, recipe=Recipe(target=target), progress=False)
        onnx.save(result.model, folder / f"{target.value}.onnx")
    return folder




@pytest.fixture
def exact_host(monkeypatch):
    monkeypatch.setattr(HOST, "host_kernels", lambda: HostKernels.EXACT)


@pytest.fixture
def saturating_host(monkeypatch):
    monkeypatch.setattr(HOST, "host_kernels", lambda: HostKernels.SATURATING)


def _compare(case, candidate: str):
    return compare(case / "ref.onnx", case / f"{candidate}.onnx", case / "data", progress=False)


def test_the_report_names_this_hosts_kernel_class(case):
    report = _compare(case, "vnni")
    assert report.host.kernels == host_kernels().value
    assert report.host.candidate_portable is False
    assert (report.host.warning is not None) == (host_kernels() is HostKernels.EXACT)
    assert _compare(case, "portable").host.candidate_portable is True


def test_an_exact_host_warns_about_a_candidate_that_can_saturate(case, exact_host):
    host = _compare(case, "vnni").host
    assert (host.kernels, host.warning) == ("exact 32-bit", WARNING)
    assert _compare(case, "portable").host.warning is None  # nothing to hide


def test_a_saturating_host_shows_the_saturation_itself(case, saturating_host):
    host = _compare(case, "vnni").host
    assert (host.kernels, host.candidate_portable, host.warning) == ("saturating 16-bit pairs", False, None)


def _cli(case, candidate: str, *args):
    return CliRunner().invoke(main, ["compare", str(case / "ref.onnx"), str(case / f"{candidate}.onnx"),
                                     "--data", str(case / "data"), "-q", *args], env={"GITHUB_STEP_SUMMARY": None})


def test_every_rendering_names_the_host_and_carries_the_warning(case, exact_host, tmp_path):
    md, junit, html = tmp_path / "r.md", tmp_path / "r.xml", tmp_path / "r.html"
    result = _cli(case, "vnni", "--json", "--markdown", str(md), "--junit", str(junit), "--html", str(html))
    assert result.exit_code == 0, result.stderr  # a warning, not a failed gate
    assert f"ptq: warning: {WARNING}" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["host"] == {"kernels": "exact 32-bit", "candidate_portable": False, "warning": WARNING}
    assert "  host       integer kernels: exact 32-bit" in result.stderr  # the text table
    assert f"warning: {WARNING}" in result.stderr.splitlines()
    assert "Host integer kernels: exact 32-bit." in md.read_text() and WARNING in md.read_text()
    page = html.read_text()
    assert "Host integer kernels: exact 32-bit." in page and WARNING in page
    suite = ET.parse(junit).getroot().find("testsuite")
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties == {"host_kernels": "exact 32-bit", "candidate_portable": "false", "host_warning": WARNING}
    assert list(suite)[0].tag == "properties"  # JUnit wants them before the test cases


def test_a_portable_candidate_gives_no_warning(case, exact_host):
    result = _cli(case, "portable")
    assert result.exit_code == 0, result.stderr
    assert "integer kernels: exact 32-bit" in result.stdout
    assert "warning" not in result.stdout + result.stderr
