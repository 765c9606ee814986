"""compare --json on a 2-worker LocalCluster: the figures of one process."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ptq_cli.cli import main

from .conftest import ON_A_CLUSTER


pytestmark = ON_A_CLUSTER

def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def quantized(conv_model, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "conv.int8.onnx"
    result = _run("quantize", conv_model, "--data", data_dir, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def labels(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("labels") / "labels.txt"
    path.write_text("\n".join(str(i % 10) for i in range(45)) + "\n")
    return path


@pytest.mark.parametrize("parts", [1, 3, 7])
def test_compare_json_figures_equal_the_single_process_ones(scheduler_address, conv_model, quantized, data_dir,
                                                            labels, parts):
    common = [conv_model, quantized, "--data", data_dir, "--labels", labels, "--batch-size", "2",
              "--max-samples", "43", "--json", "-q"]
    single = _run("compare", *common)
    assert single.exit_code == 0, single.output
    on_cluster = _run("compare", *common, "--engine", "dask", "--address", scheduler_address, "--parts", parts)
    assert on_cluster.exit_code == 0, on_cluster.output
    a, b = json.loads(single.stdout), json.loads(on_cluster.stdout)
    assert a == b
    out = a["outputs"][0]
    assert a["data"]["samples"] == 43 and a["data"]["labelled"] == 43 and 0 < out["sqnr_db"] < 100
    assert out["classification"]["top1_agreement"] > 0.5 and sum(out["error_histogram"]["counts"]) == 430


def test_per_layer_is_refused_on_the_cluster(conv_model, quantized, data_dir):
    result = _run("compare", conv_model, quantized, "--data", data_dir, "--per-layer", "--engine", "dask",
                  "--address", "local")
    assert result.exit_code == 2 and "--per-layer runs in one process" in result.stderr
