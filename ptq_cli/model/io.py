"""Reading and writing ONNX models safely.

- load: external data, onnx.checker, clear refusal of corrupt or unsupported files;
- save: atomic (temp file in the target folder, then rename), external data above 2 GB,
  never over the input model, never over an existing file without `force`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ptq_cli.errors import ModelError
from ptq_cli.model.external import (PROTOBUF_LIMIT, attach_base_dir, inlined, is_external, model_size, weightless,
                                    write_with_external_data)
from ptq_cli.files import check_output, staged_many, write_bytes



@dataclass(frozen=True)
class InputSpec:
    """A graph input as calibration data must match it. Dimensions that are not fixed are None."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]
    # The symbolic name of a free first dim ("batch", "T", ...): two inputs whose free first dims
    # have different names do not share a batch axis (a sequence [T, N, F] beside a state [N, H]).
    first_dim_name: str = ""
    # An input declared without a shape has an unknown rank (not rank 0): data of any shape fits.
    rank_known: bool = True

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} [{dims}] {self.dtype}"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# External data above this stays on disk (lazy): smaller models are loaded whole, so that their
# proto is self-contained for any code that serializes it.
LAZY_ABOVE = 256 * 2**20


def load_model(path: str | os.PathLike, *, check: bool = True, lazy: bool | None = None) -> onnx.ModelProto:
    """Load a model and check it; raise ModelError with the reason.

    With lazy (by default when its external data exceeds LAZY_ABOVE) external data stays on
    disk: each tensor is read, memory-mapped, when a pass needs it, so loading costs what the
    graph costs, whatever the size of the weights. Sessions on such a model go through
    model.sessions.open_session, and saving through save_model."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError, ... on garbage
        raise ModelError(f"cannot read {path} as an ONNX model ({type(exc).__name__}: {exc}); "
                         "is the file complete and really .onnx?") from None
    if not model.graph.node:
        raise ModelError(f"{path} has an empty graph: is the file truncated or not an ONNX model?")
    _check_external_files(model, path.parent)
    if lazy is None:
        lazy = model_size(model).external > LAZY_ABOVE
    if lazy:
        attach_base_dir(model, path.parent)
    else:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise ModelError(f"cannot read the external data of {path} ({type(exc).__name__}: {exc})") from None
    if check:
        check_model(model, str(path))
    return model


def _check_external_files(model: onnx.ModelProto, folder: Path) -> None:
    for tensor in model.graph.initializer:
        if is_external(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            target = folder / location
            if not location or Path(location).is_absolute() or ".." in Path(location).parts:
                raise ModelError(f"tensor {tensor.name!r} names its data file as {location!r}; ONNX needs a "
                                 "path relative to the model's folder")
            if not target.is_file():
                raise ModelError(f"the external data file {target} of tensor {tensor.name!r} is missing; "
                                 "copy it next to the model")


@contextlib.contextmanager
def _native_stdout_silenced():
    """onnx's C++ checker prints "Warning: Model contains experimental ops: ImageScaler" (opset-7
    Keras exports) straight to file descriptor 1, which broke `--json` on stdout. Its verdicts
    are exceptions, so nothing is lost by muting the descriptor while it runs."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests, notebooks)
        fd = None
    if fd is None:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """onnx's checker, on the graph without its weights (which it cannot read, or serialize
    above 2 GB, and which it does not need)."""
    try:
        size = model_size(model)
        whole = size.external == 0 and size.inline < LAZY_ABOVE  # else the checker would copy the weights
        checked = model if whole else weightless(model)
        try:
            with _native_stdout_silenced():
                onnx.checker.check_model(checked)
        except onnx.checker.ValidationError as exc:
            if _SHAPELESS not in str(exc):
                raise
            # Outputs declared without a shape (common in If branches and old exports) are valid
            # to onnxruntime; the checker wants the field. Check the rest on a copy that has it.
            with _native_stdout_silenced():
                onnx.checker.check_model(_with_shape_fields(checked))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "validation failed"
        raise ModelError(f"{what} is not a valid ONNX model: {first}") from None


_SHAPELESS = "Field 'shape' of 'type' is required but missing"


def _with_shape_fields(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every tensor value info without a shape has an (empty) one, for the checker."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)

    def visit(graph: onnx.GraphProto) -> None:
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.HasField("tensor_type") and not value.type.tensor_type.HasField("shape"):
                value.type.tensor_type.shape.SetInParent()
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for sub in attr.graphs:
                    visit(sub)

    visit(copy.graph)
    return copy


def check_writable(path: str | os.PathLike, *, force: bool = False,
                   protect: tuple[str | os.PathLike | None, ...] = ()) -> None:
    """Refuse to write over an input (`protect`), or over an existing file without `force`.

    Commands call it before their long work too, so that a refusal costs nothing. The rules
    live in ptq_cli.files, the one write path of every output."""
    check_output(path, force=force, protect=protect)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *, force: bool = False,
               protect: tuple[str | os.PathLike | None, ...] = (), external: bool = False) -> Path:
    """Write `model` to `path` atomically. Paths in `protect` (the inputs) are never written.

    A model of 2 GB or more (or any, with `external`) is written with its weights in
    `PATH.data`, streamed one tensor at a time (tensors still on disk are copied from their
    file, never loaded whole)."""
    path = Path(path)
    size = model_size(model)
    if not external and size.external == 0 and size.fits_in_protobuf:
        return write_bytes(path, model.SerializeToString(deterministic=True), force=force, protect=protect)
    if not external and size.total < PROTOBUF_LIMIT:  # weights still on disk, small enough for one file
        return write_bytes(path, inlined(model).SerializeToString(deterministic=True), force=force, protect=protect)
    data_name = f"{path.name}.data"
    with staged_many([path.parent / data_name, path], force=force, protect=protect) as (tmp_data, tmp):
        structure = write_with_external_data(model, tmp_data, data_name)
        tmp.write_bytes(structure.SerializeToString(deterministic=True))
    return path


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
        first = tensor_type.shape.dim[0].dim_param if len(tensor_type.shape.dim) and dims[0] is None else ""
        specs.append(InputSpec(value.name, dtype, dims, first, rank_known=tensor_type.HasField("shape")))
    return specs


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and domain == "":
            return entry.version
        if entry.domain == domain:
            return entry.version
    return 0
