"""The isolated per-node sensitivity of --per-layer: one quantized node on at a time."""

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from ptq_cli.cli import main
from ptq_cli.comparison.api import compare_batches
from ptq_cli.drift.layers import match_layers
from ptq_cli.drift.sensitivity import measure_sensitivity
from ptq_cli.drift.switches import FloatBase
from ptq_cli.data import Batch
from tests.compare.models import fake_quant, make_qdq, mlp, ranges


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def _coarse(model: onnx.ModelProto, weight: str) -> onnx.ModelProto:
    """The candidate with `weight` quantized on 2 levels either side of zero: one broken layer."""
    out = copy.deepcopy(model)
    inits = {t.name: t for t in out.graph.initializer}
    q = numpy_helper.to_array(inits[f"{weight}_q"]).astype(np.float32) * 0.02
    scale = float(np.abs(q).max()) / 2
    inits[f"{weight}_q"].CopyFrom(numpy_helper.from_array(np.rint(q / scale).astype(np.int8), f"{weight}_q"))
    inits[f"{weight}_s"].CopyFrom(numpy_helper.from_array(np.array(scale, np.float32), f"{weight}_s"))
    onnx.checker.check_model(out, full_check=True)
    return out


def _case(rng, bad: str | None = None):
    model = mlp(rng, hidden=16, classes=10)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    scales = ranges(model, {"x": x})
    cand = make_qdq(model, scales).model
    return model, (_coarse(cand, bad) if bad else cand), x, scales


def _sensitivity(model, cand, x, samples=40, batch=8, batch_free=True):
    feeds = [{"x": x[i:i + batch]} for i in range(0, len(x), batch)]
    return measure_sensitivity(model, cand, match_layers(model, cand), feeds, [("y", "y")],
                               max_samples=samples, batch_free=batch_free)


@pytest.mark.parametrize("bad, node", [("w1", "fc1"), ("w2", "fc2")])
def test_the_badly_quantized_layer_is_ranked_first(rng, bad, node):
    model, cand, x, _ = _case(rng, bad)
    before = copy.deepcopy(cand)
    report = _sensitivity(model, cand, x)
    assert [r.node for r in report.rows][0] == node
    assert {r.node for r in report.rows} == {"fc1", "bias1", "act1", "fc2"}
    first, second = report.rows[0], report.rows[1]
    assert first.sqnr_db < second.sqnr_db - 10        # not a close call
    assert report.offenders()[0].node == node and report.fixed == ()
    assert cand == before                              # variants are made from a copy


def test_isolated_sqnr_of_the_last_layer_matches_numpy(rng):
    """Only fc2 quantized: y = fq(relu1) @ fq(w2), everything upstream in float."""
    model, cand, x, scales = _case(rng)
    report = _sensitivity(model, cand, x)
    row = next(r for r in report.rows if r.node == "fc2")
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    relu1 = np.maximum(x @ w["w1"] + w["b1"], 0)
    y = relu1 @ w["w2"]
    yq = fake_quant(relu1, scales["relu1"]) @ fake_quant(w["w2"], 0.02)
    expected = 10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum((y - yq).astype(np.float64) ** 2))
    assert row.sqnr_db == pytest.approx(expected, abs=0.01)
    assert row.op_type == "MatMul" and report.samples == 40
    assert row.top1_agreement == pytest.approx(np.mean(y.argmax(1) == yq.argmax(1)))


def test_float_base_reproduces_the_reference(rng):
    """With every node switched off, nothing is quantized: the weights are the reference's own."""
    model, cand, x, _ = _case(rng, "w1")
    base = FloatBase(model, cand, match_layers(model, cand))
    assert [n.name for n in base.nodes] == ["fc1", "bias1", "act1", "fc2"]
    assert [len(n.quantized_inputs) for n in base.nodes] == [2, 2, 1, 2]
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(base.model.SerializeToString()), run(model.SerializeToString()), rtol=1e-6)
    onnx.checker.check_model(base.model, full_check=True)
    variant = onnx.load_from_string(base.variant(0))
    assert list(variant.graph.node[[n.name for n in variant.graph.node].index("fc1")].input) == ["x_dqa", "w1_dq"]
    assert base.variant(1) != base.variant(0) and base.variant(0) == base.variant(0)   # restored in between


