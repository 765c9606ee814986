"""Weights that stay on disk, and the one size check against protobuf's 2 GB limit.

A model loaded from a path keeps its external tensors external: the proto holds the graph and
small tensors, and each external tensor is read only when a pass needs it, memory-mapped, one
at a time. Every external tensor records the folder its `location` is relative to under the key
BASE_KEY (the proto does not know the folder it came from). That key is ptq's own: onnxruntime
and the ONNX spec do not know it, so `runtime_view` takes it off while a model is serialized.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.errors import ModelError

# protobuf refuses to serialize (or even size) a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
BASE_KEY = "ptq_base_dir"


@dataclass(frozen=True)
class ModelSize:
    inline: int  # bytes the proto itself serializes to (weights held in memory included)
    external: int  # bytes of tensors that stay in external data files

    @property
    def total(self) -> int:
        return self.inline + self.external

    @property
    def fits_in_protobuf(self) -> bool:
        return self.inline < PROTOBUF_LIMIT


def model_size(model: onnx.ModelProto) -> ModelSize:
    """The model's size, summed part by part: ByteSize() of a whole model over 2 GB raises."""
    graph = model.graph
    inline = external = 0
    for tensor in graph.initializer:
        if is_external(tensor):
            external += _external_length(tensor)
            inline += 64 + len(tensor.name) + 8 * len(tensor.dims)
        else:
            inline += tensor.ByteSize() + 6  # tag and length prefix
    for part in (graph.node, graph.input, graph.output, graph.value_info, graph.sparse_initializer,
                 model.functions, model.metadata_props, model.opset_import):
        inline += sum(p.ByteSize() + 6 for p in part)
    return ModelSize(inline, external)


