"""Array readers: .npy, .npz, .pb, model-zoo folders, single files, and every mismatch message."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import onnxruntime as ort
import pytest

from ptq_cli.data import open_dataset
from ptq_cli.data.images import ImagePreprocess
from ptq_cli.errors import DataError, UsageError
from ptq_cli.model.io import input_specs
from tests.data.conftest import add_model, relu_model, write_npys, write_pb


def run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_npy_folder_single_samples_and_batches(tmp_path, rng, specs):
    arrays = [rng.standard_normal((1, 3, 4, 4)).astype(np.float32),
              rng.standard_normal((5, 3, 4, 4)).astype(np.float32),
              rng.standard_normal((3, 4, 4)).astype(np.float32)]  # no batch axis: one sample
    folder = write_npys(tmp_path / "calib", arrays)
    ds = open_dataset(folder, specs)
    assert len(ds) == 3
    assert ds.description == f"npy folder {folder} (3 files)"
    samples = list(ds)
    assert [s.rows for s in samples] == [1, 5, 1]
    assert samples[0].source == f"{folder}/0000.npy"
    np.testing.assert_array_equal(samples[1].feeds["x"], arrays[1])
    np.testing.assert_array_equal(samples[2].feeds["x"], arrays[2][None])
    assert samples[0].label is None and samples[0].labels is None
    model = relu_model()
    np.testing.assert_array_equal(run(model, samples[1].feeds), np.maximum(arrays[1], 0))


def test_files_are_read_in_natural_order_and_not_modified(tmp_path, specs):
    folder = tmp_path / "d"
    folder.mkdir()
    for i in (10, 2, 1):
        np.save(folder / f"s{i}.npy", np.full((1, 3, 4, 4), i, np.float32))
    (folder / "README.txt").write_text("ignored")
    (folder / ".hidden.npy").write_bytes(b"junk")
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    values = [float(s.feeds["x"][0, 0, 0, 0]) for s in open_dataset(folder, specs)]
    assert values == [1.0, 2.0, 10.0]
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_npz_folder_feeds_several_inputs(tmp_path, rng):
    model = add_model()
    folder = tmp_path / "npz"
    folder.mkdir()
    a = rng.standard_normal((4, 2)).astype(np.float32)
    b = rng.standard_normal((4, 2)).astype(np.float32)
    np.savez(folder / "0.npz", a=a, b=b)
    np.savez_compressed(folder / "1.npz", a=a[:1], b=b[:1])
    ds = open_dataset(folder, input_specs(model))
    samples = list(ds)
    assert [s.rows for s in samples] == [4, 1]
    np.testing.assert_allclose(run(model, samples[0].feeds), a + b)


def test_npz_missing_and_unknown_keys(tmp_path, rng):
    folder = tmp_path / "npz"
    folder.mkdir()
    np.savez(folder / "0.npz", a=np.zeros((1, 2), np.float32), c=np.zeros((1, 2), np.float32))
    with pytest.raises(DataError, match=re.escape(f"{folder}/0.npz: missing input 'b'; "
                                                  "unknown key 'c'; the model's inputs are 'a', 'b'")):
        list(open_dataset(folder, input_specs(add_model())))


def test_npz_inputs_with_different_row_counts(tmp_path):
    path = tmp_path / "s.npz"
    np.savez(path, a=np.zeros((2, 2), np.float32), b=np.zeros((3, 2), np.float32))
    with pytest.raises(DataError, match=r"s\.npz: inputs have different batch sizes \(a: 2, b: 3\)"):
        list(open_dataset(path, input_specs(add_model())))


def test_npy_for_multi_input_model_says_use_npz(tmp_path):
    folder = write_npys(tmp_path / "calib", [np.zeros((1, 2), np.float32)])
    with pytest.raises(DataError, match=r"holds \.npy files but the model has 2 inputs \(a, b\); "
                                        r"save each sample as \.npz"):
        open_dataset(folder, input_specs(add_model()))


def test_pb_folder_and_tensor_names(tmp_path, rng, specs):
    array = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    write_pb(tmp_path / "pb" / "0.pb", array, name="x")
    write_pb(tmp_path / "pb" / "1.pb", array[:1])  # unnamed tensors are fine
    ds = open_dataset(tmp_path / "pb", specs)
    assert [s.rows for s in ds] == [2, 1]
    np.testing.assert_array_equal(next(iter(ds)).feeds["x"], array)
    write_pb(tmp_path / "pb" / "2.pb", array, name="other")
    with pytest.raises(DataError, match=r"2\.pb: tensor is named 'other' but the model's input 0 is 'x'"):
        list(open_dataset(tmp_path / "pb", specs))


def test_model_zoo_layout_maps_input_n_to_the_nth_input(tmp_path, rng):
    model = add_model()
    for k in range(2):
        write_pb(tmp_path / f"test_data_set_{k}" / "input_0.pb", np.full((1, 2), k, np.float32), "a")
        write_pb(tmp_path / f"test_data_set_{k}" / "input_1.pb", np.full((1, 2), 10, np.float32))
        write_pb(tmp_path / f"test_data_set_{k}" / "output_0.pb", np.zeros((1, 2), np.float32))
    ds = open_dataset(tmp_path, input_specs(model))
    assert len(ds) == 2 and ds.description.startswith("model-zoo folder")
    samples = list(ds)
    assert samples[1].source == f"{tmp_path}/test_data_set_1"
    np.testing.assert_array_equal(run(model, samples[1].feeds), np.full((1, 2), 11, np.float32))
    # One set folder on its own is a dataset too.
    assert len(open_dataset(tmp_path / "test_data_set_0", input_specs(model))) == 1


def test_model_zoo_errors(tmp_path):
    specs = input_specs(add_model())
    write_pb(tmp_path / "test_data_set_0" / "input_0.pb", np.zeros((1, 2), np.float32))
    with pytest.raises(DataError, match=r"test_data_set_0: missing input_1\.pb; input_N\.pb feeds "
                                        r"the model's N-th input \(a, b\)"):
        open_dataset(tmp_path, specs)
    write_pb(tmp_path / "test_data_set_0" / "input_1.pb", np.zeros((1, 2), np.float32), "a")
    with pytest.raises(DataError, match=r"test_data_set_0/input_1\.pb: tensor is named 'a' but the "
                                        r"model's input 1 is 'b'"):
        list(open_dataset(tmp_path, specs))
    write_pb(tmp_path / "test_data_set_0" / "input_2.pb", np.zeros((1, 2), np.float32))
    with pytest.raises(DataError, match=r"has input_2\.pb but the model has 2 input\(s\)"):
        open_dataset(tmp_path, specs)


@pytest.mark.parametrize("ext", ["npy", "npz", "pb"])
def test_single_file(tmp_path, rng, specs, ext):
    array = rng.standard_normal((3, 3, 4, 4)).astype(np.float32)
    path = tmp_path / f"one.{ext}"
    if ext == "npy":
        np.save(path, array)
    elif ext == "npz":
        np.savez(path, x=array)
    else:
        write_pb(path, array)
    ds = open_dataset(path, specs)
    assert len(ds) == 1 and ds.description == f"{ext} file {path}"
    np.testing.assert_array_equal(next(iter(ds)).feeds["x"], array)


def test_single_file_of_other_kind(tmp_path, specs):
    (tmp_path / "a.txt").write_text("1")
    with pytest.raises(DataError, match=r"a\.txt: a single data file must be \.npy, \.npz or \.pb"):
        open_dataset(tmp_path / "a.txt", specs)


def test_shape_mismatch_names_file_and_shapes(tmp_path):
    specs = input_specs(relu_model(("N", 3, 224, 224)))
    folder = write_npys(tmp_path / "calib", [np.zeros((1, 3, 224, 224), np.float32)] * 3
                        + [np.zeros((1, 3, 32, 32), np.float32)])
    ds = open_dataset(folder, specs)
    with pytest.raises(DataError, match=re.escape(f"{folder}/0003.npy: input 'x' expects shape "
                                                  "[?,3,224,224], got (1,3,32,32)")):
        list(ds)


def test_rank_mismatch(tmp_path, specs):
    path = tmp_path / "r.npy"
    np.save(path, np.zeros((4, 4), np.float32))
    with pytest.raises(DataError, match=re.escape("r.npy: input 'x' expects shape [?,3,4,4], got (4,4)")):
        list(open_dataset(path, specs))


def test_dtype_rules(tmp_path, specs):
    path = tmp_path / "d.npy"
    np.save(path, np.ones((1, 3, 4, 4), np.float64))
    sample = next(iter(open_dataset(path, specs)))
    assert sample.feeds["x"].dtype == np.float32  # float64 for a float32 input: cast silently
    np.save(path, np.ones((1, 3, 4, 4), np.int64))
    with pytest.raises(DataError, match="d.npy: input 'x' expects float32, got int64"):
        list(open_dataset(path, specs))
    int_specs = input_specs(relu_model(elem=7))  # INT64 input
    np.save(path, np.ones((1, 3, 4, 4), np.int32))
    with pytest.raises(DataError, match="d.npy: input 'x' expects int64, got int32"):
        list(open_dataset(path, int_specs))
    np.save(path, np.ones((1, 3, 4, 4), np.float64))
    with pytest.raises(DataError, match="expects int64, got float64"):
        list(open_dataset(path, int_specs))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_errors_naming_the_file(tmp_path, specs, bad):
    array = np.zeros((2, 3, 4, 4), np.float32)
    array[1, 2, 3, 3] = bad
    folder = write_npys(tmp_path / "calib", [np.zeros((1, 3, 4, 4), np.float32), array])
    with pytest.raises(DataError, match=re.escape(f"{folder}/0001.npy: input 'x' contains 1 NaN or Inf")):
        list(open_dataset(folder, specs))


def test_empty_folder_lists_accepted_extensions(tmp_path, specs):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    for folder in ("empty", "junk"):
        with pytest.raises(DataError, match=r"holds no usable data files; ptq reads .*\.npy.*\.npz.*"
                                            r"\.pb.*test_data_set_\*.*\.jpg \.jpeg \.png \.bmp \.webp"):
            open_dataset(tmp_path / folder, specs)


def test_missing_path(tmp_path, specs):
    with pytest.raises(DataError, match="data path .*nope does not exist"):
        open_dataset(tmp_path / "nope", specs)


def test_mixed_kinds_in_one_folder(tmp_path, specs):
    write_npys(tmp_path, [np.zeros((1, 3, 4, 4), np.float32)])
    np.savez(tmp_path / "b.npz", x=np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"mixes \.npy and \.npz files; keep one kind per folder"):
        open_dataset(tmp_path, specs)


@pytest.mark.parametrize("name,content", [("bad.npy", b"\x93NUMPY garbage"), ("bad.pb", b"\xff\xff\xff"),
                                          ("bad.npz", b"PK not a zip")])
def test_corrupt_files(tmp_path, specs, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=re.escape(name) + ": (cannot read as|not a valid ONNX TensorProto)"):
        list(open_dataset(tmp_path / name, specs))


def test_pickled_object_arrays_are_refused(tmp_path, specs):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"o\.npy: cannot read as \.npy"):
        list(open_dataset(tmp_path / "o.npy", specs))


def test_image_options_on_array_data_are_a_usage_error(tmp_path, specs):
    write_npys(tmp_path, [np.zeros((1, 3, 4, 4), np.float32)])
    with pytest.raises(UsageError, match="apply to image folders, but .* holds npy data"):
        open_dataset(tmp_path, specs, image=ImagePreprocess.preset("unit"))
