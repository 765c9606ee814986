"""The cost model: onnxruntime's profile mapped back to the float graph, tensor sizes, crossing
costs, float-prefix candidates, and the MaxPool boundary onnxruntime turns into a trap."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.api import quantize_model
from ptq_cli.quantization.placement.latency.candidates import Costs, prefix_candidates
from ptq_cli.quantization.placement.latency.cost import CrossingCost, node_costs, tensor_elements
from ptq_cli.quantization.placement.latency.machine import OnnxruntimeMachine
from ptq_cli.recipe import Recipe
from tests.conftest import image_batches, minmax_ranges, tiny_conv_relu
from tests.latency.machines import mobile_cnn


@pytest.fixture
def mobile(rng):
    model = prepare(mobile_cnn(rng))
    feeds = [{"x": rng.normal(0, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    return model, feeds, minmax_ranges(model, feeds)


def test_profile_names_of_onnxruntime_map_back_to_every_conv(mobile):
    model, feeds, ranges = mobile
    before = model.SerializeToString()
    int8, _ = quantize_model(model, Recipe(), ranges)
    machine = OnnxruntimeMachine(threads=1, profile_runs=2)
    for candidate in (model, int8):  # FP32 names: "<relu output>_nchwc"; INT8: "<conv>_token_N"
        costs = node_costs(machine.profile(candidate.SerializeToString(), feeds), model)
        assert {"stem", "dw", "pw", "pw2", "fc"} <= set(costs)
        assert all(us >= 0 for us in costs.values())
    assert model.SerializeToString() == before


def test_renamed_and_fused_nodes_are_charged_to_their_compute_node(mobile):
    model, _, _ = mobile
    profile = {"r0_nchwc": ("Conv", 7.0), "dw_token_4": ("QLinearConv", 3.0), "pw_quant": ("QLinearConv", 2.0),
               "pw_relu": ("Relu", 1.0), "Transpose_token_9": ("Transpose", 50.0), "ReorderOutput": ("R", 9.0)}
    assert node_costs(profile, model) == {"stem": 7.0, "dw": 3.0, "pw": 3.0}


def test_tensor_elements_follow_the_fed_shapes(mobile):
    model, feeds, _ = mobile
    sizes = tensor_elements(model, feeds)
    assert sizes["x"] == 3 * 16 * 16 and sizes["r0"] == 8 * 16 * 16 and sizes["r2"] == 16 * 16 * 16
    assert sizes["y"] == 10


def test_prefix_estimates_use_the_profiles_and_the_crossings(mobile):
    model, feeds, ranges = mobile
    _, plan = quantize_model(model, Recipe(), ranges)
    fp32 = {"stem": 10.0, "dw": 10.0, "pw": 40.0, "pw2": 40.0, "gap": 1.0, "fc": 5.0}
    int8 = {"stem": 30.0, "dw": 25.0, "pw": 10.0, "pw2": 10.0, "gap": 1.0, "fc": 3.0}
    crossing = CrossingCost(fixed_us=10.0, per_element_ns=1000.0)  # 1 µs per element
    costs = Costs(fp32, int8, 100.0, tensor_elements(model, feeds), crossing)
    found = {c.float_nodes: c for c in prefix_candidates(model, plan.quantized, costs)}
    assert found[()].estimate_us == 100.0 and found[()].boundary == ("x",)
    # stem + dw in float saves 35 µs; the boundary moves from x (768 elements) to r1 (2048).
    assert found[("stem", "dw")].boundary == ("r1",)
    assert found[("stem", "dw")].estimate_us == pytest.approx(100.0 - 35.0 + (10 + 2048) - (10 + 768))
    assert max(len(k) for k in found) == 3  # at most half of the 6 compute nodes


def test_no_boundary_right_after_a_max_pool(rng, tmp_path):
    model = prepare(tiny_conv_relu(rng, channels=8))
    ranges = minmax_ranges(model, image_batches(rng))
    _, plan = quantize_model(model, Recipe(), ranges)
    costs = Costs({}, {}, 100.0, {}, CrossingCost())
    assert ("conv1",) not in {c.float_nodes for c in prefix_candidates(model, plan.quantized, costs)}
    # Why: with conv1 in float, onnxruntime moves the QuantizeLinear above the pool, which then
    # runs on uint8 NCHW data (a slow kernel) instead of in float.
    trapped, _ = quantize_model(model, Recipe(exclude=("conv1",)), ranges)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(trapped.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    producer = {o: n for n in optimized.node for o in n.output}
    pool = next(n for n in optimized.node if n.op_type == "MaxPool")
    assert producer[pool.input[0]].op_type == "QuantizeLinear"


def test_timing_feeds_from_data_are_single_rows_and_otherwise_made_from_the_input_types(rng, tmp_path):
    from onnx import TensorProto, helper

    from ptq_cli.quantization.placement.latency.feeds import timing_feeds
    from tests.conftest import make_model

    model = make_model([helper.make_node("Cast", ["ids"], ["c"], to=TensorProto.FLOAT),
                        helper.make_node("Add", ["x", "c"], ["y"])],
                       [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"]),
                        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S"])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S"])])
    feeds, source = timing_feeds(model)
    assert len(feeds) == 1 and "synthetic" in source
    assert feeds[0]["ids"].dtype == np.int64 and not feeds[0]["ids"].any() and feeds[0]["x"].shape == (1, 1)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(10):
        np.savez(data / f"{i}.npz", ids=np.ones((2, 5), np.int64), x=rng.normal(0, 1, (2, 5)).astype(np.float32))
    feeds, source = timing_feeds(model, data)
    assert len(feeds) == 8 and all(f["x"].shape == (1, 5) for f in feeds) and "batch 1" in source
