"""Data-free quantization: ranges from BatchNormalization statistics carried through the graph,
synthetic inputs for the rest, the source of each range reported."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.calibration.batchnorm import SIGMAS, batchnorm_ranges
from ptq_cli.cli import main
from ptq_cli.data.images import ImagePreprocess
from ptq_cli.data.synthetic import synthetic_dataset
from ptq_cli.errors import UsageError
from ptq_cli.model.io import input_specs
from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.api import quantize
from ptq_cli.quantization.datafree import BATCHNORM, SYNTHETIC
from tests.conftest import make_model, run, sqnr_db

GAMMA = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
BETA = np.array([1.0, 0.5, -3.0, 0.0], np.float32)


def _bn_model(rng) -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv(3->4) -> BN -> Relu -> MaxPool -> Conv(4->4) -> Add(residual of the pool) -> GAP."""
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(GAMMA, "gamma"), numpy_helper.from_array(BETA, "beta"),
             numpy_helper.from_array(rng.normal(0, 0.2, 4).astype(np.float32), "mu"),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mu", "var"], ["bn"], name="bn"),
             helper.make_node("Relu", ["bn"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "p"], ["s"], name="add"),
             helper.make_node("GlobalAveragePool", ["s"], ["y"], name="gap")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])
    return make_model(nodes, [x], [y], inits, opset=13)


def test_batchnorm_statistics_give_ranges_that_flow_through_the_graph(rng):
    model = _bn_model(rng)
    ranges = batchnorm_ranges(model, prepare(model))
    lo, hi = float((BETA - SIGMAS * np.abs(GAMMA)).min()), float((BETA + SIGMAS * np.abs(GAMMA)).max())
    assert ranges["bn"] == pytest.approx((lo, hi))  # (-11, 9): channel 2 low, channel 2 high
    assert ranges["r"] == pytest.approx((0.0, hi)) and ranges["p"] == pytest.approx((0.0, hi))
    assert "c2" not in ranges and "s" not in ranges  # a Conv's output does not follow from its input's
    assert batchnorm_ranges(prepare(model), prepare(model)) == {}  # folded away: no statistics left


def test_synthetic_samples_match_the_declared_inputs_and_reproduce(rng):
    model = _bn_model(rng)
    specs = input_specs(model)
    tf = ImagePreprocess.preset("imagenet-tf")
    first = [s.feeds["x"] for s in synthetic_dataset(model, specs, tf, samples=4, seed=3)]
    again = [s.feeds["x"] for s in synthetic_dataset(model, specs, tf, samples=4, seed=3)]
    other = [s.feeds["x"] for s in synthetic_dataset(model, specs, tf, samples=4, seed=4)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and not np.array_equal(first[0], other[0])
    stacked = np.concatenate(first)
    assert stacked.shape == (4, 3, 8, 8) and -1.0 <= stacked.min() < -0.5 and 0.5 < stacked.max() <= 1.0
    raw = np.concatenate([s.feeds["x"] for s in synthetic_dataset(model, specs, None, samples=4)])
    assert 0 <= raw.min() and raw.max() <= 255 and raw.std() > 20  # raw pixels when nothing is declared
    # Token ids stay inside the embedding table; masks are ones, found by their use (the graph's
    # names say nothing: "keep" is a mask, "flags" only an index into nothing).
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "S"])
    mask = helper.make_tensor_value_info("keep", TensorProto.INT64, ["N", "S"])
    flags = helper.make_tensor_value_info("flags", TensorProto.INT64, ["N", "S"])
    table = numpy_helper.from_array(rng.normal(size=(50, 4)).astype(np.float32), "table")
    text = make_model([helper.make_node("Gather", ["table", "input_ids"], ["e"], name="g"),
                       helper.make_node("Cast", ["keep"], ["m"], name="c", to=TensorProto.FLOAT),
                       helper.make_node("Unsqueeze", ["m", "axes"], ["m3"], name="u"),
                       helper.make_node("Mul", ["e", "m3"], ["y"], name="mul"),
                       helper.make_node("Shape", ["flags"], ["shape"], name="shape")],
                      [ids, mask, flags], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 4]),
                                           helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                      [table, numpy_helper.from_array(np.array([2], np.int64), "axes")])
    dataset = synthetic_dataset(text, input_specs(text), None, samples=3)
    samples = list(dataset)
    assert all(0 <= s.feeds["input_ids"].min() and s.feeds["input_ids"].max() < 50 for s in samples)
    assert all((s.feeds["keep"] == 1).all() and (s.feeds["flags"] == 0).all() for s in samples)
    assert "token ids uniform in [0, 50)" in dataset.description and "keep: ones (a mask)" in dataset.description
    y = run(text, samples[0].feeds)[0]
    assert np.abs(y).sum() > 0  # a mask of zeros would have erased every embedding
    # A length compared with a Range, a shape handed to Expand: no masks.
    lengths = helper.make_tensor_value_info("lengths", TensorProto.INT64, [1])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in ((0, "zero"), (10, "ten"), (1, "one"))]
    other = make_model([helper.make_node("Range", ["zero", "ten", "one"], ["steps"], name="range"),
                        helper.make_node("Less", ["steps", "lengths"], ["valid"], name="less"),
                        helper.make_node("Expand", ["row", "shape"], ["grid"], name="expand")],
                       [lengths, shape], [helper.make_tensor_value_info("valid", TensorProto.BOOL, [10]),
                                          helper.make_tensor_value_info("grid", TensorProto.FLOAT, ["a", "b"])],
                       consts + [numpy_helper.from_array(np.ones((1, 3), np.float32), "row")])
    described = synthetic_dataset(other, input_specs(other), None, samples=1).description
    assert "lengths: zeros" in described and "shape: zeros" in described


