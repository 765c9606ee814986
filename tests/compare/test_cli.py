import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from ptq_cli.cli import main
from ptq_cli.model.kernels import host_kernels
from tests.compare.models import make_qdq, mlp, ranges, two_in_two_out

# The JSON schema is a contract with CI scripts: keys are only ever added (report.py); removing or
# renaming one needs a new schema_version.
TOP_KEYS = {"schema_version", "tool", "tool_version", "reference", "candidate", "data", "outputs", "layers",
            "latency", "thresholds", "passed", "failures", "notes", "host"}
OUTPUT_KEYS = {"name", "shape", "samples", "nonfinite_candidate", "nonfinite_reference", "exact", "sqnr_db",
               "cosine_mean", "cosine_min", "max_abs_error", "mean_abs_error", "rmse", "error_histogram",
               "classification", "kind", "exact_agreement", "sequence_agreement"}
CLASS_KEYS = {"classes", "top1_agreement", "top5_agreement", "labelled", "reference_top1", "candidate_top1",
              "reference_top5", "candidate_top5", "top1_drop_pt", "per_step"}
LAYER_KEYS = {"tensor", "candidate_tensor", "op_type", "node", "quantized", "matched_by", "samples",
              "nonfinite_candidate", "sqnr_db", "input_sqnr_db", "local_sqnr_db", "weight_sqnr_db"}
UNMATCHED_KEYS = {"tensor", "op_type", "node", "reason"}
SENSITIVITY_KEYS = {"mode", "samples", "nodes", "fixed", "suggested_exclude"}
SENSITIVITY_NODE_KEYS = {"node", "op_type", "sqnr_db", "top1_agreement", "nonfinite_candidate"}
LATENCY_KEYS = {"warmup", "runs", "inputs", "speedup", "reference", "candidate"}
TIMING_KEYS = {"median_ms", "p10_ms", "p90_ms", "min_ms", "max_ms"}
THRESHOLD_KEYS = {"name", "limit", "value", "passed", "detail"}
HOST_KEYS = {"kernels", "candidate_portable", "warning"}


@pytest.fixture
def case(tmp_path):
    """An MLP, its QDQ version (files), 12 samples with labels."""
    rng = np.random.default_rng(3)
    model = mlp(rng, classes=8)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    qdq = make_qdq(model, ranges(model, {"x": x}))
    onnx.save(model, tmp_path / "ref.onnx")
    onnx.save(qdq.model, tmp_path / "cand.onnx")
    data = tmp_path / "data"
    data.mkdir()
    for i, row in enumerate(x):
        np.save(data / f"{i}.npy", row[None])
    (tmp_path / "labels.txt").write_text("\n".join(str(i % 8) for i in range(12)))
    return tmp_path


def run(case, *args, env=None):
    base = ["compare", str(case / "ref.onnx"), str(case / "cand.onnx"), "--data", str(case / "data"), "-q"]
    return CliRunner().invoke(main, base + list(args), env=env or {"GITHUB_STEP_SUMMARY": None})


def test_text_table_and_exit_zero(case):
    result = run(case, "--min-sqnr", "5")
    assert result.exit_code == 0, result.output
    assert "SQNR dB" in result.stdout and "PASS min_sqnr" in result.stdout
    assert "12 samples" in result.stdout


def test_missed_threshold_exits_one_and_names_it(case):
    result = run(case, "--min-sqnr", "200", "--min-cosine", "0.5")
    assert result.exit_code == 1
    assert "ptq: threshold missed: min_sqnr" in result.stderr
    assert "min_cosine" not in result.stderr


def test_usage_errors_exit_two(case):
    assert run(case, "--max-top1-drop", "-1").exit_code == 2
    assert run(case, "--per-layer", "--per-layer-samples", "0").exit_code == 2
    assert run(case, "--batch-size", "0").exit_code == 2
    bad = CliRunner().invoke(main, ["compare", str(case / "ref.onnx"), str(case / "cand.onnx")])
    assert bad.exit_code == 2 and "--data" in bad.output


