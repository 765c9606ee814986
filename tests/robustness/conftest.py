from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import tiny_conv_relu


@pytest.fixture
def work(tmp_path) -> Path:
    """A tiny Conv-Relu model, 4 calibration samples, labels; `work / "model.int8.onnx"` is made
    on demand by `quantized`."""
    return make_work(tmp_path)


def make_work(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    onnx.save(tiny_conv_relu(rng), tmp_path / "model.onnx")
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        np.save(data / f"{i}.npy", rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32))
    (tmp_path / "labels.txt").write_text("0\n1\n2\n3\n")
    return tmp_path


@pytest.fixture
def quantized(work) -> Path:
    from ptq_cli import quantize

    quantize(work / "model.onnx", work / "model.int8.onnx", data=work / "data", progress=False)
    return work / "model.int8.onnx"
