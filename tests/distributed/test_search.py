"""The drift budget's search on a 2-worker LocalCluster: the reference and every candidate run
on the workers, and the file written is the one of a single process, byte for byte."""

from __future__ import annotations

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.cli import main
from tests.conftest import save_samples

from .conftest import ON_A_CLUSTER

pytestmark = ON_A_CLUSTER


def _outlier_model() -> onnx.ModelProto:
    """MatMul -> Add(a channel near 3000 that the next MatMul ignores) -> MatMul -> Relu -> MatMul:
    one uint8 scale for the Add's output rounds the useful channels away, so the default budget
    fails until the search returns the Add and its reader to float."""
    rng = np.random.default_rng(0)
    w0, w1, w2 = (rng.normal(size=s).astype(np.float32) for s in ((8, 8), (8, 16), (16, 5)))
    w1[0] = 0.0
    offset = np.zeros(8, np.float32)
    offset[0] = 3000.0
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="pre"),
             helper.make_node("Add", ["h0", "offset"], ["h"], name="shift"),
             helper.make_node("MatMul", ["h", "w1"], ["a"], name="fc1"),
             helper.make_node("Relu", ["a"], ["r"], name="act"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    inits = [numpy_helper.from_array(v, n) for v, n in ((w0, "w0"), (offset, "offset"), (w1, "w1"), (w2, "w2"))]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _sessions_on_workers() -> int:
    from ptq_cli.drift import runners

    return len(runners._WORKER_SESSIONS)


def test_the_search_on_a_cluster_writes_the_single_process_file(engine, scheduler_address, tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_outlier_model(), path)
    before = path.read_bytes()
    rng = np.random.default_rng(1)
    data = save_samples(tmp_path / "calib", [rng.normal(size=(1, 8)).astype(np.float32) for _ in range(40)])
    here = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o", str(tmp_path / "here.onnx"),
                                     "-q", "--json"])
    there = CliRunner().invoke(main, ["quantize", str(path), "--data", str(data), "-o",
                                      str(tmp_path / "there.onnx"), "-q", "--json", "--engine", "dask",
                                      "--address", scheduler_address])
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    assert sum(engine.executor._client.run(_sessions_on_workers).values()) > 0  # the candidates ran there
    written = (tmp_path / "there.onnx").read_bytes()
    assert written == (tmp_path / "here.onnx").read_bytes() and path.read_bytes() == before
    model = onnx.load_from_string(written)
    onnx.checker.check_model(model, full_check=True)
    drift = {p.key: p.value for p in model.metadata_props}["ptq.drift"]
    assert '"fallback": ["shift", "fc1"]' in drift or '"fallback": ["fc1", "shift"]' in drift


def test_parts_are_refused_by_quantize(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_outlier_model(), path)
    result = CliRunner().invoke(main, ["quantize", str(path), "--dynamic", "--engine", "dask", "--parts", "3"])
    assert result.exit_code == 2 and "--parts" in result.output and not list(tmp_path.glob("*.int8.onnx"))
