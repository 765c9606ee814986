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


def test_lazy_external_weights_round_trip_and_stream_to_external_data(rng, tmp_path):
    """A model loaded lazily keeps its weights on disk; sessions and saves still see them, and the
    streaming writer puts every tensor in one .data file that onnxruntime loads."""
    from ptq_cli.calibration.table import model_sha256
    from ptq_cli.model.external import is_external, write_with_external_data
    from ptq_cli.model.sessions import open_session

    model = tiny_conv_relu(rng, channels=32)
    path = tmp_path / "src.onnx"
    onnx.save_model(copy.deepcopy(model), str(path), save_as_external_data=True, location="src.data", size_threshold=0)
    loaded = load_model(path, lazy=True)
    assert any(is_external(t) for t in loaded.graph.initializer)
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    want = run(model, {"x": x})[0]
    np.testing.assert_array_equal(open_session(loaded).run(None, {"x": x})[0], want)
    from ptq_cli.model.external import serialized

    np.testing.assert_array_equal(run(onnx.load_from_string(serialized(loaded)), {"x": x})[0], want)
    inline = save_model(loaded, tmp_path / "inline.onnx")  # small enough: one self-contained file
    np.testing.assert_array_equal(run(onnx.load(str(inline)), {"x": x})[0], want)
    structure = write_with_external_data(loaded, tmp_path / "out.onnx.data", "out.onnx.data")
    (tmp_path / "out.onnx").write_bytes(structure.SerializeToString())
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)
    np.testing.assert_array_equal(run(onnx.load(str(tmp_path / "out.onnx")), {"x": x})[0], want)
    assert (tmp_path / "out.onnx").stat().st_size < 2000
    before = model_sha256(path)
    with open(tmp_path / "src.data", "r+b") as f:
        f.seek(100)
        f.write(b"\x01\x02\x03\x04")
    assert model_sha256(path) != before  # a calibration table's identity covers the .data file


def test_a_model_over_2gb_loads_lazily_is_typed_and_hashed_with_its_data(tmp_path):
    """The real limit: 2.15 GB of weights in a sparse .data file (no memory, no disk used)."""
    from onnx import TensorProto, helper

    from ptq_cli.model.external import PROTOBUF_LIMIT, fits_in_protobuf, model_size
    from ptq_cli.model.prepare import prepare_with_result

    n = 67_200_000  # an [8, n] float32 weight: 2.15 GB
    weight = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[8, n])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "big.data"), ("offset", "0"), ("length", str(8 * n * 4))):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "big.onnx"))
    with open(tmp_path / "big.data", "wb") as f:
        f.truncate(8 * n * 4)  # sparse
    loaded = load_model(tmp_path / "big.onnx")  # lazy by default at this size
    size = model_size(loaded)
    assert size.total > PROTOBUF_LIMIT and fits_in_protobuf(loaded)
    prepared = prepare_with_result(loaded).model
    types = {v.name: v.type.tensor_type for v in [*prepared.graph.value_info, *prepared.graph.output]}
    assert types["m"].elem_type == TensorProto.FLOAT and [d.dim_value for d in types["m"].shape.dim] == [1, n]
    assert prepared.graph.initializer[0].data_location == TensorProto.EXTERNAL  # still on disk


def test_save_with_external_data_on_request_is_atomic_and_loads(rng, tmp_path):
    from ptq_cli.model.sessions import open_session

    model = tiny_conv_relu(rng, channels=32)
    path = save_model(model, tmp_path / "ext.onnx", external=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    onnx.checker.check_model(str(path), full_check=True)
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    lazy = load_model(path, lazy=True)
    np.testing.assert_array_equal(open_session(lazy).run(None, {"x": x})[0], run(model, {"x": x})[0])
