"""The two attention models of ../shared/realdata beside the CNNs: MiniLM-L3 (text) and the
PP-OCRv4 recogniser. Their files live in ~/.cache/ptq-realdata (get_models.sh); their samples
are .npz files (several inputs, variable lengths), fed one at a time."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from realdata import REALDATA

CACHE = Path(os.environ.get("PTQ_REALDATA_CACHE", Path.home() / ".cache" / "ptq-realdata"))


@dataclass(frozen=True)
class AttentionModel:
    name: str
    model_path: Path
    calib_dir: Path  # .npz files, one sample each, as `ptq quantize --data` reads them
    eval_dir: Path

    def eval_feeds(self, count: int = 8) -> list[dict[str, np.ndarray]]:
        files = sorted(self.eval_dir.glob("*.npz"))
        step = max(1, len(files) // count)  # spread over the set: short and long samples alike
        return [dict(np.load(f)) for f in files[::step][:count]]


_MODELS = {
    "minilm": ("paraphrase-MiniLM-L3-v2.onnx", "text/minilm/calib", "text/minilm/eval"),
    "ocr": ("ch_PP-OCRv4_rec_infer.onnx", "ocr/calib_npz", "ocr/eval_npz"),
}


def names() -> list[str]:
    return list(_MODELS)


def load(name: str) -> AttentionModel | None:
    """The model, or None when its file is absent (run ../shared/realdata/get_models.sh)."""
    file, calib, evaluation = _MODELS[name]
    model = AttentionModel(name, CACHE / file, REALDATA / calib, REALDATA / evaluation)
    return model if model.model_path.is_file() and model.calib_dir.is_dir() else None


class NpzFolderReader(CalibrationDataReader):
    """onnxruntime.quantization.CalibrationDataReader over the same .npz files ptq reads."""

    def __init__(self, folder: Path):
        self._files = sorted(folder.glob("*.npz"))
        self._it = iter(self._files)

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._it, None)
        return None if path is None else dict(np.load(path))

    def rewind(self) -> None:
        self._it = iter(self._files)

    def __len__(self) -> int:
        return len(self._files)
