"""Quantizing a model whose weights stay on disk (lazy external data) gives the same graph as
quantizing it loaded whole, with static and dynamic quantization."""

import copy
import dataclasses

import numpy as np
import onnx
import pytest

from ptq_cli.quantization.api import quantize
from ptq_cli.recipe import Recipe
from tests.conftest import run, tiny_conv_relu


@pytest.mark.parametrize("dynamic", [False, True])
def test_lazy_and_eager_models_quantize_alike(rng, tmp_path, monkeypatch, dynamic):
    model = tiny_conv_relu(rng, channels=16)
    onnx.save_model(copy.deepcopy(model), str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    location="ext.onnx.data", size_threshold=0)
    data = tmp_path / "calib"
    data.mkdir()
    for i in range(4):
        np.save(data / f"{i}.npy", rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32))
    recipe = dataclasses.replace(Recipe(), dynamic=dynamic)
    kwargs = dict(data=None if dynamic else data, recipe=recipe, progress=False)
    eager = quantize(tmp_path / "ext.onnx", tmp_path / "eager.onnx", **kwargs)
    monkeypatch.setattr("ptq_cli.model.io.LAZY_ABOVE", 0)  # every external tensor stays on disk
    lazy = quantize(tmp_path / "ext.onnx", tmp_path / "lazy.onnx", **kwargs)
    assert lazy.quantized == eager.quantized and lazy.source_sha256 == eager.source_sha256
    a, b = onnx.load(str(tmp_path / "eager.onnx")), onnx.load(str(tmp_path / "lazy.onnx"))
    assert a.graph.SerializeToString(deterministic=True) == b.graph.SerializeToString(deterministic=True)
    x = rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(a, {"x": x})[0], run(b, {"x": x})[0])