def test_variants_built_on_several_threads_are_the_single_threaded_ones(rng):
    """The ranking builds variants on as many threads as it runs sessions: each must hold its own
    node quantized and no other (a race here changed PP-OCRv4's ranking, so its file, run to run)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    model, cand, _, _ = _case(rng, "w1")
    base = FloatBase(model, cand, match_layers(model, cand))
    expected = [base.variant(k) for k in range(len(base.nodes))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        with ThreadPoolExecutor(4) as pool:
            ks = [k for _ in range(150) for k in range(len(base.nodes))]
            built = list(pool.map(base.variant, ks))
    finally:
        sys.setswitchinterval(interval)
    assert [k for k, got in zip(ks, built) if got != expected[k]] == []
    assert len(set(expected)) == len(expected)


def test_weights_without_a_float_original_stay_quantized_and_are_listed(rng):
    model, cand, x, _ = _case(rng)
    other = copy.deepcopy(model)   # the reference's w2 has another shape: not the same constant
    for t in other.graph.initializer:
        if t.name == "w2":
            t.CopyFrom(numpy_helper.from_array(np.zeros((16, 3), np.float32), "w2"))
    base = FloatBase(other, cand, match_layers(other, cand))
    fc2 = next(n for n in base.nodes if n.name == "fc2")
    assert (len(fc2.quantized_inputs), fc2.fixed) == (1, 1)


def test_sample_limit_and_whole_batches_for_fixed_batch_models(rng):
    model, cand, x, _ = _case(rng)
    assert _sensitivity(model, cand, x, samples=10).samples == 10
    assert _sensitivity(model, cand, x, samples=10, batch_free=False).samples == 16   # two whole batches of 8


def test_compare_reports_sensitivity_and_an_exclude_line(rng, tmp_path):
    model, cand, x, _ = _case(rng, "w2")
    batches = [Batch({"x": x[i:i + 4]}, tuple(str(j) for j in range(i, i + 4))) for i in range(0, 40, 4)]
    report = compare_batches(model, cand, batches, per_layer=True, per_layer_samples=12)
    assert report.layers.sensitivity.samples == 12
    assert report.layers.sensitivity.rows[0].node == "fc2"
    assert report.to_dict()["layers"]["sensitivity"]["suggested_exclude"][0] == "fc2"
    onnx.save(model, tmp_path / "ref.onnx")
    onnx.save(cand, tmp_path / "cand.onnx")
    (tmp_path / "data").mkdir()
    for i, row in enumerate(x[:12]):
        np.save(tmp_path / "data" / f"{i:02d}.npy", row[None])
    result = CliRunner().invoke(main, ["compare", str(tmp_path / "ref.onnx"), str(tmp_path / "cand.onnx"),
                                       "--data", str(tmp_path / "data"), "-q", "--per-layer",
                                       "--per-layer-samples", "5", "--markdown", str(tmp_path / "r.md")],
                                env={"GITHUB_STEP_SUMMARY": None})
    assert result.exit_code == 0, result.output
    assert "only this node quantized, worst first (5 samples)" in result.stdout
    assert "\n  --exclude fc2" in result.stdout
    assert "```\n--exclude fc2" in (tmp_path / "r.md").read_text()


def test_a_quantized_graph_output_read_by_another_node(rng):
    """relu1 is a graph output that the quantizer made a DequantizeLinear output, and fc2 reads it."""
    model = mlp(rng, hidden=16, classes=10)
    model.graph.output.append(onnx.helper.make_tensor_value_info("relu1", onnx.TensorProto.FLOAT, ["N", 16]))
    x = rng.normal(size=(16, 4)).astype(np.float32)
    scales = ranges(model, {"x": x})
    cand = make_qdq(model, scales).model
    base = FloatBase(model, cand, match_layers(model, cand))
    onnx.checker.check_model(base.model, full_check=True)
    run = lambda m: ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {"x": x})  # noqa: E731
    for got, want in zip(run(base.model.SerializeToString()), run(model.SerializeToString())):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    k = [n.name for n in base.nodes].index("fc2")
    fc2_only, reference = run(base.variant(k)), run(model.SerializeToString())
    np.testing.assert_allclose(fc2_only[1], reference[1], rtol=1e-6)   # relu1 itself stays float
    w2 = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "w2")
    expected = fake_quant(reference[1], scales["relu1"]) @ fake_quant(w2, 0.02)   # fc2 reads the quantized relu1
    np.testing.assert_allclose(fc2_only[0], expected, rtol=1e-5, atol=1e-5)
