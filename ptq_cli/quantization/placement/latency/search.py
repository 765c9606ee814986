"""Choose the fastest INT8 placement measured on this machine, and never one slower than FP32.

1. profile the float model and the fully quantized one per node (onnxruntime's profiler);
2. estimate every float prefix with the cost model (candidates.py) and keep the best few that
   the caller accepts (e.g. a drift budget), plus the nodes the profiles show slower in INT8
   wherever they are;
3. time them end to end, interleaved with the FP32 model, and take the fastest; a candidate
   within `tie` (3 %) of the fastest that leaves fewer nodes in float wins, and a placement
   other than the fully quantized one must beat it in 3 of 4 interleaved rounds, so that noise
   does not flip the choice between two equal placements;
4. the choice is a Recipe (its `exclude` lists the float prefix): written into the output's
   metadata, `--recipe` reproduces the model without timing anything.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import onnx

from ptq_cli.errors import PtqError
from ptq_cli.model.external import serialized
from ptq_cli.quantization.placement.latency.candidates import (Candidate, Costs, prefix_candidates,
                                                               slower_nodes_candidate)
from ptq_cli.quantization.placement.latency.cost import CrossingCost, node_costs, tensor_elements
from ptq_cli.quantization.placement.latency.machine import Feeds, Machine, Timing
from ptq_cli.recipe import ExcludedConvInput, Recipe


class Objective(enum.Enum):
    """What `quantize` optimizes for."""

    SPEED = "speed"  # measured placement, the fastest; never slower than FP32
    ACCURACY = "accuracy"  # of the placements timed, the one with most nodes in float that still beats FP32
    SIZE = "size"  # every node that can be quantized is (the smallest file); nothing timed


class IfSlower(enum.Enum):
    """What to write when no INT8 placement beats FP32 on this machine."""

    # The default is INT8: timing on a loaded machine is noisy near 1x, a model is often quantized
    # for its size or for another machine, and an exit status that flips with load is no gate.
    INT8 = "int8"  # the fastest INT8 model all the same, with a warning
    FAIL = "fail"  # nothing; exit 1 (for a CI gate on the deployment machine)
    FLOAT = "float"  # the float model, unchanged


@dataclass(frozen=True)
class Trial:
    """One placement timed end to end."""

    float_nodes: tuple[str, ...]
    estimate_us: float
    timing: Timing
    speedup: float  # FP32 time / this time, median over interleaved rounds
    variant: str = ""  # what else differs from the recipe asked for

    def to_dict(self) -> dict:
        low, high = self.timing.spread_ms
        return {"float_nodes": list(self.float_nodes), "variant": self.variant, "estimate_ms": self.estimate_us / 1e3,
                "median_ms": self.timing.median_ms, "p25_ms": low, "p75_ms": high, "speedup": self.speedup}


@dataclass(frozen=True)
class LatencyDecision:
    """The placement chosen, with what was measured to choose it."""

    recipe: Recipe
    model: onnx.ModelProto
    plan: object  # the QuantPlan of `model`
    fp32: Timing
    chosen: Trial
    trials: tuple[Trial, ...]
    timed_on: str = ""  # the inputs the models were timed on

    @property
    def speedup(self) -> float:
        return self.chosen.speedup

    @property
    def pays(self) -> bool:
        return self.speedup > 1.0

    def to_dict(self) -> dict:
        low, high = self.fp32.spread_ms
        return {"timed_on": self.timed_on, "fp32_ms": self.fp32.median_ms, "fp32_p25_ms": low, "fp32_p75_ms": high,
                "int8_ms": self.chosen.timing.median_ms, "speedup": self.speedup, "pays": self.pays,
                "float_prefix": list(self.chosen.float_nodes), "trials": [t.to_dict() for t in self.trials]}


class SlowerThanFloat(PtqError):
    """No INT8 placement beats the FP32 model on this machine (exit 1, like a missed threshold)."""

    exit_code = 1

    def __init__(self, decision: LatencyDecision) -> None:
        self.decision = decision
        super().__init__(
            f"INT8 does not pay on this machine: FP32 {decision.fp32.median_ms:.3f} ms, fastest INT8 "
            f"{decision.chosen.timing.median_ms:.3f} ms ({decision.speedup:.2f}x"
            f"{', timed on ' + decision.timed_on if decision.timed_on else ''}); nothing written. "
            "--if-slower float writes the float model, --if-slower int8 the INT8 one all the same, "
            "--objective size quantizes without timing")


Build = Callable[[Recipe], tuple[onnx.ModelProto, object]]


def search_placement(float_model: onnx.ModelProto, prepared: onnx.ModelProto, recipe: Recipe, build: Build,
                     feeds: Sequence[Feeds], machine: Machine, *, accept: Callable[[Recipe], bool] | None = None,
                     timed: int = 3, tie: float = 0.03, crossing: CrossingCost = CrossingCost(),
                     objective: Objective = Objective.SPEED) -> LatencyDecision:
    """The fastest placement of `recipe` on `machine`. `build(recipe)` quantizes the model
    (returns the model and its plan); `prepared` is the float graph whose node names plans use;
    `float_model` is the reference timed as FP32."""
    full, full_plan = build(recipe)
    fp32_profile = machine.profile(serialized(prepared), feeds)
    int8_profile = machine.profile(serialized(full), feeds)
    costs = Costs(node_costs(fp32_profile, prepared), node_costs(int8_profile, prepared),
                  sum(us for _, us in int8_profile.values()), tensor_elements(prepared, feeds), crossing)
    # The fully quantized model is always timed; then the best estimated prefixes.
    built: list[tuple[Candidate, Recipe, onnx.ModelProto, object]] = [
        (Candidate((), (), costs.int8_total_us), recipe, full, full_plan)]
    if objective is Objective.SPEED and recipe.exclude and recipe.excluded_conv_input is ExcludedConvInput.FLOAT:
        # Convs excluded in the middle of the integer region: reading a per-channel
        # DequantizeLinear keeps their producers integer (slightly less exact, often faster).
        variant = recipe.with_(excluded_conv_input=ExcludedConvInput.DEQUANTIZED)
        model, plan = build(variant)
        if model.graph != full.graph:
            built.append((Candidate((), (), costs.int8_total_us), variant, model, plan))
    def try_candidate(candidate: Candidate) -> None:
        variant = recipe.with_(exclude=recipe.exclude + candidate.float_nodes)
        if accept is not None and not accept(variant):
            return
        model, plan = build(variant)
        # A placement that leaves nothing quantized is the float model: `if_slower` decides on
        # that, never a silent win of a "placement".
        if plan.quantizes_anything:
            built.append((candidate, variant, model, plan))

    for candidate in prefix_candidates(prepared, full_plan.quantized, costs):
        if len(built) > timed:
            break
        if candidate.float_nodes:
            try_candidate(candidate)
    # Besides the prefixes, one candidate of islands: every node the profiles show slower in INT8.
    slower = slower_nodes_candidate(prepared, full_plan.quantized, costs)
    if slower is not None and all(c.float_nodes != slower.float_nodes for c, *_ in built):
        try_candidate(slower)
    timings = machine.time([serialized(float_model)] + [serialized(m) for _, _, m, _ in built], feeds)
    trials = [Trial(c.float_nodes, c.estimate_us, t, t.speedup_over(timings[0]), _variant(r, recipe))
              for (c, r, *_), t in zip(built, timings[1:])]
    best = _most_float(trials) if objective is Objective.ACCURACY else _choose(trials, tie)
    _, chosen_recipe, model, plan = built[trials.index(best)]
    return LatencyDecision(chosen_recipe, model, plan, timings[0], best, tuple(trials))


def retime(decision: LatencyDecision, float_model: onnx.ModelProto, model: onnx.ModelProto, plan: object,
           recipe: Recipe, feeds: Sequence[Feeds], machine: Machine,
           why: str = "after the drift budget's fallback") -> LatencyDecision:
    """The decision after its model was changed (the drift budget sent nodes back to float, or
    INT8 is written for its size though it does not pay): the model written timed against FP32
    again, so that the never-slower verdict is about what is written."""
    fp32, final = machine.time([serialized(float_model), serialized(model)], feeds)
    kept = tuple(n for n in decision.chosen.float_nodes if n in recipe.exclude)
    added = tuple(n for n in recipe.exclude if n not in decision.chosen.float_nodes)
    trial = Trial(kept + added, 0.0, final, final.speedup_over(fp32), why)
    return replace(decision, recipe=recipe, model=model, plan=plan, fp32=fp32, chosen=trial,
                   trials=decision.trials + (trial,))


def _variant(chosen: Recipe, asked: Recipe) -> str:
    if chosen.excluded_conv_input is not asked.excluded_conv_input:
        return f"excluded_conv_input={chosen.excluded_conv_input.value}"
    return ""


def _most_float(trials: list[Trial]) -> Trial:
    """More nodes in float, less rounding: the largest float prefix still faster than FP32 (when
    none is, the fastest, for the never-slower verdict)."""
    paying = [t for t in trials if t.speedup > 1.0]
    if not paying:
        return max(trials, key=lambda t: t.speedup)
    return max(paying, key=lambda t: (len(t.float_nodes), t.speedup))


def _choose(trials: list[Trial], tie: float, steady: float = 0.75) -> Trial:
    """The fastest; within `tie` of it, the one with fewer float nodes. A placement other than
    the first (the recipe as asked, fully quantized) must also beat it in `steady` of the
    interleaved rounds: a win the noise could have made is not worth a different model."""
    fastest = max(t.speedup for t in trials)
    close = [t for t in trials if t.speedup >= fastest * (1.0 - tie)]
    pick = min(close, key=lambda t: (len(t.float_nodes), -t.speedup))
    baseline = trials[0]
    if pick is not baseline and _wins(pick.timing, baseline.timing) < steady:
        return baseline
    return pick


def _wins(a: Timing, b: Timing) -> float:
    """The share of interleaved rounds in which `a` ran faster than `b`."""
    n = min(len(a.rounds), len(b.rounds))
    return sum(x < y for x, y in zip(a.rounds[:n], b.rounds[:n])) / max(n, 1)
