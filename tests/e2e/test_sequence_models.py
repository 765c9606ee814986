"""MiniLM-L3 (from ../shared/realdata/get_models.sh's cache; skipped when absent): the default
placement keeps its normalizations, GELUs and attention scores float, quantizes the MatMuls at
run time and stores the word embeddings int8, and the sentence embeddings stay close to FP32."""

import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from ptq_cli.calibration.api import calibrate
from ptq_cli.quantization.api import quantize_model
from ptq_cli.quantization.placement.patterns import PatternKind
from ptq_cli.recipe import Recipe
from tests.conftest import REALDATA, session

MINILM = Path(os.environ.get("PTQ_REALDATA_MODELS", Path.home() / ".cache" / "ptq-realdata")) / \
    "paraphrase-MiniLM-L3-v2.onnx"
TEXTS = REALDATA / "text" / "minilm"

pytestmark = pytest.mark.skipif(not (MINILM.is_file() and TEXTS.is_dir()),
                                reason=f"{MINILM} or {TEXTS} is absent (bash ../shared/realdata/get_models.sh)")


def _samples(folder: Path, count: int) -> list[dict]:
    files = sorted(folder.glob("*.npz"))
    return [dict(np.load(f)) for f in files[:: max(1, len(files) // count)][:count]]


def test_minilm_default_placement_keeps_embeddings_close_and_small(tmp_path):
    model = onnx.load(str(MINILM))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, sample in enumerate(_samples(TEXTS / "calib", 12)):
        np.savez(calib / f"{i:02d}.npz", **sample)
    table = calibrate(MINILM, calib, progress=False)
    quantized, plan = quantize_model(model, Recipe(), table.ranges)
    kinds = [p.kind for p in plan.patterns]
    assert kinds.count(PatternKind.LAYER_NORM) == 7 and kinds.count(PatternKind.GELU) == 3
    assert kinds.count(PatternKind.ATTENTION) == 3 and kinds.count(PatternKind.RESIDUAL) == 7
    assert len(plan.dynamic) == 18 and len(plan.weight_only) == 3
    assert quantized.ByteSize() < 0.35 * model.ByteSize()
    reference, candidate = session(model), session(quantized)
    for sample in _samples(TEXTS / "eval", 8):
        a, b = reference.run(["461"], sample)[0], candidate.run(["461"], sample)[0]
        assert float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)) > 0.98
