"""Run a pass on a copy, check the result is valid, and compare it with the original in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx

from tests.conftest import run


def apply(pass_, model: onnx.ModelProto):
    before = model.SerializeToString()
    work = onnx.ModelProto()
    work.CopyFrom(model)
    result = pass_(work)
    assert model.SerializeToString() == before
    onnx.checker.check_model(result.model, full_check=True)
    return result


def same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict[str, np.ndarray], **tol) -> None:
    for x, y in zip(run(a, feeds), run(b, feeds)):
        np.testing.assert_allclose(x, y, **(tol or {"rtol": 1e-5, "atol": 1e-5}))
