"""`ptq inspect` reads If/Loop/Scan bodies: a model whose whole graph sits in an If (a VAD's
sample-rate switch) was reported as having no quantized tensors at all."""

import copy

import numpy as np
import onnx

import ptq_cli
from ptq_cli.inspect.read import inspect_model
from ptq_cli.recipe import Format, Recipe
from tests.quantize.test_control_flow import _write, if_model


def test_inspect_lists_the_tensors_quantized_inside_if_branches(tmp_path):
    rng = np.random.default_rng(5)
    model = if_model()
    samples = [{"x": rng.standard_normal((1, 16)).astype(np.float32), "sr": np.array(sr, np.int64)}
               for sr in (16000, 8000, 16000, 8000)]
    folder = _write(tmp_path / "d", samples)
    for fmt in (Format.QDQ, Format.QOPERATOR):
        result = ptq_cli.quantize(model, tmp_path / f"{fmt.value}.onnx", data=folder, recipe=Recipe(format=fmt),
                                  progress=False)
        quantized = copy.deepcopy(result.model)
        report = inspect_model(result.model, name="vad")
        assert result.model == quantized  # inspect reads, never writes
        assert report.format == fmt.value
        weights = {t.tensor for t in report.tensors if t.role == "weight"}
        assert any(n.startswith("then_w") for n in weights) and any(n.startswith("else_w") for n in weights)
        then_w = next(t for t in report.tensors if t.role == "weight" and t.tensor.startswith("then_w"))
        assert len(then_w.scale) == 8 and all(s > 0 for s in then_w.scale)  # per output channel
        assert any(t.role == "activation" for t in report.tensors)
        paired = {n.weights[0].split("_")[0] for n in report.portability.nodes}
        assert paired == {"then", "else"}  # the integer kernels of both branches are judged
        onnx.checker.check_model(result.model, full_check=True)
