"""Readers for array files: .npy (single-input models), .npz (keys are input names), ONNX
TensorProto .pb files, and the ONNX model-zoo layout test_data_set_*/input_N.pb.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.lib.format as npformat
import onnx
from onnx import numpy_helper

from ptq_cli.data.checks import shares_batch_axis
from ptq_cli.data.dataset import Entry
from ptq_cli.errors import DataError
from ptq_cli.model.io import InputSpec

ZOO_INPUT = re.compile(r"^input_(\d+)\.pb$")


def rows_of(shape: tuple[int, ...], spec: InputSpec) -> int:
    """Rows of an array of `shape` fed to `spec`: one when it lacks the batch axis."""
    if not spec.shape or len(shape) == len(spec.shape) - 1 or not shape:
        return 1
    return int(shape[0])


def load_npy(path: Path, source: str, *, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{source}: cannot read as .npy ({exc}); is the file complete?") from None


def load_pb(path: Path, source: str) -> tuple[str, np.ndarray]:
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
        if tensor.data_type == onnx.TensorProto.UNDEFINED:
            raise ValueError("no data type")
        return tensor.name, numpy_helper.to_array(tensor)
    except Exception as exc:  # protobuf DecodeError, onnx TypeError/ValueError on bad tensors
        raise DataError(f"{source}: not a valid ONNX TensorProto ({exc}); write it with "
                        "onnx.numpy_helper.from_array(array, name).SerializeToString()") from None


@dataclass(frozen=True)
class NpyReader:
    """One array per file, for the model's only input."""

    spec: InputSpec

    def read(self, entry: Entry) -> dict[str, np.ndarray]:
        return {self.spec.name: load_npy(entry.paths[0], entry.source)}

    def rows(self, entry: Entry) -> int:
        return rows_of(load_npy(entry.paths[0], entry.source, mmap=True).shape, self.spec)


@dataclass(frozen=True)
class NpzReader:
    """One array per input name in each .npz archive."""

    specs: tuple[InputSpec, ...]

    def read(self, entry: Entry) -> dict[str, np.ndarray]:
        try:
            with np.load(entry.paths[0], allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"{entry.source}: cannot read as .npz ({exc}); is the file complete?") \
                from None

    def rows(self, entry: Entry) -> int:
        if not shares_batch_axis(self.specs):
            return 1  # the sample is one feed
        # Only the header of the first input's member is read, not its data.
        spec = self.specs[0]
        try:
            with zipfile.ZipFile(entry.paths[0]) as archive, \
                    archive.open(f"{spec.name}.npy") as member:
                version = npformat.read_magic(member)
                read_header = (npformat.read_array_header_1_0 if version == (1, 0)
                               else npformat.read_array_header_2_0)
                shape = read_header(member)[0]
        except KeyError:
            raise DataError(f"{entry.source}: missing input {spec.name!r}") from None
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"{entry.source}: cannot read as .npz ({exc})") from None
        return rows_of(shape, spec)


@dataclass(frozen=True)
class PbReader:
    """One TensorProto per file for the model's only input; its name, when set, must match."""

    spec: InputSpec

    def read(self, entry: Entry) -> dict[str, np.ndarray]:
        name, array = load_pb(entry.paths[0], entry.source)
        _check_tensor_name(name, self.spec, 0, entry.source)
        return {self.spec.name: array}

    def rows(self, entry: Entry) -> int:
        return rows_of(self.read(entry)[self.spec.name].shape, self.spec)


@dataclass(frozen=True)
class ZooReader:
    """test_data_set_*/input_N.pb: input_N feeds the N-th graph input."""

    specs: tuple[InputSpec, ...]

    def read(self, entry: Entry) -> dict[str, np.ndarray]:
        feeds = {}
        for index, (spec, path) in enumerate(zip(self.specs, entry.paths)):
            source = f"{entry.source}/{path.name}"
            name, array = load_pb(path, source)
            _check_tensor_name(name, spec, index, source)
            feeds[spec.name] = array
        return feeds

    def rows(self, entry: Entry) -> int:
        if not shares_batch_axis(self.specs):
            return 1  # the sample is one feed
        _, array = load_pb(entry.paths[0], f"{entry.source}/{entry.paths[0].name}")
        return rows_of(array.shape, self.specs[0])


def zoo_entry(folder: Path, source: str, specs: tuple[InputSpec, ...]) -> Entry:
    """The Entry of one test_data_set_* folder: input_0.pb ... input_{n-1}.pb, nothing more."""
    found = {int(m.group(1)) for p in folder.iterdir() if (m := ZOO_INPUT.match(p.name))}
    wanted = set(range(len(specs)))
    if found != wanted:
        missing = sorted(wanted - found)
        extra = sorted(found - wanted)
        detail = (f"missing {', '.join(f'input_{i}.pb' for i in missing)}" if missing
                  else f"has {', '.join(f'input_{i}.pb' for i in extra)} but the model has "
                       f"{len(specs)} input(s)")
        raise DataError(f"{source}: {detail}; input_N.pb feeds the model's N-th input "
                        f"({', '.join(s.name for s in specs)})")
    return Entry(source, tuple(folder / f"input_{i}.pb" for i in range(len(specs))))


def _check_tensor_name(name: str, spec: InputSpec, index: int, source: str) -> None:
    if name and name != spec.name:
        raise DataError(f"{source}: tensor is named {name!r} but the model's input {index} is "
                        f"{spec.name!r}; rename the tensor or leave its name empty")
