"""The in-graph reductions: types without shape inference, exact min/max, per-channel means, NaN."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.calibration import calibrate
from ptq_cli.calibration.observers import Histogram, Scratch
from ptq_cli.calibration.probes import _inferred_types, augment, elem_types, float_tensors
from ptq_cli.errors import CalibrationError
from ptq_cli.recipe import CalibMethod, CalibrationSpec

from .conftest import write_samples


def _conv_model(opset: int = 13, divide: bool = False) -> onnx.ModelProto:
    """x[N,3,5,5] -> Conv -> c -> Relu -> r -> MaxPool (values + indices) -> Cast/Shape side
    branches -> GlobalAveragePool -> g -> Flatten -> f -> Gemm -> y; or x / x -> d -> Relu."""
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 1, (4, 3, 3, 3)).astype(np.float32), "w")
    wf = numpy_helper.from_array(rng.normal(0, 1, (2, 4)).astype(np.float32), "wf")
    if divide:
        nodes = [helper.make_node("Div", ["x", "x"], ["d"]), helper.make_node("Relu", ["d"], ["y"])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])]
    else:
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("MaxPool", ["r"], ["p", "idx"], kernel_shape=[1, 1]),
                 helper.make_node("Cast", ["idx"], ["idxf"], to=TensorProto.FLOAT),
                 helper.make_node("Shape", ["p"], ["shape"]),
                 helper.make_node("GlobalAveragePool", ["p"], ["g"]),
                 helper.make_node("Flatten", ["g"], ["f"]),
                 helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
        outputs = [helper.make_tensor_value_info(n, t, d) for n, t, d in
                   (("y", TensorProto.FLOAT, ["N", 2]), ("idxf", TensorProto.FLOAT, ["N", 4, 5, 5]),
                    ("shape", TensorProto.INT64, [4]))]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                              outputs, [] if divide else [w, wf])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)
    onnx.checker.check_model(model, full_check=True)
    return model


def _reference(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The activations as onnxruntime computes them, one sample at a time as calibrate feeds them."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = [session.run(names, {"x": row[None]}) for row in x]
    return {name: np.concatenate([r[i] for r in rows]) for i, name in enumerate(names)}


@pytest.fixture
def images(tmp_path):
    x = np.random.default_rng(2).normal(0.5, 1, (7, 3, 5, 5)).astype(np.float32)
    write_samples(tmp_path / "img", x)
    return tmp_path / "img", x


def test_types_without_shape_inference_match_it():
    model = _conv_model()
    fast, exact = elem_types(model), _inferred_types(model)
    assert exact and all(fast[name] == elem for name, elem in exact.items())
    assert float_tensors(model) == float_tensors(model, exact) == ["x", "c", "r", "p", "idxf", "g", "f", "y"]


def test_unknown_op_falls_back_to_shape_inference(monkeypatch):
    from ptq_cli.calibration import probes

    model = _conv_model()
    assert "r" in elem_types(model)
    model.graph.node.insert(2, helper.make_node("Mystery", ["r"], ["m"], domain="my.domain"))
    monkeypatch.setattr(probes, "_inferred_types", lambda m: {"fallback": 1, "m": 1})
    types = elem_types(model)
    # inference's answers are kept, and what follows from known types is filled in around them
    assert types["fallback"] == 1 and types["r"] == TensorProto.FLOAT and types["m"] == 1


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("method", [CalibMethod.MINMAX, CalibMethod.PERCENTILE])
def test_graph_reductions_equal_numpy(images, opset, method):
    folder, x = images
    model = _conv_model(opset)
    before = model.SerializeToString()
    table = calibrate(model, folder, spec=CalibrationSpec(method=method, bins=64), progress=False)
    assert model.SerializeToString() == before
    ref = _reference(model, x, ["c", "r", "p", "g", "f", "y"])
    ref["x"] = x
    for name, array in ref.items():
        assert table.stats[name].min_max == (float(array.min()), float(array.max())), name
        assert table.stats[name].minmax.count == array.size
    # Conv and Gemm inputs carry per-channel means, summed inside the graph (x from the feeds)
    np.testing.assert_allclose(table.channel_mean("x"), x.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(table.channel_mean("f"), ref["f"].mean(axis=0), rtol=1e-5)
    assert table.channel_mean("r") is None


def test_histogram_from_graph_minmax_equals_histogram_of_the_arrays(images):
    folder, x = images
    model = _conv_model()
    table = calibrate(model, folder, spec=CalibrationSpec(method=CalibMethod.ENTROPY, bins=128), progress=False)
    c = _reference(model, x, ["c"])["c"]
    expected = Histogram(128)
    for row in c:  # one batch per sample, as calibrate fed them
        expected.update(row[None])
    assert table.stats["c"].histogram.to_dict() == expected.to_dict()


def test_nan_made_inside_the_graph_is_caught_where_it_appears(tmp_path):
    # 0 / 0 is NaN, and the Relu after it would hide it (onnxruntime's Relu maps NaN to 0).
    rows = np.ones((2, 3, 5, 5), np.float32)
    rows[1, 2, 3, 4] = 0.0
    write_samples(tmp_path / "d", rows)
    model = _conv_model(divide=True)
    with pytest.raises(CalibrationError, match="activation 'd' holds NaN"):
        calibrate(model, tmp_path / "d", progress=False)


def test_reductions_follow_their_producer_and_names_do_not_clash():
    model = _conv_model()
    model.graph.node.insert(2, helper.make_node("Identity", ["r"], ["r/ptq_min"]))  # a name augment would pick
    model.graph.output.append(helper.make_tensor_value_info("r/ptq_min", TensorProto.FLOAT, None))
    augmented, plan = augment(model, ["c", "r"], ["r"], ["r"])
    outputs = [o.name for o in augmented.graph.output]
    assert len(set(outputs)) == len(outputs) and plan.fetched == ["r"] and "r/ptq_min_1" in outputs
    order = [out for n in augmented.graph.node for out in n.output]
    assert order.index("c") < order.index("c/ptq_min") < order.index("r") < order.index("r/ptq_min_1") < order.index("p")
    import onnxruntime as ort  # the added outputs are untyped, which onnxruntime (not the checker) accepts

    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(4).normal(0, 1, (2, 3, 5, 5)).astype(np.float32)
    values = dict(zip(plan.outputs, session.run(plan.outputs, {"x": x})))
    np.testing.assert_array_equal(values["r/ptq_max"], values["r"].max())


def test_scratch_buffers_do_not_change_counts():
    rng = np.random.default_rng(3)
    fresh, reused, scratch = Histogram(256), Histogram(256), Scratch()
    for size in (1000, 50, 3000, 10):  # the scratch grows and is sliced
        batch = (rng.standard_normal(size) * rng.uniform(0.1, 10)).astype(np.float32)
        fresh.update(batch)
        reused.update(batch, scratch=scratch)
    np.testing.assert_array_equal(fresh.counts, reused.counts)
    assert fresh.to_dict() == reused.to_dict()


def test_float16_activations_are_fetched_and_reduced_in_numpy(images):
    folder, x = images
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 5, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    table = calibrate(model, folder, progress=False)
    half = x.astype(np.float16)
    assert table.stats["h"].min_max == (float(half.min()), float(half.max()))
    assert table.stats["y"].min_max == (float(half.min()), float(half.max()))


@pytest.mark.parametrize("overlap", [False, True])
def test_overlapped_runs_give_the_same_table(images, overlap):
    folder, _ = images
    spec = CalibrationSpec(method=CalibMethod.PERCENTILE, bins=64)
    reference = calibrate(_conv_model(), folder, spec=spec, batch_size=2, overlap=not overlap, progress=False)
    table = calibrate(_conv_model(), folder, spec=spec, batch_size=2, overlap=overlap, progress=False)
    assert table.samples == 7
    assert {n: s.to_dict() for n, s in table.stats.items()} == {n: s.to_dict() for n, s in reference.stats.items()}


def test_overlapped_run_still_names_the_nan(tmp_path):
    rows = np.ones((3, 3, 5, 5), np.float32)
    rows[2, 0, 0, 0] = 0.0
    write_samples(tmp_path / "d", rows)
    with pytest.raises(CalibrationError, match="activation 'd' holds NaN.*s002.npy"):
        calibrate(_conv_model(divide=True), tmp_path / "d", spec=CalibrationSpec(method=CalibMethod.ENTROPY),
                  overlap=True, progress=False)
