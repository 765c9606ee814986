"""What accuracy.py and latency.py share: onnxruntime sessions, the two quantizers called with
the same settings on the same calibration files, and top-1 evaluation.

A quantizer that raises, or writes a model that onnxruntime refuses to load, gives an
`Outcome` with status "failed" or "invalid" instead of stopping the run.
"""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader

from realdata import RealModel, batches

MODELS_DIR_NAME = "models"
METHODS = ("minmax", "entropy", "percentile", "mse")
# onnxruntime has no MSE calibrator; its Distribution method has no ptq counterpart.
ORT_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
GRANULARITIES = ("per-channel", "per-tensor")
FORMATS = ("qdq", "qoperator")
# "ptq-nobc" is ptq with bias correction off: the like-for-like counterpart of onnxruntime's MinMax;
# "ptq-eq" adds cross-layer equalization (--equalize).
TOOLS = ("ptq", "ptq-nobc", "ptq-eq", "ort")
TOOL_TITLES = {"ptq": "ptq", "ptq-nobc": "ptq (no bias corr.)", "ptq-eq": "ptq --equalize", "ort": "ORT"}


@dataclass(frozen=True)
class Variant:
    """One INT8 model to build: which tool, with which settings."""

    tool: str  # one of TOOLS
    granularity: str = "per-channel"
    method: str = "minmax"
    format: str = "qdq"

    def file_name(self, model: str) -> str:
        return f"{model}.{self.tool}.{self.granularity}.{self.method}.{self.format}.onnx"

    @property
    def label(self) -> str:
        return f"{self.tool} {self.granularity} {self.method} {self.format}"


@dataclass
class Outcome:
    """What happened to one variant: status "ok", "invalid" (ORT refuses it), "failed", "n/a"."""

    status: str
    path: str | None = None
    detail: str = ""
    quantize_seconds: float | None = None
    top1: float | None = None
    extra: dict = field(default_factory=dict)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_list(text: str, allowed: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise SystemExit(f"unknown {what} {bad or text!r}; choose from {', '.join(allowed)}")
    return items


# --- onnxruntime -------------------------------------------------------------------------------

def session(path: str | Path, threads: int = 2,
            level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            optimized_path: str | Path | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = level
    options.log_severity_level = 3  # keep ORT's warnings out of the tables
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_loads(path: Path) -> str | None:
    """None if onnxruntime loads the model, else the first line of its error."""
    try:
        session(path, threads=1)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
        return _first_line(exc)
    return None


def top1(path: Path, model: RealModel, batch: int | None = None) -> float:
    """Top-1 accuracy in % on the evaluation split (argmax works for softmax, logits, log-softmax)."""
    sess = session(path)
    name = sess.get_inputs()[0].name
    correct = 0
    for x, y in batches(model, batch):
        out = sess.run(None, {name: x})[0]
        correct += int((out.reshape(len(y), -1).argmax(axis=1) == y).sum())
    return 100.0 * correct / len(model.eval_y)


class NpyFolderReader(CalibrationDataReader):
    """onnxruntime.quantization.CalibrationDataReader over the same .npy files ptq reads."""

    def __init__(self, folder: Path, input_name: str):
        self._files = sorted(folder.glob("*.npy"))
        self._input_name = input_name
        self._it: Iterator[Path] = iter(self._files)

    def get_next(self) -> dict[str, np.ndarray] | None:
        path = next(self._it, None)
        return None if path is None else {self._input_name: np.load(path)}

    def rewind(self) -> None:
        self._it = iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


# --- the two quantizers -----------------------------------------------------------------------

def build(variant: Variant, model: RealModel, out_dir: Path) -> Outcome:
    """Quantize `model` with `variant` into out_dir; report failures instead of raising."""
    if variant.tool == "ort" and variant.method not in ORT_METHODS:
        return Outcome("n/a", detail=f"onnxruntime has no {variant.method} calibrator")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / variant.file_name(model.name)
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        (_ort if variant.tool == "ort" else _ptq)(variant, model, out)
    except Exception as exc:  # a quantizer's crash is a result of the benchmark, not its end
        log("".join(traceback.format_exception(exc, limit=-3)).rstrip())
        return Outcome("failed", detail=_first_line(exc))
    seconds = time.perf_counter() - start
    refused = check_loads(out)
    if refused is not None:
        return Outcome("invalid", path=str(out), detail=refused, quantize_seconds=seconds)
    return Outcome("ok", path=str(out), quantize_seconds=seconds)


def _ptq(variant: Variant, model: RealModel, out: Path) -> None:
    from ptq_cli.quantization.api import quantize
    from ptq_cli.recipe import (DEFAULT_ACTIVATIONS, CalibMethod, CalibrationSpec, Format, PerChannel, PerTensor,
                                QType, Recipe, TensorSpec)

    granularity = PerChannel() if variant.granularity == "per-channel" else PerTensor()
    recipe = Recipe(
        weights=TensorSpec(QType.INT8, True, granularity),
        activations=DEFAULT_ACTIVATIONS,  # uint8 asymmetric per tensor, as onnxruntime's QUInt8
        format=Format(variant.format),
        calibration=CalibrationSpec(method=CalibMethod(variant.method)),
        bias_correction=variant.tool != "ptq-nobc",
        equalize=variant.tool == "ptq-eq",
    )
    quantize(str(model.model_path), str(out), data=str(model.calib_dir), recipe=recipe,
                     image=None, force=True, progress=False)


def _ort(variant: Variant, model: RealModel, out: Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(model.model_path), str(out), NpyFolderReader(model.calib_dir, model.input_name),
        quant_format=QuantFormat.QDQ if variant.format == "qdq" else QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=variant.granularity == "per-channel",
        calibrate_method=getattr(CalibrationMethod, ORT_METHODS[variant.method]),
    )


def ptq_available() -> str | None:
    """None when ptq's quantizer can be imported, else why not."""
    try:
        import ptq_cli.quantization.api  # noqa: F401
    except Exception as exc:
        return f"ptq_cli.quantization.api not importable ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"
