"""Class 7: labels in the formats people have; labels that cannot be class indices refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptq_cli.data.labels import read_labels
from ptq_cli.errors import DataError
from tests.robustness.harness import invoke

LABELS = [3, 1, 0, 2]


def _write(work, fmt):
    path = work / f"labels.{fmt}"
    if fmt == "txt":
        path.write_text("3 1\n0,2\n")
    elif fmt == "npy":
        np.save(path, np.array(LABELS, np.int64))
    elif fmt == "npz":
        np.savez(path, labels=np.array(LABELS), weights=np.ones(4))
    elif fmt == "csv":
        path.write_text("file,label\n0.npy,3\n1.npy,1\n2.npy,0\n3.npy,2\n")
    elif fmt == "json":
        path.write_text(json.dumps({"labels": LABELS}))
    return path


@pytest.mark.parametrize("fmt", ["txt", "npy", "npz", "csv", "json"])
def test_every_format_gives_the_same_labels_and_the_same_report(work, fmt):
    path = _write(work, fmt)
    assert read_labels(path) == tuple(LABELS)
    run = invoke(work, "compare", work / "model.onnx", work / "model.onnx", "--data", work / "data", "--labels",
                 path, "--json", "-q")
    assert run.code == 0, run.result.stderr
    cls = json.loads(run.result.stdout)["outputs"][0]["classification"]
    assert cls["labelled"] == 4


def test_labels_outside_the_output_classes_are_refused(work):
    (work / "big.txt").write_text("3\n1\n10\n2\n")   # the model has 10 classes: 0..9
    invoke(work, "compare", work / "model.onnx", work / "model.onnx", "--data", work / "data", "--labels",
           work / "big.txt", "-q").refused(3, "label 10", "10 classes")


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00", "not UTF-8"), (b"1\n-2\n", "negative"), (b"1\ncat\n", "'cat'"), (b"", "empty"),
    (b"1.5\n", "'1.5'"), (b"1e400\n", "'1e400'"),
])
def test_bad_text_labels(tmp_path, content, words):
    (tmp_path / "l.txt").write_bytes(content)
    with pytest.raises(DataError, match=words):
        read_labels(tmp_path / "l.txt")


def test_bad_array_labels(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "f.npy", np.array([0.5, 1.0]))
    np.save(tmp_path / "c.npy", np.zeros((2, 2, 2)))
    np.savez(tmp_path / "m.npz", a=np.zeros(2), b=np.zeros(2))
    for name, words in (("o.npy", "plain numpy"), ("f.npy", "integer"), ("c.npy", "1-D"), ("m.npz", "name the")):
        with pytest.raises(DataError, match=words):
            read_labels(tmp_path / name)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(max_size=40))
def test_any_bytes_as_labels_read_or_refused_cleanly(tmp_path_factory, content):
    folder = tmp_path_factory.mktemp("labels")
    for suffix in (".txt", ".csv", ".json", ".npy"):
        path = folder / f"l{suffix}"
        path.write_bytes(content)
        try:
            labels = read_labels(path)
        except DataError as exc:
            assert "\n" not in str(exc)
            continue
        assert labels and all(isinstance(v, int) and v >= 0 for v in labels)