def test_models_with_different_inputs_exit_two(case):
    other = two_in_two_out(np.random.default_rng(0))
    onnx.save(other, case / "cand.onnx")
    result = run(case)
    assert result.exit_code == 2
    assert result.stderr.startswith("ptq: error: the models' inputs differ")


def test_failure_exits_three(case):
    (case / "cand.onnx").write_bytes(b"not a model")
    result = run(case)
    assert result.exit_code == 3 and "ptq: error:" in result.stderr


def test_json_schema_is_stable(case):
    result = run(case, "--json", "--per-layer", "--latency", "--labels", str(case / "labels.txt"),
                 "--max-top1-drop", "50")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)   # stdout holds only the JSON; the table went to stderr
    assert "SQNR dB" in result.stderr
    assert set(doc) == TOP_KEYS and doc["schema_version"] == 1
    assert set(doc["data"]) == {"description", "samples", "labelled"} and doc["data"]["labelled"] == 12
    assert set(doc["reference"]) == {"path", "sha256"} and len(doc["reference"]["sha256"]) == 64
    (out,) = doc["outputs"]
    assert set(out) == OUTPUT_KEYS and set(out["classification"]) == CLASS_KEYS
    assert set(out["error_histogram"]) == {"log10_abs_edges", "counts"}
    assert set(doc["layers"]) == {"matched", "unmatched", "sensitivity"}
    assert all(set(layer) == LAYER_KEYS for layer in doc["layers"]["matched"])
    sens = doc["layers"]["sensitivity"]
    assert set(sens) == SENSITIVITY_KEYS and sens["mode"] == "isolated" and sens["samples"] == 12
    assert [n["node"] for n in sens["nodes"]][:1] and all(set(n) == SENSITIVITY_NODE_KEYS for n in sens["nodes"])
    assert {n["node"] for n in sens["nodes"]} == {"fc1", "bias1", "act1", "fc2"}
    assert set(doc["latency"]) == LATENCY_KEYS and set(doc["latency"]["reference"]) == TIMING_KEYS
    assert [set(t) for t in doc["thresholds"]] == [THRESHOLD_KEYS]
    assert doc["passed"] is True and doc["failures"] == []
    assert set(doc["host"]) == HOST_KEYS and doc["host"]["kernels"] == host_kernels().value


def test_markdown_junit_html_files(case):
    md, junit, html = case / "r.md", case / "out" / "r.xml", case / "r.html"
    result = run(case, "--per-layer", "--min-sqnr", "200", "--min-cosine", "0.5",
                 "--markdown", str(md), "--junit", str(junit), "--html", str(html))
    assert result.exit_code == 1
    text = md.read_text()
    assert text.startswith("### ptq compare: `cand.onnx` vs `ref.onnx` — ❌ failed")
    assert "| output | SQNR dB |" in text and "❌ min_sqnr" in text and "✅ min_cosine" in text
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["min_sqnr 200", "min_cosine 0.5"]
    assert cases[0].find("failure") is not None and cases[1].find("failure") is None
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    umask = os.umask(0)
    os.umask(umask)
    assert html.stat().st_mode & 0o777 == 0o666 & ~umask   # like any file the user writes, not 0600
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2   # layer chart + 1 histogram
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "<script" not in page


def test_junit_without_thresholds_has_one_passing_case(case):
    junit = case / "r.xml"
    assert run(case, "--junit", str(junit)).exit_code == 0
    cases = ET.parse(junit).getroot().find("testsuite").findall("testcase")
    assert [c.get("name") for c in cases] == ["compare"]


def test_github_step_summary_is_appended(case):
    summary = case / "summary.md"
    summary.write_text("# earlier step\n")
    for _ in range(2):
        assert run(case, env={"GITHUB_STEP_SUMMARY": str(summary)}).exit_code == 0
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and text.count("### ptq compare") == 2
