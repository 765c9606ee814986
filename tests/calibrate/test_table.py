import json

import pytest

from ptq_cli.calibration import CalibrationTable, calibrate, merge, model_sha256
from ptq_cli.errors import CalibrationError, OutputExistsError
from ptq_cli.recipe import CalibMethod, CalibrationSpec

from .conftest import tiny_model


@pytest.fixture
def table(model_path, data_dir):
    return calibrate(model_path, data_dir, spec=CalibrationSpec(method=CalibMethod.MSE, bins=64,
                                                                moving_average=0.1), progress=False)


def test_json_round_trip(table, tmp_path):
    path = table.save(tmp_path / "t.json")
    raw = json.loads(path.read_text())
    assert raw["format"] == "ptq-calibration" and raw["version"] == 1
    assert raw["calibration"] == {"method": "mse", "percentile": 99.999, "bins": 64, "moving_average": 0.1}
    back = CalibrationTable.load(path)
    assert back.to_dict() == table.to_dict()
    assert back.range("y") == table.range("y")
    with pytest.raises(OutputExistsError, match="--force"):
        table.save(path)
    table.save(path, force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left over


def test_sha_is_the_file_sha(table, model_path):
    assert table.model_sha256 == model_sha256(model_path)
    table.check_model(model_sha256(model_path))


def test_mismatched_model_is_refused(table):
    other = tiny_model(batch=1)
    with pytest.raises(CalibrationError, match="table was made for another model .*recalibrate with ptq calibrate"):
        table.check_model(model_sha256(other))
    foreign = CalibrationTable.build(model_sha256(other), table.spec, {})
    with pytest.raises(CalibrationError, match="different models"):
        merge([table, foreign])


def test_with_method_recomputes_from_stats(model_path, data_dir):
    collected = calibrate(model_path, data_dir, spec=CalibrationSpec(method=CalibMethod.ENTROPY, bins=64),
                          progress=False)
    direct = calibrate(model_path, data_dir, spec=CalibrationSpec(method=CalibMethod.PERCENTILE, bins=64,
                                                                  percentile=99.0), progress=False)
    switched = collected.with_method(CalibrationSpec(method=CalibMethod.PERCENTILE, percentile=99.0, bins=64))
    assert switched.ranges == direct.ranges
    minmax_only = calibrate(model_path, data_dir, progress=False)
    with pytest.raises(CalibrationError, match="needs histograms"):
        minmax_only.with_method(CalibrationSpec(method=CalibMethod.ENTROPY))
    kept = calibrate(model_path, data_dir, histograms=True, progress=False)
    clipped = kept.with_method(CalibrationSpec(method=CalibMethod.PERCENTILE, percentile=80.0))
    assert kept.range("y")[0] < clipped.range("y")[0] < clipped.range("y")[1] < kept.range("y")[1]


def test_damaged_or_foreign_json_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(CalibrationError, match="not a ptq calibration table"):
        CalibrationTable.load(bad)
    bad.write_text('{"format": "ptq-calibration", "version": 2}')
    with pytest.raises(CalibrationError, match="version 2"):
        CalibrationTable.load(bad)
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="not valid JSON"):
        CalibrationTable.load(bad)
