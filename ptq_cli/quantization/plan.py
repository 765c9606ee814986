"""The quantization plan: which nodes run in integer, with which scales and zero-points, and
why every other node stays float.

It is the contract between the stages: placement builds it (placement/place.py), the
arithmetic refines its weights (arithmetic/rounding.py, arithmetic/bias_correction.py) and the
emitters write it. It lives below all of them, so that none imports another's module to read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from ptq_cli.quantization.arithmetic.scheme import QParams, quantize
from ptq_cli.quantization.arithmetic.stochastic import weight_rng

if TYPE_CHECKING:  # only an annotation: the plan does not depend on placement
    from ptq_cli.quantization.placement.patterns import Pattern


class Why(str, Enum):
    """What keeps a node off static INT8: the kind, which code branches on; the reason's text
    says the details for a reader. `--json` carries it as "why"."""

    EXCLUDED = "excluded"            # the recipe's exclude (--exclude)
    FALLBACK = "fallback"            # the drift budget's search returned it to float
    LATENCY = "latency"              # --objective speed timed it faster in float
    RUN_TIME = "run_time"            # quantized at run time instead (a dynamic MatMul)
    NO_KERNEL = "no_kernel"          # onnxruntime has no integer kernel for it (here)
    NOT_FLOAT = "not_float"          # integer or shape arithmetic: nothing to quantize
    NO_RANGE = "no_range"            # a tensor it needs has no calibration range
    FLOAT_PATTERN = "float_pattern"  # part of a pattern placement keeps float (a norm, a written-out activation)
    RANGE_SPAN = "range_span"        # one scale would leave an input a few integer levels (Concat)
    FOLLOWS_FLOAT = "follows_float"  # glue or data movement between float nodes, or an activation with no quantized producer
    UNSUPPORTED = "unsupported"      # the op, its attributes, the opset or the scheme rule it out


@dataclass(frozen=True)
class SkipReason:
    """A node left in float, and why: `why` for code, `reason` for people."""

    node: str
    op_type: str
    reason: str
    why: Why = Why.UNSUPPORTED

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason, "why": self.why.value}


@dataclass(frozen=True)
class WeightPlan:
    tensor: str  # the float initializer
    params: QParams
    stochastic_seed: int | None = None  # Recipe.seed when rounded stochastically; None = nearest
    # The integers chosen beforehand (GPTQ rounding, quantization/arithmetic/rounding.py); None: round here.
    rounded: np.ndarray | None = field(default=None, compare=False, repr=False)

    def integers(self, value: np.ndarray) -> np.ndarray:
        """The integer weight every emitter writes (and bias correction measures)."""
        if self.rounded is not None:
            return self.rounded
        rng = None if self.stochastic_seed is None else weight_rng(self.stochastic_seed, self.tensor)
        return quantize(value, self.params, rng=rng)


@dataclass(frozen=True)
class BiasPlan:
    tensor: str
    input_tensor: str  # the activation whose scale multiplies the weight's
    weight: WeightPlan


@dataclass(frozen=True)
class QuantPlan:
    """Everything the emitters need. Keys are node names / tensor names of the prepared model.

    Frozen: placement builds it (placement/place.py), every later stage derives a new one with
    `dataclasses.replace` (the arithmetic refines weights, quantize_model records what the
    emitters wrote), so a plan a stage was handed is the plan it reads to the end. The maps are
    shared by the plans derived from one another and typed read-only (Mapping): a stage that
    changes one builds a new dict (rounding.py, replan_weights) and never writes into it."""

    activations: Mapping[str, QParams] = field(default_factory=dict)
    weights: Mapping[tuple[str, str], WeightPlan] = field(default_factory=dict)  # (node, input) ->
    biases: Mapping[str, BiasPlan] = field(default_factory=dict)  # node -> bias
    quantized: tuple[str, ...] = ()  # nodes that run in integer
    fused: Mapping[str, str] = field(default_factory=dict)  # Relu/Clip node -> producer node
    # A tensor quantized with another's calibrated range: a compute output followed by data
    # movement and then a Relu/Clip takes the Relu/Clip's range (max-pool and relu commute).
    range_source: Mapping[str, str] = field(default_factory=dict)
    skipped: tuple[SkipReason, ...] = ()
    # What the prepare passes left undone (e.g. tensors whose type could not be inferred).
    prepare_skipped: tuple[str, ...] = ()
    dequantized_float_convs: bool = False  # float Convs read a per-channel DequantizeLinear (ExcludedConvInput)
    notes: tuple[str, ...] = ()  # model-wide changes to the recipe, said to the user
    # MatMuls quantized at run time (DynamicQuantizeLinear + MatMulInteger), after the static pass.
    dynamic: tuple[str, ...] = ()
    # Gather node -> its constant table stored as int8, the gathered rows dequantized (weight-only).
    weight_only: Mapping[str, WeightPlan] = field(default_factory=dict)
    patterns: tuple[Pattern, ...] = ()  # what placement found (patterns.py)
    floating: Mapping[str, str] = field(default_factory=dict)  # node -> why placement keeps it float

    @property
    def quantizes_anything(self) -> bool:
        """Statically, at run time or weight-only: a plan with none of them leaves the model float."""
        return bool(self.quantized or self.dynamic or self.weight_only)


_INT32_MAX = float(np.iinfo(np.int32).max)


def fit_bias_in_int32(weight: WeightPlan, bias: np.ndarray, input_scale: np.ndarray) -> WeightPlan:
    """Widen weight scales so that bias / (S_x · S_w) fits in int32.

    A dead filter (weights ~1e-14 after BatchNorm folding) gets a tiny S_w, and its bias, all
    that channel outputs, would saturate the int32 and come out as ~0. A larger scale costs that
    channel nothing: its weights round to 0 either way. The zero-point is kept, so the new scale
    still covers the old range."""
    qp = weight.params
    needed = np.abs(bias.astype(np.float64)) / (float(input_scale) * _INT32_MAX) * 1.01
    if qp.per_channel and needed.shape != qp.scale.shape:
        return weight
    needed = needed if qp.per_channel else needed.max(initial=0.0)
    if np.all(qp.scale >= needed):
        return weight
    scale = np.maximum(qp.scale, needed).astype(np.float32)
    return replace(weight, params=QParams(scale, qp.zero_point, qp.qtype, qp.axis))
