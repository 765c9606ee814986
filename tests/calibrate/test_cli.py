import json

import numpy as np
import onnx
from click.testing import CliRunner

from ptq_cli.calibration import CalibrationTable
from ptq_cli.cli import main

from .conftest import reference_tensors, tiny_model, write_samples


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_calibrate_writes_default_table_and_json_summary(model_path, data_dir, samples):
    result = _run("calibrate", model_path, "--data", data_dir, "--method", "percentile", "--json")
    assert result.exit_code == 0, result.output
    out = model_path.with_name("tiny.calib.json")
    summary = json.loads(result.stdout)
    assert summary["output"] == str(out) and summary["samples"] == 12 and summary["method"] == "percentile"
    assert "calibrated 4 tensors on 12 samples" in result.stderr
    table = CalibrationTable.load(out)
    assert table.range("y") == tuple(summary["ranges"]["y"])
    assert table.stats["y"].minmax.max == float(reference_tensors(samples)["y"].max())
    again = _run("calibrate", model_path, "--data", data_dir)
    assert again.exit_code == 2 and "already exists; pass --force" in again.stderr
    assert _run("calibrate", model_path, "--data", data_dir, "--force").exit_code == 0
    assert _run("calibrate", model_path, "--data", data_dir, "-f").exit_code == 0  # as quantize -f


def test_shards_then_merge(model_path, data_dir, tmp_path):
    for k in range(2):
        result = _run("calibrate", model_path, "--data", data_dir, "--method", "entropy", "--bins", 32,
                      "--shard", f"{k}/2")
        assert result.exit_code == 0, result.output
    single = tmp_path / "single.json"
    assert _run("calibrate", model_path, "--data", data_dir, "--method", "entropy", "--bins", 32,
                "-o", single).exit_code == 0
    shards = sorted(tmp_path.glob("tiny.calib.shard-*-of-2.json"))
    assert len(shards) == 2
    merged = tmp_path / "merged.json"
    result = _run("calibrate", "merge", *shards, "-o", merged, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 12
    a, b = CalibrationTable.load(single).to_dict(), CalibrationTable.load(merged).to_dict()
    assert a["tensors"] == b["tensors"]


def test_merge_refuses_tables_of_different_models(model_path, data_dir, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save(tiny_model(batch=1), str(other))
    assert _run("calibrate", model_path, "--data", data_dir, "-o", tmp_path / "a.json").exit_code == 0
    assert _run("calibrate", other, "--data", data_dir, "-o", tmp_path / "b.json").exit_code == 0
    result = _run("calibrate", "merge", tmp_path / "a.json", tmp_path / "b.json", "-o", tmp_path / "m.json")
    assert result.exit_code == 3 and "different models" in result.stderr
    assert not (tmp_path / "m.json").exists()


def test_usage_errors_exit_2(model_path, data_dir, tmp_path):
    bad_shard = _run("calibrate", model_path, "--data", data_dir, "--shard", "2/2")
    assert bad_shard.exit_code == 2 and "0 <= K < N" in bad_shard.output
    no_data = _run("calibrate", model_path)
    assert no_data.exit_code == 2 and "--data" in no_data.output
    provider = _run("calibrate", model_path, "--data", data_dir, "--provider", "NoSuchProvider")
    assert provider.exit_code == 2 and "not available" in provider.stderr
    merge_nothing = _run("calibrate", "merge", "-o", tmp_path / "m.json")
    assert merge_nothing.exit_code == 2


def test_nan_activation_exits_3_naming_the_tensor(tmp_path):
    model = tmp_path / "log.onnx"
    onnx.save(tiny_model(log=True), str(model))
    write_samples(tmp_path / "d", np.array([[-3, 1, 0, 0]], np.float32))
    result = _run("calibrate", model, "--data", tmp_path / "d")
    assert result.exit_code == 3 and "activation 'z' holds NaN" in result.stderr
    assert not model.with_name("log.calib.json").exists()
