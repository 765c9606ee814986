"""iter_batches (regrouping, max_samples, fixed batch), shard, labels, and bounded memory."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import onnxruntime as ort
import pytest

from ptq_cli.data import effective_batch_size, iter_batches, open_dataset
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import input_specs
from tests.data.conftest import add_model, relu_model, write_npys


def numbered(rows_per_file):
    """Files whose rows carry their global row index, so regrouping can be checked exactly."""
    arrays, start = [], 0
    for rows in rows_per_file:
        index = np.arange(start, start + rows, dtype=np.float32)
        arrays.append(np.broadcast_to(index[:, None, None, None], (rows, 3, 4, 4)).copy())
        start += rows
    return arrays


def row_ids(batch):
    return batch.feeds["x"][:, 0, 0, 0].astype(int).tolist()


def test_rows_are_split_and_regrouped(tmp_path, specs):
    folder = write_npys(tmp_path / "d", numbered([1, 5, 2, 7]))  # 15 rows in 4 files
    batches = list(iter_batches(open_dataset(folder, specs), specs, batch_size=4))
    assert [b.size for b in batches] == [4, 4, 4, 3]
    assert [row_ids(b) for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14]]
    assert batches[0].sources == (f"{folder}/0000.npy",) + (f"{folder}/0001.npy",) * 3
    assert batches[0].labels is None
    assert all(b.feeds["x"].shape[1:] == (3, 4, 4) for b in batches)
    session = ort.InferenceSession(relu_model().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, batches[1].feeds)[0], batches[1].feeds["x"])


def test_max_samples_counts_rows_and_stops_reading(tmp_path, specs):
    folder = write_npys(tmp_path / "d", numbered([3, 3, 3]))
    (folder / "0002.npy").write_bytes(b"corrupt: never read")
    batches = list(iter_batches(open_dataset(folder, specs), specs, batch_size=2, max_samples=5))
    assert [row_ids(b) for b in batches] == [[0, 1], [2, 3], [4]]
    with pytest.raises(UsageError, match="max samples must be at least 1"):
        list(iter_batches(open_dataset(folder, specs), specs, max_samples=0))
    with pytest.raises(UsageError, match="batch size must be at least 1"):
        list(iter_batches(open_dataset(folder, specs), specs, batch_size=0))


def test_batch_is_forced_to_one_when_the_model_fixes_it(tmp_path):
    specs = input_specs(relu_model((1, 3, 4, 4)))
    folder = write_npys(tmp_path / "d", numbered([1, 3]))  # a 3-row file for a batch-1 model
    batches = list(iter_batches(open_dataset(folder, specs), specs, batch_size=8))
    assert [row_ids(b) for b in batches] == [[0], [1], [2], [3]]
    session = ort.InferenceSession(relu_model((1, 3, 4, 4)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for batch in batches:
        session.run(None, batch.feeds)  # onnxruntime refuses any other batch size


def test_fixed_batch_above_one(tmp_path):
    specs = input_specs(relu_model((2, 3, 4, 4)))
    assert effective_batch_size(specs, 8) == 2
    folder = write_npys(tmp_path / "d", numbered([3, 1]))
    assert [row_ids(b) for b in iter_batches(open_dataset(folder, specs), specs)] == [[0, 1], [2, 3]]
    folder = write_npys(tmp_path / "e", numbered([3]))
    with pytest.raises(DataError, match=r"fixes the batch at 2 but 1 row\(s\) are left over"):
        list(iter_batches(open_dataset(folder, specs), specs))


def test_multi_input_batches(tmp_path, rng):
    model = add_model()
    specs = input_specs(model)
    for i, rows in enumerate([2, 3]):
        np.savez(tmp_path / f"{i}.npz", a=np.full((rows, 2), i, np.float32),
                 b=np.arange(rows * 2, dtype=np.float32).reshape(rows, 2))
    batches = list(iter_batches(open_dataset(tmp_path, specs), specs, batch_size=4))
    assert [b.size for b in batches] == [4, 1]
    np.testing.assert_array_equal(batches[0].feeds["a"][:, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(batches[0].feeds["b"][:, 0], [0, 2, 0, 2])


def test_labels_file_is_spread_over_rows_and_kept_aligned(tmp_path, specs):
    folder = write_npys(tmp_path / "d", numbered([1, 4, 2]))
    labels = tmp_path / "labels.txt"
    labels.write_text("10\n11 12\n13\n\n14 15 16\n")
    ds = open_dataset(folder, specs, labels=labels)
    assert ds.has_labels and ds.description.endswith(f"labels from {labels}")
    samples = list(ds)
    assert samples[0].label == 10
    assert samples[1].labels == (11, 12, 13, 14)
    with pytest.raises(DataError, match="holds 4 rows; read sample.labels"):
        samples[1].label
    batches = list(iter_batches(ds, specs, batch_size=3))
    assert [b.labels for b in batches] == [(10, 11, 12), (13, 14, 15), (16,)]
    assert [row_ids(b) for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    shard = ds.shard(1, 2)
    assert [s.labels for s in shard] == [(11, 12, 13, 14)]


def test_labels_count_and_format_errors(tmp_path, specs):
    folder = write_npys(tmp_path / "d", numbered([1, 2]))
    labels = tmp_path / "labels.txt"
    labels.write_text("1\n2\n")
    with pytest.raises(DataError, match=f"{labels} has 2 labels but {folder} holds 3 samples"):
        open_dataset(folder, specs, labels=labels)
    labels.write_text("1\ncat\n")
    with pytest.raises(DataError, match=f"{labels} line 2: 'cat' is not an integer label"):
        open_dataset(folder, specs, labels=labels)
    labels.write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        open_dataset(folder, specs, labels=labels)


def test_labels_for_npz_and_pb_rows(tmp_path):
    specs = input_specs(add_model())
    np.savez(tmp_path / "0.npz", a=np.zeros((3, 2), np.float32), b=np.zeros((3, 2), np.float32))
    (tmp_path / "l.txt").write_text("1 2 3")
    ds = open_dataset(tmp_path / "0.npz", specs, labels=tmp_path / "l.txt")
    assert next(iter(ds)).labels == (1, 2, 3)


def test_shard_selects_every_nth_sample(tmp_path, specs):
    folder = write_npys(tmp_path / "d", numbered([1] * 10))
    ds = open_dataset(folder, specs)
    shard = ds.shard(3, 4)
    assert len(shard) == 2 and len(ds) == 10
    assert [int(s.feeds["x"][0, 0, 0, 0]) for s in shard] == [3, 7]
    assert shard.description.endswith("shard 3/4 (2 samples)")
    assert sorted(int(s.feeds["x"][0, 0, 0, 0]) for k in range(3) for s in ds.shard(k, 3)) \
        == list(range(10))
    for bad in [(4, 4), (-1, 2), (0, 0)]:
        with pytest.raises(UsageError, match=f"shard {bad[0]}/{bad[1]} is not valid"):
            ds.shard(*bad)


def test_dataset_is_reiterable(tmp_path, specs):
    folder = write_npys(tmp_path / "d", numbered([2, 2]))
    ds = open_dataset(folder, specs)
    first = [row_ids(b) for b in iter_batches(ds, specs, batch_size=3)]
    assert first == [row_ids(b) for b in iter_batches(ds, specs, batch_size=3)] == [[0, 1, 2], [3]]


def test_streaming_keeps_memory_bounded(tmp_path, specs):
    """2000 files of 3 KB: iterating must not keep them (6 MB) in memory, nor read them to count."""
    folder = tmp_path / "many"
    folder.mkdir()
    row = np.ones((1, 3, 16, 16), np.float32)  # 3 KB each
    for i in range(2000):
        np.save(folder / f"{i}.npy", row * i)
    ds = open_dataset(folder, specs := input_specs(relu_model(("N", 3, 16, 16))))
    gc.collect()
    tracemalloc.start()
    try:
        assert len(ds) == 2000
        _, peak_len = tracemalloc.get_traced_memory()
        total = 0.0
        for batch in iter_batches(ds, specs, batch_size=8):
            total += float(batch.feeds["x"][:, 0, 0, 0].sum())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == sum(range(2000))
    assert peak_len < 10_000  # len() reads nothing
    assert peak < 500_000, f"peak {peak} bytes while streaming 6 MB of files"


def test_rows_of_different_shapes_cannot_share_a_batch(tmp_path):
    specs = input_specs(relu_model(("N", 3, "H", "W")))
    folder = write_npys(tmp_path / "d", [np.zeros((1, 3, 4, 4), np.float32),
                                         np.zeros((1, 3, 5, 5), np.float32)])
    ds = open_dataset(folder, specs)
    with pytest.raises(DataError, match=r"input 'x': .*0000\.npy has rows of shape \(3, 4, 4\) but "
                                        r".*0001\.npy has \(3, 5, 5\); they cannot share a batch"):
        list(iter_batches(ds, specs, batch_size=2))
    assert [b.feeds["x"].shape for b in iter_batches(ds, specs, batch_size=1)] == \
        [(1, 3, 4, 4), (1, 3, 5, 5)]
