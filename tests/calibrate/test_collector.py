import numpy as np
import pytest

from ptq_cli.calibration import calibrate
from ptq_cli.calibration.collector import float_tensors
from ptq_cli.errors import CalibrationError, UsageError
from ptq_cli.recipe import CalibMethod, CalibrationSpec

from .conftest import reference_tensors, tiny_model, write_samples


def test_float_tensors_skip_initializers_constants_and_ints():
    assert float_tensors(tiny_model()) == ["x", "y", "r", "z"]


@pytest.mark.parametrize("batch_size", [1, 5])
def test_minmax_ranges_equal_numpy_on_the_intermediates(data_dir, samples, batch_size):
    model = tiny_model()
    before = model.SerializeToString()
    table = calibrate(model, data_dir, batch_size=batch_size, progress=False)
    assert model.SerializeToString() == before  # the input model is untouched
    assert table.samples == len(samples)
    for name, array in reference_tensors(samples).items():
        assert table.range(name) == (float(array.min()), float(array.max())), name
        assert table.stats[name].histogram is None  # minmax needs none


def test_histogram_counts_match_numpy(data_dir, samples):
    table = calibrate(tiny_model(), data_dir, spec=CalibrationSpec(method=CalibMethod.PERCENTILE, bins=64),
                      progress=False)
    y = reference_tensors(samples)["y"].astype(np.float64)
    hist = table.stats["y"].histogram
    expected, _ = np.histogram(y, bins=hist.edges)
    np.testing.assert_array_equal(hist.counts, expected)


def test_model_with_batch_fixed_at_one_is_fed_row_by_row(data_dir, samples):
    table = calibrate(tiny_model(batch=1), data_dir, batch_size=8, progress=False)
    assert table.samples == len(samples)
    assert table.range("y") == (float(reference_tensors(samples)["y"].min()),
                                float(reference_tensors(samples)["y"].max()))


def test_selected_tensors_and_max_samples(data_dir, samples):
    table = calibrate(tiny_model(), data_dir, tensors=["y"], max_samples=5, progress=False)
    assert table.names == ["y"] and table.samples == 5
    assert table.range("y")[1] == float(reference_tensors(samples[:5])["y"].max())
    with pytest.raises(UsageError, match="not float activations"):
        calibrate(tiny_model(), data_dir, tensors=["shape"], progress=False)


def test_nan_activation_names_the_tensor(tmp_path):
    write_samples(tmp_path / "d", np.array([[1, 1, 1, 1], [-3, 1, 0, 0]], np.float32))
    with pytest.raises(CalibrationError, match="activation 'z' holds NaN"):
        calibrate(tiny_model(log=True), tmp_path / "d", progress=False)


def test_shards_merge_to_a_single_run(data_dir):
    from ptq_cli.calibration import merge

    spec = CalibrationSpec(method=CalibMethod.ENTROPY, bins=32)
    single = calibrate(tiny_model(), data_dir, spec=spec, progress=False)
    shards = [calibrate(tiny_model(), data_dir, spec=spec, shard=(k, 3), progress=False) for k in range(3)]
    merged = merge(shards)
    assert merged.samples == single.samples
    assert merged.ranges == single.ranges
    for name in single.names:
        assert merged.stats[name].to_dict() == single.stats[name].to_dict()


def test_sharded_max_samples_add_up(data_dir):
    from ptq_cli.calibration import merge

    single = calibrate(tiny_model(), data_dir, max_samples=7, progress=False)
    merged = merge([calibrate(tiny_model(), data_dir, max_samples=7, shard=(k, 2), progress=False)
                    for k in range(2)])
    assert merged.samples == 7 and merged.ranges == single.ranges


@pytest.mark.parametrize("cores", [2, 3])
def test_batches_spread_over_sessions_give_the_one_session_table(tmp_path, monkeypatch, cores):
    """Min/max calibration runs one session per core (one onnxruntime thread each) and folds
    the batches in order: the very table of one session, Conv input means included."""
    from ptq_cli.calibration import collector
    from ptq_cli.model import sessions as sessions_module
    from tests.conftest import save_samples, tiny_conv_relu

    rng = np.random.default_rng(3)
    model = tiny_conv_relu(rng)
    data = save_samples(tmp_path / "calib", [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(11)])
    monkeypatch.setattr(sessions_module, "available_cores", lambda: 1)
    one = calibrate(model, data, progress=False).to_dict()
    monkeypatch.setattr(sessions_module, "available_cores", lambda: cores)
    sessions = []
    made = collector.calibration_session
    monkeypatch.setattr(collector, "calibration_session", lambda *a, **k: sessions.append(k) or made(*a, **k))
    spread = calibrate(model, data, progress=False).to_dict()
    assert len(sessions) == cores and all(k["threads"] == 1 for k in sessions)
    assert spread == one
    assert any(stats.get("channel_mean") for stats in one["tensors"].values())  # Conv input means compared too
