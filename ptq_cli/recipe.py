"""The typed recipe: everything that decides how a model is quantized, as frozen data.

A Recipe round-trips through JSON (`to_dict` / `from_dict`); unknown keys and bad values are
refused with a message that says what is allowed, never silently ignored.
"""

from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ptq_cli.errors import UsageError


class QType(enum.Enum):
    """An integer type a tensor is quantized to, with its range."""

    UINT8 = "uint8"
    INT8 = "int8"
    UINT16 = "uint16"
    INT16 = "int16"
    UINT4 = "uint4"
    INT4 = "int4"

    @property
    def bits(self) -> int:
        return int("".join(c for c in self.value if c.isdigit()))

    @property
    def signed(self) -> bool:
        return not self.value.startswith("u")

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def onnx_type(self) -> int:
        return {
            QType.UINT8: onnx.TensorProto.UINT8,
            QType.INT8: onnx.TensorProto.INT8,
            QType.UINT16: onnx.TensorProto.UINT16,
            QType.INT16: onnx.TensorProto.INT16,
            QType.UINT4: onnx.TensorProto.UINT4,
            QType.INT4: onnx.TensorProto.INT4,
        }[self]

    @property
    def numpy_type(self):
        # 4-bit values are held in int8/uint8 arrays; onnx packs them when the tensor is made.
        return {
            QType.UINT8: np.uint8,
            QType.INT8: np.int8,
            QType.UINT16: np.uint16,
            QType.INT16: np.int16,
            QType.UINT4: np.uint8,
            QType.INT4: np.int8,
        }[self]


class Format(enum.Enum):
    """How the quantized graph is written."""

    QDQ = "qdq"  # QuantizeLinear/DequantizeLinear around float ops; onnxruntime fuses them
    QOPERATOR = "qoperator"  # QLinearConv, QLinearMatMul, ... integer operators


class Rounding(enum.Enum):
    """How float weights become integers."""

    NEAREST = "nearest"  # round half to even, as QuantizeLinear does
    GPTQ = "gptq"  # column by column with error feedback through the input's Gram matrix (needs data)
    STOCHASTIC = "stochastic"  # unbiased random rounding, seeded by Recipe.seed


class ExcludedConvInput(enum.Enum):
    """What a Conv left in float reads when the tensor it reads is quantized (its producer is integer)."""

    FLOAT = "float"  # the float tensor: exact, but the producer loses its output QuantizeLinear and runs float too
    # A per-channel DequantizeLinear of the integer tensor: the producer keeps its integer kernel, and
    # onnxruntime (which re-quantizes a float Conv behind a per-tensor DequantizeLinear) leaves it float.
    DEQUANTIZED = "dequantized"


class Target(enum.Enum):
    """The CPUs a model's integer weights must be exact on.

    onnxruntime's u8·s8 kernels on x86 without VNNI add pairs of products in saturating 16-bit
    lanes (quantization/arithmetic/pairs.py); a weight whose same-sign pairs stay within 128 is exact
    there too."""

    PORTABLE = "portable"  # exact on every CPU: no pair of int8 weights can saturate a 16-bit lane
    VNNI = "vnni"  # full-range weights: exact where kernels accumulate in 32 bits (x86 VNNI/AMX, ARM)


class CalibMethod(enum.Enum):
    """How an activation's float range is chosen from calibration statistics."""

    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"
    MSE = "mse"


@dataclass(frozen=True)
class PerTensor:
    """One scale and zero-point for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One scale and zero-point per slice along an axis; None means the op's output-channel axis."""

    axis: int | None = None


Granularity = PerTensor | PerChannel


@dataclass(frozen=True)
class TensorSpec:
    """How one class of tensors (weights or activations) is quantized."""

    dtype: QType = QType.INT8
    symmetric: bool = True
    granularity: Granularity = PerChannel()
    reduce_range: bool = False  # 7-bit range, for CPUs without VNNI (avoids int16 saturation)
    power_of_two: bool = False  # scale = 2**k, for integer-only hardware

    def __post_init__(self) -> None:
        if not isinstance(self.dtype, QType):
            raise UsageError(f"dtype must be one of {[q.value for q in QType]}, got {self.dtype!r}")
        if not isinstance(self.granularity, (PerTensor, PerChannel)):
            raise UsageError(f"granularity must be PerTensor() or PerChannel(axis), got {self.granularity!r}")


