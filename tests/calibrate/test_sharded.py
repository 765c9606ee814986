"""The sharded calibration path on the in-process engine: no Dask needed, so it also runs under
CI's qemu pass (tests/distributed/ repeats it on a real LocalCluster)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ptq_cli.calibration.api import calibrate
from ptq_cli.engine import EngineSpec, open_engine
from ptq_cli.errors import UsageError
from ptq_cli.recipe import CalibMethod, CalibrationSpec
from tests.conftest import tiny_conv_relu


@pytest.fixture
def conv_data(tmp_path):
    model = tmp_path / "conv.onnx"
    onnx.save(tiny_conv_relu(np.random.default_rng(1)), str(model))
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(11):
        np.save(folder / f"s{i:02d}.npy", (rng.standard_normal((1 + i % 3, 3, 8, 8)) * (1 + i % 4)).astype(np.float32))
    return model, folder


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_parts_on_the_local_engine_give_the_single_runs_table_bytes(conv_data, tmp_path, parts):
    model, folder = conv_data
    options = dict(spec=CalibrationSpec(method=CalibMethod.PERCENTILE, bins=64), batch_size=2, grams=True,
                   progress=False, max_samples=19)
    calibrate(model, folder, **options).save(tmp_path / "one.json")
    with open_engine(EngineSpec("local")) as engine:
        calibrate(model, folder, engine=engine, parts=parts, **options).save(tmp_path / "parts.json")
    assert (tmp_path / "parts.json").read_bytes() == (tmp_path / "one.json").read_bytes()


def test_the_engine_refuses_what_it_cannot_merge_exactly(conv_data):
    model, folder = conv_data
    with open_engine(EngineSpec("local")) as engine:
        with pytest.raises(UsageError, match="moving-average"):
            calibrate(model, folder, engine=engine, spec=CalibrationSpec(moving_average=0.1), progress=False)
        with pytest.raises(UsageError, match="--shard"):
            calibrate(model, folder, engine=engine, shard=(0, 2), progress=False)
    with pytest.raises(UsageError, match="engine 'ray'"):
        EngineSpec("ray")


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_parts_give_the_single_table_when_batches_differ_by_orders_of_magnitude(tmp_path, parts):
    """Batches 10^6 apart in scale: plain float64 subtotals of the channel means and Gram
    matrices differ in the last bits from one sequential sum (the bench on 10,000 images saw it);
    the error-carrying sums (calibration/sums.py) give the same table for any split."""
    model = tmp_path / "conv.onnx"
    onnx.save(tiny_conv_relu(np.random.default_rng(1)), str(model))
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(40):
        scale = (1e3, 1e-3, 7.0, 1e-2)[i % 4]
        np.save(folder / f"s{i:02d}.npy", (rng.standard_normal((1, 3, 8, 8)) * scale).astype(np.float32))
    options = dict(grams=True, progress=False)
    calibrate(model, folder, **options).save(tmp_path / "one.json")
    with open_engine(EngineSpec("local")) as engine:
        calibrate(model, folder, engine=engine, parts=parts, **options).save(tmp_path / "parts.json")
    assert (tmp_path / "parts.json").read_bytes() == (tmp_path / "one.json").read_bytes()
