"""The model as quantize reads it, once: the first stage's result, which every later one reads."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx

from ptq_cli.calibration.table import model_sha256
from ptq_cli.model.io import check_model, load_model
from ptq_cli.model.passes.float32 import ToFloat32, float_kinds


@dataclass(frozen=True)
class Source:
    """The model as quantize reads it: float32 inside, its hash and path, and what loading changed."""

    model: onnx.ModelProto
    sha256: str
    path: Path | None  # None: given as a ModelProto
    notes: tuple[str, ...] = ()  # e.g. float16 computed in float32 between Casts



def load_source(model: str | os.PathLike | onnx.ModelProto) -> Source:
    """Read and hash the model (lazily above 256 MB); a float16/bfloat16/float64 model becomes
    float32 between Casts at its edges, which the notes say."""
    if isinstance(model, onnx.ModelProto):
        check_model(model)
        loaded, sha, path = model, model_sha256(model), None
    else:
        path = Path(model)
        loaded, sha = load_model(path), model_sha256(path)
    if not float_kinds(loaded):
        return Source(loaded, sha, path)
    converted = onnx.ModelProto()
    converted.CopyFrom(loaded)
    return Source(converted, sha, path, ToFloat32()(converted).changes)