def test_data_free_quantization_reports_each_range_source(rng):
    model = _bn_model(rng)
    before = model.SerializeToString()
    unit = ImagePreprocess.preset("unit")
    result = quantize(model, data_free=True, image=unit)
    again = quantize(model, data_free=True, image=unit)
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    assert result.model.SerializeToString() == again.model.SerializeToString()
    assert result.range_sources["r"] == BATCHNORM and result.range_sources["x"] == SYNTHETIC
    assert result.range_sources["s"] == SYNTHETIC
    # The graph output (class scores) gets no synthetic range: the layer writing it stays float.
    assert "y" not in result.range_sources and "gap" in {s.node for s in result.skipped}
    # The Relu output's scale is the BN-derived range over 255 levels, not a measured one.
    inits = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    q = next(n for n in result.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "r")
    hi = float((BETA + SIGMAS * np.abs(GAMMA)).max())
    assert float(inits[q.input[1]]) == pytest.approx(hi / 255, rel=1e-6)
    meta = {p.key: p.value for p in result.model.metadata_props}
    assert meta["ptq.calibration_data"].startswith("none: data-free, 32 synthetic samples (seed 0; x: dead-leaves")
    x = rng.uniform(0, 1, (4, 3, 8, 8)).astype(np.float32)
    assert sqnr_db(run(model, {"x": x})[0], run(result.model, {"x": x})[0]) > 20
    with pytest.raises(UsageError, match="without data"):
        quantize(model, data="somewhere", data_free=True)


def test_cli_data_free(tmp_path, rng):
    path = tmp_path / "m.onnx"
    onnx.save(_bn_model(rng), str(path))
    out = tmp_path / "m.int8.onnx"
    result = CliRunner().invoke(main, ["quantize", str(path), "--data-free", "--preset", "unit", "--objective", "size",
                                       "--max-samples", "8", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["range_sources"]["r"] == BATCHNORM
    assert "activation ranges:" in result.stderr and "from BatchNormalization statistics" in result.stderr
    bad = CliRunner().invoke(main, ["quantize", str(path), "--data-free", "--dynamic", "-o", str(tmp_path / "d.onnx")])
    assert bad.exit_code == 2 and not (tmp_path / "d.onnx").exists()
