"""Model I/O: loading with external data, refusals, atomic saves, and the recipe's JSON round trip."""

import copy

import numpy as np
import onnx
import pytest

from ptq_cli.errors import ModelError, OutputExistsError, PtqError, UsageError
from ptq_cli.model.io import input_specs, load_model, save_model
from ptq_cli.recipe import (CalibMethod, CalibrationSpec, Format, PerChannel, PerTensor, QType, Recipe,
                            TensorSpec)
from tests.conftest import run, tiny_conv_relu


def test_external_data_round_trip(rng, tmp_path):
    model = tiny_conv_relu(rng)
    path = tmp_path / "ext.onnx"
    onnx.save_model(copy.deepcopy(model), str(path), save_as_external_data=True, location="ext.data",
                    size_threshold=0)  # (save_model moves the data out of the proto it is given)
    loaded = load_model(path)
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(loaded, {"x": x})[0], run(model, {"x": x})[0])
    assert [s.describe() for s in input_specs(loaded)] == ["x [?,3,8,8] float32"]


def test_refusals(tmp_path, rng):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelError, match="junk.onnx"):
        load_model(tmp_path / "junk.onnx")
    model = tiny_conv_relu(rng)
    model.graph.node[0].input[1] = "nowhere"  # a dangling input: invalid
    onnx.save(model, str(tmp_path / "invalid.onnx"))
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        load_model(tmp_path / "invalid.onnx")


def test_save_is_atomic_and_refuses_overwrite(rng, tmp_path, monkeypatch):
    model = tiny_conv_relu(rng)
    path = tmp_path / "out.onnx"
    save_model(model, path)
    with pytest.raises(OutputExistsError):
        save_model(model, path)
    save_model(model, path, force=True)
    with pytest.raises(UsageError, match="input"):
        save_model(model, path, force=True, protect=(path,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temp files left


    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr("ptq_cli.model.io.os.replace", fail)
    with pytest.raises(PtqError, match="half.onnx"):
        save_model(model, tmp_path / "half.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # nothing half-written


def test_recipe_round_trips_through_json_and_rejects_unknown_keys():
    import json

    recipe = Recipe(weights=TensorSpec(QType.INT4, symmetric=True, granularity=PerChannel(axis=1)),
                    activations=TensorSpec(QType.INT16, symmetric=True, granularity=PerTensor(), power_of_two=True),
                    format=Format.QOPERATOR, exclude=("conv1", "Softmax"),
                    calibration=CalibrationSpec(method=CalibMethod.PERCENTILE, percentile=99.99, bins=512))
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert Recipe.from_dict(Recipe().to_dict()) == Recipe()
    with pytest.raises(UsageError, match="unknown key"):
        Recipe.from_dict({"weigths": {}})
    with pytest.raises(UsageError, match="must be one of"):
        Recipe.from_dict({"weights": {"dtype": "int7"}})
    with pytest.raises(UsageError, match="per tensor"):
        Recipe(activations=TensorSpec(QType.UINT8, False, PerChannel()))


def test_large_models_are_saved_with_external_data(rng, tmp_path, monkeypatch):
    """Above protobuf's 2 GB limit the weights go to MODEL.onnx.data; the limit is lowered here."""
    monkeypatch.setattr("ptq_cli.model.io._TWO_GB", 1000)
    model = tiny_conv_relu(rng, channels=32)
    before = model.SerializeToString()
    path = save_model(model, tmp_path / "big.onnx")
    assert model.SerializeToString() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert path.stat().st_size < (tmp_path / "big.onnx.data").stat().st_size / 10  # weights are outside
    loaded = load_model(path)
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(loaded, {"x": x})[0], run(model, {"x": x})[0])
