"""onnxruntime sessions on models of any size, with weights that may still be on disk."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx

from ptq_cli.model.external import fits_in_protobuf, runtime_view

# onnxruntime reads external data of a model given as bytes from this folder (1.17+).
_EXTERNAL_FOLDER = "session.model_external_initializers_file_folder_path"


def inference_session(model: onnx.ModelProto, options=None, providers: Sequence[str] = ("CPUExecutionProvider",),
                      **kwargs):
    """A session on `model`. The graph goes as bytes (with the folder of its external weights,
    which onnxruntime maps itself); a model whose in-memory part is 2 GB or more is saved once
    to a private temporary folder, weights streamed to external data, and loaded from there."""
    import onnxruntime as ort

    options = options or ort.SessionOptions()
    with runtime_view(model) as folder:
        if fits_in_protobuf(model):
            if folder:
                options.add_session_config_entry(_EXTERNAL_FOLDER, folder)
            return ort.InferenceSession(model.SerializeToString(), options, providers=list(providers), **kwargs)
    from ptq_cli.model.io import save_model

    with tempfile.TemporaryDirectory(prefix="ptq-session-") as tmp:
        path = save_model(model, Path(tmp) / "model.onnx")
        return ort.InferenceSession(str(path), options, providers=list(providers), **kwargs)
