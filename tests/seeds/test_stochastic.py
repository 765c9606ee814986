"""Stochastic rounding of weights: unbiased in expectation, reproducible for a seed, recorded."""

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from ptq_cli.cli import main
from ptq_cli.errors import UsageError
from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.api import quantize_model
from ptq_cli.quantization.emitters.dynamic import emit_dynamic
from ptq_cli.quantization.placement.place import make_plan
from ptq_cli.quantization.arithmetic.scheme import compute_qparams, dequantize, quantize
from ptq_cli.recipe import Format, QType, Recipe, Rounding
from tests.conftest import image_batches, minmax_ranges, run, sqnr_db, tiny_conv_relu

STOCHASTIC = Recipe(rounding=Rounding.STOCHASTIC, seed=7)


def test_mean_of_many_draws_converges_to_the_float_value():
    values = np.array([0.3, -0.3, 0.05, 1.7, -2.45, 0.999], np.float32)
    qp = compute_qparams(-4.0, 4.0, QType.INT8, symmetric=True)  # S = 4/127: values sit between steps
    draws = 20000
    copies = np.broadcast_to(values, (draws, values.size))  # one draw per row
    mean = dequantize(quantize(copies, qp, rng=np.random.default_rng(1)), qp).astype(np.float64).mean(axis=0)
    step = float(qp.scale)
    # Each draw is off by at most one step, std <= step/2: the mean is within 5 standard errors.
    assert np.all(np.abs(mean - values) < 5 * 0.5 * step / np.sqrt(draws))
    nearest = dequantize(quantize(values, qp), qp)
    assert np.max(np.abs(nearest - values)) > 0.2 * step  # nearest is biased on these values


def test_weight_integers_are_floor_or_ceil_and_unbiased_over_seeds(rng):
    model = prepare(tiny_conv_relu(rng))
    ranges = minmax_ranges(model, image_batches(rng, n=2))
    plans = [make_plan(model, Recipe(rounding=Rounding.STOCHASTIC, seed=s), ranges) for s in range(200)]
    weight = plans[0].weights[("conv2", "w2")]
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    scaled = w / weight.params.scale.reshape(-1, 1, 1, 1)
    ints = np.stack([p.weights[("conv2", "w2")].integers(w).astype(np.float64) for p in plans])
    assert np.all((ints == np.floor(scaled)) | (ints == np.ceil(scaled)))
    # Unbiased: the mean integer approaches r / S (per-element std <= 1/2 over 400 seeds).
    assert np.max(np.abs(ints.mean(axis=0) - scaled)) < 5 * 0.5 / np.sqrt(len(plans))
    assert np.abs(ints.mean(axis=0) - scaled).mean() < 0.05
    # Different seeds draw differently; two tensors of one seed draw independently.
    assert not np.array_equal(ints[0], ints[1])


@pytest.mark.parametrize("fmt", [Format.QDQ, Format.QOPERATOR])
def test_a_seed_reproduces_the_model_byte_for_byte(rng, fmt):
    model = tiny_conv_relu(rng)
    before = model.SerializeToString()
    batches = image_batches(rng)
    ranges = minmax_ranges(prepare(model), batches)
    recipe = STOCHASTIC.with_(format=fmt)
    first, _ = quantize_model(model, recipe, ranges)
    again, _ = quantize_model(model, recipe, ranges)
    other, _ = quantize_model(model, recipe.with_(seed=8), ranges)
    nearest, _ = quantize_model(model, recipe.with_(rounding=Rounding.NEAREST), ranges)
    assert model.SerializeToString() == before
    onnx.checker.check_model(first, full_check=True)
    assert first.SerializeToString() == again.SerializeToString()
    assert first.SerializeToString() != other.SerializeToString()
    assert first.SerializeToString() != nearest.SerializeToString()
    feeds = batches[0]
    ref = run(model, feeds)[0]
    assert sqnr_db(ref, run(first, feeds)[0]) > 20  # still a faithful model, a little noisier than nearest
    assert sqnr_db(ref, run(nearest, feeds)[0]) > 20


def test_dynamic_weights_round_stochastically_and_reproduce(rng):
    model = prepare(tiny_conv_relu(rng))
    emitted = emit_dynamic(model, STOCHASTIC)
    first, done = emitted.model, emitted.quantized
    again = emit_dynamic(model, STOCHASTIC).model
    nearest = emit_dynamic(model, Recipe()).model
    assert first.SerializeToString() == again.SerializeToString() != nearest.SerializeToString()
    assert "fc" in done
    feeds = image_batches(rng, n=1)[0]
    assert sqnr_db(run(model, feeds)[0], run(first, feeds)[0]) > 20


def test_recipe_records_rounding_and_seed_and_refuses_bad_values():
    data = STOCHASTIC.to_dict()
    assert data["rounding"] == "stochastic" and data["seed"] == 7
    assert Recipe.from_dict(json.loads(json.dumps(data))) == STOCHASTIC
    with pytest.raises(UsageError, match="rounding must be one of"):
        Recipe.from_dict({"rounding": "up"})
    with pytest.raises(UsageError, match="seed must be a non-negative integer"):
        Recipe(seed=-1)


def test_cli_stochastic_rounding_is_recorded_and_reproducible(tmp_path, rng):
    model = tmp_path / "m.onnx"
    onnx.save(tiny_conv_relu(rng), str(model))
    data = tmp_path / "calib"
    data.mkdir()
    for i, feeds in enumerate(image_batches(rng, n=3)):
        np.save(data / f"{i}.npy", feeds["x"])
    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / f"{name}.onnx"
        result = CliRunner().invoke(main, ["quantize", str(model), "--data", str(data), "-o", str(out), "-q",
                                           "--rounding", "stochastic", "--seed", str(seed)])
        assert result.exit_code == 0, result.output
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] != outs[2]
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "a.onnx")).metadata_props}
    recipe = json.loads(meta["ptq.recipe"])
    assert recipe["rounding"] == "stochastic" and recipe["seed"] == 5
    bad = CliRunner().invoke(main, ["quantize", str(model), "--data", str(data), "-o", str(tmp_path / "d.onnx"),
                                    "--seed", "-3"])
    assert bad.exit_code == 2 and not (tmp_path / "d.onnx").exists()
