"""Reading and writing ONNX models safely.

- load: external data, onnx.checker, clear refusal of corrupt or unsupported files;
- save: atomic (temp file in the target folder, then rename), external data above 2 GB,
  never over the input model, never over an existing file without `force`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ptq_cli.errors import ModelError
from ptq_cli.files import check_output, staged_many, write_bytes

_TWO_GB = 2**31 - 1


@dataclass(frozen=True)
class InputSpec:
    """A graph input as calibration data must match it. Dimensions that are not fixed are None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    @property
    def batch_fixed_at_one(self) -> bool:
        return len(self.shape) > 0 and self.shape[0] == 1

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {self.dtype}"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load a model with its external data and check it; raise ModelError with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ... on garbage
        raise ModelError(f"cannot read {path} as an ONNX model ({type(exc).__name__}: {exc}); "
                         "is the file complete and really .onnx?") from None
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph: is the file truncated or not an ONNX model?")
    if check:
        check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    try:
        if model.ByteSize() < _TWO_GB:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "validation failed"
        raise ModelError(f"{what} is not a valid ONNX model: {first}") from None


def check_writable(path: str | os.PathLike, *, force: bool = False,
                   protect: tuple[str | os.PathLike | None, ...] = ()) -> None:
    """Refuse to write over an input (`protect`), or over an existing file without `force`.

    Commands call it before their long work too, so that a refusal costs nothing. The rules
    live in ptq_cli.files, the one write path of every output."""
    check_output(path, force=force, protect=protect)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, force: bool = False,
               protect: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Write `model` to `path` atomically. Paths in `protect` (the inputs) are never written."""
    path = Path(path)
    large = model.ByteSize() >= _TWO_GB if _byte_size_is_safe(model) else True
    if not large:
        return write_bytes(path, model.SerializeToString(deterministic=True), force=force, protect=protect)
    data_name = f"{path.name}.data"
    with staged_many([path.parent / data_name, path], force=force, protect=protect) as (tmp_data, tmp):
        # save_model moves the weights out of the proto it is given: give it a copy.
        external = onnx.ModelProto()
        external.CopyFrom(model)
        onnx.save_model(external, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=tmp_data.name, size_threshold=1024)
        # The .onnx file names its data file; point it at the final name before both are renamed.
        for tensor in _external_tensors(external):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data_name
        tmp.write_bytes(external.SerializeToString())
    return path


def _byte_size_is_safe(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:
        return False


def _external_tensors(model: onnx.ModelProto):
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs of the graph (initializers that are also listed as inputs are skipped)."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ModelError(f"input {value.name!r} is not a tensor; ptq only handles tensor inputs")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                     for d in tensor_type.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and domain == "":
            return entry.version
        if entry.domain == domain:
            return entry.version
    return 0
