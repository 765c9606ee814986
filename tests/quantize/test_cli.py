"""`ptq quantize` end to end through the CLI and the Python API: outputs, summaries, metadata,
and every bad input ending in one clear line, a non-zero exit and no output file."""

import json
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import ptq_cli
from ptq_cli.cli import main
from tests.conftest import REPO, image_batches, run, sqnr_db, tiny_conv_relu

SAMPLE = REPO / "sample_models" / "digits_cnn.onnx"
CALIB = REPO / "calibration" / "digits" / "calib"


@pytest.fixture
def workdir(tmp_path):
    shutil.copy(SAMPLE, tmp_path / "model.onnx")
    return tmp_path


def _npy_folder(folder, batches):
    folder.mkdir()
    for i, feeds in enumerate(batches):
        np.save(folder / f"{i}.npy", feeds["x"])
    return folder


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_quantize_sample_model_writes_default_output_with_metadata(workdir):
    model = workdir / "model.onnx"
    before = model.read_bytes()
    result = _invoke("quantize", model, "--data", CALIB, "--json", "-q")
    assert result.exit_code == 0, result.output
    out = workdir / "model.int8.onnx"
    report = json.loads(result.stdout)
    assert report["output"] == str(out) and report["skipped"] == []
    assert "/conv1/Conv" in report["quantized"] and report["size_after"] < report["size_before"]
    assert model.read_bytes() == before
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["ptq.version"] == ptq_cli.__version__
    assert json.loads(meta["ptq.recipe"]) == ptq_cli.Recipe().to_dict()
    import hashlib

    assert meta["ptq.source_sha256"] == hashlib.sha256(before).hexdigest()
    # Accuracy on the shipped evaluation set stays close to FP32.
    data = np.load(REPO / "calibration" / "digits" / "eval.npz")
    fp32 = run(onnx.load(str(model)), {"input": data["input"]})[0].argmax(1)
    int8 = run(q, {"input": data["input"]})[0].argmax(1)
    assert (int8 == data["labels"]).mean() >= (fp32 == data["labels"]).mean() - 0.02
    # Same inputs, same recipe: byte-identical output.
    again = _invoke("quantize", model, "--data", CALIB, "-o", workdir / "again.onnx", "-q")
    assert again.exit_code == 0 and (workdir / "again.onnx").read_bytes() == out.read_bytes()


def test_summary_lists_skipped_nodes_with_reasons(workdir):
    result = _invoke("quantize", workdir / "model.onnx", "--data", CALIB, "--exclude", "Gemm")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr and "Gemm: excluded by --exclude" in result.stderr


def test_existing_output_needs_force(workdir):
    out = workdir / "model.int8.onnx"
    out.write_bytes(b"keep me")
    result = _invoke("quantize", workdir / "model.onnx", "--data", CALIB)
    assert result.exit_code == 2
    assert "already exists; pass --force" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert _invoke("quantize", workdir / "model.onnx", "--data", CALIB, "--force", "-q").exit_code == 0
    assert out.read_bytes() != b"keep me"


def test_refuses_to_write_over_the_input(workdir):
    model = workdir / "model.onnx"
    before = model.read_bytes()
    result = _invoke("quantize", model, "--data", CALIB, "-o", model, "--force")
    assert result.exit_code == 2 and "input" in result.stderr
    assert model.read_bytes() == before


@pytest.mark.parametrize("content", [b"not a model at all", None])
def test_corrupt_or_truncated_model(workdir, content):
    bad = workdir / "bad.onnx"
    bad.write_bytes(content if content is not None else SAMPLE.read_bytes()[:1000])
    result = _invoke("quantize", bad, "--data", CALIB)
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptq: error:") and "bad.onnx" in lines[0]
    assert list(workdir.glob("bad.int8*")) == [] and not list(workdir.glob(".*tmp"))