def fits_in_protobuf(model: onnx.ModelProto) -> bool:
    """Whether `model` can be serialized as one protobuf message (the 2 GB limit)."""
    return model_size(model).fits_in_protobuf


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _entries(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _external_length(tensor: onnx.TensorProto) -> int:
    length = _entries(tensor).get("length")
    if length is not None:
        return int(length)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def attach_base_dir(model: onnx.ModelProto, base_dir: str | os.PathLike) -> None:
    """Record, on every external tensor, the folder its location is relative to."""
    base = str(Path(base_dir).resolve())
    for tensor in _external_tensors(model):
        _set_entry(tensor, BASE_KEY, base)


def _set_entry(tensor: onnx.TensorProto, key: str, value: str) -> None:
    for entry in tensor.external_data:
        if entry.key == key:
            entry.value = value
            return
    tensor.external_data.add(key=key, value=value)


def _external_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    for tensor in model.graph.initializer:
        if is_external(tensor):
            yield tensor


def external_file(tensor: onnx.TensorProto) -> Path:
    entries = _entries(tensor)
    return Path(entries.get(BASE_KEY, "")) / entries["location"]


def tensor_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The tensor's values; an external tensor is memory-mapped read-only, not read into memory."""
    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    entries = _entries(tensor)
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
    shape = tuple(tensor.dims)
    count = int(np.prod(shape, dtype=np.int64))
    if count == 0:
        return np.zeros(shape, dtype)
    if tensor.data_type in _PACKED:
        return numpy_helper.to_array(tensor, str(external_file(tensor).parent))  # 4-bit, string: rare
    return np.memmap(external_file(tensor), dtype=dtype.newbyteorder("<"), mode="r",
                     offset=int(entries.get("offset", 0)), shape=shape)


_PACKED = {onnx.TensorProto.STRING, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@contextlib.contextmanager
def runtime_view(model: onnx.ModelProto) -> Iterator[str | None]:
    """Take ptq's base-dir key off the external tensors while the model is serialized or saved
    (onnxruntime refuses unknown keys); yields the folder their locations are relative to."""
    tensors = list(_external_tensors(model))
    bases = {id(t): _entries(t).get(BASE_KEY) for t in tensors}
    folders = {b for b in bases.values() if b}
    if len(folders) > 1:
        raise ValueError(f"external data from several folders ({sorted(folders)}) cannot be read together")
    for t in tensors:
        _drop_entry(t, BASE_KEY)
    try:
        yield next(iter(folders), None)
    finally:
        for t in tensors:
            if bases[id(t)]:
                _set_entry(t, BASE_KEY, bases[id(t)])


def _drop_entry(tensor: onnx.TensorProto, key: str) -> None:
    kept = [(e.key, e.value) for e in tensor.external_data if e.key != key]
    if len(kept) != len(tensor.external_data):
        del tensor.external_data[:]
        for k, v in kept:
            tensor.external_data.add(key=k, value=v)


def structure_copy(model: onnx.ModelProto, *, keep_below: int = 0) -> onnx.ModelProto:
    """A copy of `model` without weight data: initializers of `keep_below` serialized bytes or
    more (and every external one) are left out. Costs what the graph costs, whatever the weights."""
    copy = onnx.ModelProto()
    for fd, _ in model.ListFields():
        if fd.name != "graph":
            _copy_field(model, copy, fd)
    for fd, _ in model.graph.ListFields():
        if fd.name != "initializer":
            _copy_field(model.graph, copy.graph, fd)
    if keep_below:
        copy.graph.initializer.extend(t for t in model.graph.initializer
                                      if not is_external(t) and t.ByteSize() < keep_below)
    return copy


def weightless(model: onnx.ModelProto, keep_below: int = 4096) -> onnx.ModelProto:
    """`structure_copy` in which the weights left out are typed graph inputs: a valid model for
    onnx's checker and shape inference, whatever the size of the original."""
    copy = structure_copy(model, keep_below=keep_below)
    kept = {t.name for t in copy.graph.initializer} | {i.name for i in copy.graph.input}
    copy.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                            for t in model.graph.initializer if t.name not in kept)
    return copy


def _copy_field(src, dst, fd) -> None:
    value = getattr(src, fd.name)
    if hasattr(value, "extend") and not isinstance(value, (str, bytes)):
        getattr(dst, fd.name).extend(value)
    elif fd.message_type is not None:
        getattr(dst, fd.name).CopyFrom(value)
    else:
        setattr(dst, fd.name, value)


def tensor_bytes(tensor: onnx.TensorProto) -> bytes | np.ndarray:
    """The tensor's raw little-endian bytes (a memory map for an external tensor)."""
    if is_external(tensor):
        entries = _entries(tensor)
        offset, length = int(entries.get("offset", 0)), _external_length(tensor)
        if length == 0:
            return b""
        return np.memmap(external_file(tensor), dtype=np.uint8, mode="r", offset=offset, shape=(length,))
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.to_array(tensor).astype(
        np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")).tobytes()


def inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """A self-contained copy of a model whose external tensors fit in memory (and in protobuf)."""
    copy = structure_copy(model)
    for tensor in model.graph.initializer:
        if is_external(tensor):
            copy.graph.initializer.append(_data_tensor(tensor, bytes(tensor_bytes(tensor))))
        else:
            copy.graph.initializer.append(tensor)
    return copy


def _data_tensor(tensor: onnx.TensorProto, raw: bytes) -> onnx.TensorProto:
    out = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims, raw_data=raw,
                           data_location=onnx.TensorProto.DEFAULT)  # as onnx.load sets it
    if tensor.doc_string:
        out.doc_string = tensor.doc_string
    return out


_ALIGN = 4096  # page-aligned offsets let onnxruntime memory-map each tensor
_INLINE_BELOW = 1024


def write_with_external_data(model: onnx.ModelProto, data_path: Path, data_name: str) -> onnx.ModelProto:
    """Stream every tensor of `_INLINE_BELOW` bytes or more into `data_path`, one at a time, and
    return the model's structure pointing at them (as `data_name`, next to the model)."""
    structure = structure_copy(model)
    offset = 0
    with open(data_path, "wb") as f:
        for tensor in model.graph.initializer:
            data = tensor_bytes(tensor)
            length = len(data)
            if not is_external(tensor) and length < _INLINE_BELOW:
                structure.graph.initializer.append(tensor)
                continue
            offset = -(-offset // _ALIGN) * _ALIGN
            f.seek(offset)
            for start in range(0, length, 1 << 26):  # 64 MB at a time: memory maps stay small
                f.write(memoryview(data)[start:start + (1 << 26)])
            ref = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                   data_location=onnx.TensorProto.EXTERNAL)
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
                ref.external_data.add(key=key, value=value)
            structure.graph.initializer.append(ref)
            offset += length
            del data
    return structure


def serialized(model: onnx.ModelProto) -> bytes:
    """The model as one self-contained message, for code that hands onnxruntime bytes (weights
    still on disk are read in). Above 2 GB there is no such message: use sessions.open_session."""
    if not any(is_external(t) for t in model.graph.initializer):
        return model.SerializeToString()
    if model_size(model).total >= PROTOBUF_LIMIT:
        raise ModelError("this step needs the model as one protobuf message, and it is 2 GB or more; "
                         "use --objective size (no latency timing) for models this large")
    return inlined(model).SerializeToString()


def external_data_files(path: str | os.PathLike) -> list[Path]:
    """The files a model's external tensors live in (an input too: no output may replace them)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: it has no companions
        return []
    files = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                files.add(Path(path).parent / entry.value)
    return sorted(files)