@dataclass(frozen=True)
class CalibrationSpec:
    """How activation ranges are measured."""

    method: CalibMethod = CalibMethod.MINMAX
    percentile: float = 99.999
    bins: int = 2048
    moving_average: float | None = None  # EMA constant for min/max, e.g. 0.01; None = absolute min/max

    def __post_init__(self) -> None:
        if not isinstance(self.method, CalibMethod):
            raise UsageError(f"method must be one of {[m.value for m in CalibMethod]}, got {self.method!r}")
        if not 0.0 < self.percentile <= 100.0:
            raise UsageError(f"percentile must be in (0, 100], got {self.percentile}")
        if not 16 <= self.bins <= 1 << 20:  # beyond a million bins is memory, not precision
            raise UsageError(f"bins must be between 16 and {1 << 20}, got {self.bins}")
        if self.moving_average is not None and not 0.0 < self.moving_average <= 1.0:
            raise UsageError(f"moving_average must be in (0, 1], got {self.moving_average}")


@dataclass(frozen=True)
class WeightOnly:
    """Weight-only quantization: block-wise integer weights of MatMul (and Gather tables), float
    activations. Written as com.microsoft.MatMulNBits / GatherBlockQuantized, or with qdq as
    block-wise DequantizeLinear (opset 21)."""

    dtype: QType = QType.INT4
    block_size: int = 32
    symmetric: bool = True
    qdq: bool = False
    accuracy_level: int = 0  # MatMulNBits: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute
    embeddings: bool = True  # Gather tables too

    def __post_init__(self) -> None:
        if self.dtype not in (QType.INT4, QType.INT8):
            raise UsageError(f"weight-only dtype must be int4 or int8, got {self.dtype!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UsageError(f"block size must be a power of two >= 16 (32, 64, 128), got {self.block_size}")
        if self.accuracy_level not in range(5):
            raise UsageError(f"accuracy_level must be 0..4, got {self.accuracy_level}")


@dataclass(frozen=True)
class WeightCodebook:
    """Non-uniform weights: each weight tensor (or output channel) clustered to 2**bits float
    centroids; the file stores the integer indices and the small codebook, the graph expands
    them back (onnxruntime folds the expansion at load), and the model runs in float."""

    bits: int = 4
    granularity: Granularity = PerChannel()  # one codebook per output channel, or per tensor

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise UsageError(f"codebook bits must be an integer from 1 to 8, got {self.bits!r}")
        if not isinstance(self.granularity, (PerTensor, PerChannel)):
            raise UsageError(f"granularity must be PerTensor() or PerChannel(), got {self.granularity!r}")


# What --dynamic rewrites. Only ops whose integer kernel is faster than float by default:
# onnxruntime's ConvInteger runs slower than its float Conv (4.3x on PP-OCR's recognizer).
DYNAMIC_OPS = ("MatMul", "Gemm", "Conv", "LSTM")
DEFAULT_DYNAMIC_OPS = ("MatMul", "Gemm", "LSTM")

DEFAULT_WEIGHTS = TensorSpec(dtype=QType.INT8, symmetric=True, granularity=PerChannel())
DEFAULT_ACTIVATIONS = TensorSpec(dtype=QType.UINT8, symmetric=False, granularity=PerTensor())


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the quantized model, apart from the model and the data."""

    weights: TensorSpec = DEFAULT_WEIGHTS
    activations: TensorSpec = DEFAULT_ACTIVATIONS
    format: Format = Format.QDQ
    dynamic: bool = False
    exclude: tuple[str, ...] = ()  # node names or op types left in float
    # MatMul/Gemm nodes (by name) quantized at run time (DynamicQuantizeLinear → MatMulInteger)
    # instead of statically: what the drift budget's fallback chooses before float, as it keeps speed.
    run_time: tuple[str, ...] = ()
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    bias_correction: bool = True  # subtract (W_q - W)·E[x] from Conv/Gemm biases (static only)
    equalize: bool = False  # cross-layer equalization of Conv -> Relu/ReLU6 -> Conv pairs (needs data)
    rounding: Rounding = Rounding.NEAREST  # how weights are rounded to integers
    seed: int = 0  # of stochastic rounding (and anything else random): same seed, same bytes
    weight_only: WeightOnly | None = None  # block-wise weights only, activations stay float
    weight_codebook: WeightCodebook | None = None  # clustered (non-uniform) weights, float runtime
    dynamic_ops: tuple[str, ...] = DEFAULT_DYNAMIC_OPS  # op types --dynamic rewrites (of DYNAMIC_OPS)
    excluded_conv_input: ExcludedConvInput = ExcludedConvInput.FLOAT  # see ExcludedConvInput
    target: Target = Target.PORTABLE  # the CPUs the integer weights are exact on

    @property
    def bounds_pairs(self) -> bool:
        """Whether int8 weights of u8·s8 kernels keep their 16-bit pair sums in range."""
        return self.target is Target.PORTABLE and self.weights.dtype is QType.INT8 and \
            self.activations.dtype in (QType.UINT8, QType.INT8)

    def __post_init__(self) -> None:
        if not isinstance(self.format, Format):
            raise UsageError(f"format must be one of {[f.value for f in Format]}, got {self.format!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed must be a non-negative integer, got {self.seed!r}")
        if isinstance(self.activations.granularity, PerChannel):
            raise UsageError("activations can only be quantized per tensor")
        if not isinstance(self.target, Target):
            raise UsageError(f"target must be one of {[t.value for t in Target]}, got {self.target!r}")
        if not isinstance(self.rounding, Rounding):
            raise UsageError(f"rounding must be one of {[r.value for r in Rounding]}, got {self.rounding!r}")
        if self.weight_codebook is not None and (self.dynamic or self.weight_only is not None):
            raise UsageError("a weight codebook replaces the other weight schemes: drop --dynamic / --weight-only")
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "run_time", tuple(self.run_time))
        if self.run_time and (self.dynamic or self.weight_only is not None or self.weight_codebook is not None):
            raise UsageError("run_time names MatMuls of a static quantization; --dynamic quantizes every one at "
                             "run time, and weight-only schemes none")
        object.__setattr__(self, "dynamic_ops", tuple(self.dynamic_ops))
        unknown = [op for op in self.dynamic_ops if op not in DYNAMIC_OPS]
        if unknown:
            raise UsageError(f"dynamic ops must be among {', '.join(DYNAMIC_OPS)}, got {', '.join(unknown)}")

    def with_(self, **changes: Any) -> "Recipe":
        return replace(self, **changes)

    def excludes(self, node_name: str, op_type: str) -> bool:
        return node_name in self.exclude or op_type in self.exclude

    # --- JSON round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        return _from_plain(cls, data, "recipe")


def _to_plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, PerTensor):
        return {"kind": "per_tensor"}
    if isinstance(value, PerChannel):
        return {"kind": "per_channel", "axis": value.axis}
    if hasattr(value, "__dataclass_fields__"):
        return {f.name: _to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


_NESTED = {"weights": TensorSpec, "activations": TensorSpec, "calibration": CalibrationSpec,
           "weight_only": WeightOnly, "weight_codebook": WeightCodebook}
_ENUMS = {"dtype": QType, "format": Format, "method": CalibMethod, "rounding": Rounding,
          "excluded_conv_input": ExcludedConvInput, "target": Target}


def _from_plain(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be an object, got {type(data).__name__}")
    annotations = {f.name: f.type for f in fields(cls)}
    known = set(annotations)
    unknown = sorted(set(data) - known)
    if unknown:
        raise UsageError(f"unknown key(s) {unknown} in {where}; allowed: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, raw in data.items():
        if key in _NESTED and raw is None and key in ("weight_only", "weight_codebook"):
            kwargs[key] = None
        elif key in _NESTED:
            kwargs[key] = _from_plain(_NESTED[key], raw, f"{where}.{key}")
        elif key in _ENUMS:
            try:
                kwargs[key] = _ENUMS[key](raw)
            except ValueError:
                allowed = [e.value for e in _ENUMS[key]]
                raise UsageError(f"{where}.{key} must be one of {allowed}, got {raw!r}") from None
        elif key == "granularity":
            kwargs[key] = _granularity(raw, f"{where}.{key}")
        else:
            _check_plain(raw, str(annotations[key]), f"{where}.{key}")
            kwargs[key] = tuple(raw) if key in ("exclude", "run_time", "dynamic_ops") else raw
    return cls(**kwargs)


# What a plain JSON value must be for a field of each annotated type (the other annotations are
# enums and nested specs, checked above). A string where a list is expected would otherwise
# become a tuple of letters, and "false" a true value.
_PLAIN_TYPES = {
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a finite number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "tuple[str, ...]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v)),
}


def _check_plain(raw: Any, annotation: str, where: str) -> None:
    optional = annotation.endswith(" | None")
    base = annotation[:-len(" | None")] if optional else annotation
    if optional and raw is None or base not in _PLAIN_TYPES:
        return
    expected, fits = _PLAIN_TYPES[base]
    if not fits(raw):
        shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:57] + "..."
        raise UsageError(f"{where} must be {expected}{' or null' if optional else ''}, "
                         f"got {type(raw).__name__} {shown}")


def load_recipe(path: str | os.PathLike) -> "Recipe":
    """A Recipe from a JSON file, refused with the reason when it is not UTF-8 JSON of a recipe."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"recipe {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}); save it as UTF-8 JSON") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"recipe {path} is not valid JSON: {exc}") from None
    try:
        return Recipe.from_dict(data)
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _granularity(raw: Any, where: str) -> Granularity:
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind == "per_tensor" and set(raw) == {"kind"}:
        return PerTensor()
    if kind == "per_channel" and set(raw) <= {"kind", "axis"}:
        _check_plain(raw.get("axis"), "int | None", f"{where}.axis")
        return PerChannel(axis=raw.get("axis"))
    raise UsageError(f'{where} must be {{"kind": "per_tensor"}} or {{"kind": "per_channel", "axis": N}}, got {raw!r}')