def test_empty_and_mismatched_data(workdir):
    empty = workdir / "empty"
    empty.mkdir()
    result = _invoke("quantize", workdir / "model.onnx", "--data", empty)
    assert result.exit_code == 3 and "ptq: error:" in result.stderr
    wrong = workdir / "wrong"
    wrong.mkdir()
    np.save(wrong / "a.npy", np.zeros((1, 3, 8, 8), np.float32))
    result = _invoke("quantize", workdir / "model.onnx", "--data", wrong)
    assert result.exit_code == 3 and "a.npy" in result.stderr
    assert not (workdir / "model.int8.onnx").exists()


def test_nan_in_an_activation_names_the_tensor(tmp_path, rng):
    # log(x) of a negative input is NaN inside the graph, not in the data.
    from onnx import TensorProto, helper

    from tests.conftest import make_model

    nodes = [helper.make_node("Log", ["x"], ["l"], name="log"), helper.make_node("Relu", ["l"], ["y"], name="relu")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(model, str(tmp_path / "log.onnx"))
    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "0.npy", np.float32([[-1, 1, 2, 3]]))
    result = _invoke("quantize", tmp_path / "log.onnx", "--data", data)
    assert result.exit_code == 3 and "'l'" in result.stderr and "NaN" in result.stderr
    assert not (tmp_path / "log.int8.onnx").exists()


def test_version_and_help():
    assert _invoke("--version").output.strip().endswith(ptq_cli.__version__)
    text = _invoke("quantize", "--help").output
    for flag in ("--per-channel / --per-tensor", "--weight-type", "--activation-type", "--symmetric-activations",
                 "--reduce-range", "--exclude", "--force", "--json", "--calibration", "--method"):
        assert flag in text


def test_python_api_with_a_model_proto(rng, tmp_path):
    model = tiny_conv_relu(rng)
    batches = image_batches(rng, n=6)
    data = _npy_folder(tmp_path / "data", batches)
    recipe = ptq_cli.Recipe(weights=ptq_cli.TensorSpec(granularity=ptq_cli.PerTensor()))
    result = ptq_cli.quantize(model, tmp_path / "out.onnx", data=data, recipe=recipe, progress=False)
    assert result.output.exists() and result.recipe == recipe
    assert sqnr_db(run(model, batches[0])[0], run(result.model, batches[0])[0]) > 25


def test_clipping_methods_keep_the_full_range_of_inputs_and_scores(rng, tmp_path):
    from onnx import numpy_helper

    from ptq_cli.model.prepare import prepare
    from tests.conftest import minmax_ranges

    model = tiny_conv_relu(rng)
    batches = image_batches(rng, n=6)
    data = _npy_folder(tmp_path / "data", batches)
    spec = ptq_cli.CalibrationSpec(method=ptq_cli.CalibMethod.PERCENTILE, percentile=90.0)
    # 90 % clips hard enough to miss the default drift budget; the ranges are what is tested here.
    from ptq_cli.quantization.placement.budget import MEASURE_ONLY

    result = ptq_cli.quantize(model, data=data, recipe=ptq_cli.Recipe(calibration=spec), progress=False,
                              budget=MEASURE_ONLY)
    scales = {t.name: float(numpy_helper.to_array(t)) for t in result.model.graph.initializer
              if t.name.endswith("_scale") and not t.dims}
    q_input = {n.input[0]: n.input[1] for n in result.model.graph.node if n.op_type == "QuantizeLinear"}
    full = minmax_ranges(prepare(model), batches)
    lo, hi = full["y"]
    y_source = next(n.output[0] for n in result.model.graph.node if n.name == "fc")
    assert scales[q_input[y_source]] == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=1e-6)
    x_lo, x_hi = full["x"]
    assert scales[q_input["x"]] == pytest.approx((x_hi - x_lo) / 255, rel=1e-6)
    assert scales[q_input["r1"]] < 0.9 * full["r1"][1] / 255  # inside the network, 90 % clips
