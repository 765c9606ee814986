"""Automatic fallback: return the nodes that hurt the outputs most to float until the budget holds.

The contract, which other searches (latency) call too:

    trial = evaluate(build, probe, budget.judge, recipe)   # a candidate recipe in, measured drift out

`build(recipe)` quantizes the float model with that recipe (the calibration is done once, before);
`probe` holds the FP32 outputs on the evaluation samples. A search is a sequence of such trials.

The ranking: each fallback unit (a quantized compute node, with the Relu/Clip folded into it)
is measured alone, with only its quantization on and everything else float, as `ptq compare
--per-layer` does (drift/sensitivity.py); the lowest output SQNR comes first. The search then
excludes the first k units, k = 1, 2, 4, ... until the budget holds, bisects between the last
k that failed and the first that held for the fewest, then tries each of those units back in
INT8 (least harmful first) and keeps it there when the budget still holds. Every trial is one build and one run of
the evaluation samples; the search stops at its time limit with the best trial so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx
from tqdm import tqdm

from ptq_cli.drift.layers import Matching
from ptq_cli.drift.probe import Drift, DriftProbe, Judge
from ptq_cli.drift.sensitivity import isolated_rows
from ptq_cli.drift.switches import FloatBase
from ptq_cli.quantize.handlers import OutputRule, handler_for
from ptq_cli.quantize.plan import QuantPlan
from ptq_cli.recipe import Format, Recipe

Build = Callable[[Recipe], tuple[onnx.ModelProto, QuantPlan]]
RANKING_SAMPLES = 4  # isolated runs per unit: enough to order units, cheap enough for every unit
RANKING_SHARE = 0.5  # of the search's time, at most, for ranking; the trials get the rest
PRUNE_AT_MOST = 16  # units a passing fallback may hold for each to be tried back in INT8


@dataclass(frozen=True)
class Trial:
    recipe: Recipe
    model: onnx.ModelProto
    plan: QuantPlan
    drift: Drift
    fallback: tuple[str, ...] = ()  # units the search returned to float (also in recipe.exclude)


@dataclass(frozen=True)
class SearchResult:
    trial: Trial          # the fewest units meeting the budget, else the best drift reached
    passed: bool
    trials: int
    seconds: float
    ranked: tuple[str, ...] = ()


def evaluate(build: Build, probe: DriftProbe, judge: Judge, recipe: Recipe, fallback: tuple[str, ...] = ()) -> Trial:
    """The contract: quantize with `recipe`, measure the candidate's drift, judge it (`Budget.judge`)."""
    model, plan = build(recipe)
    return Trial(recipe, model, plan, probe.measure(model, judge), fallback)


def search(build: Build, probe: DriftProbe, judge: Judge, first: Trial, prepared: onnx.ModelProto, *,
           seconds: float, progress: bool = False, clock: Callable[[], float] = time.monotonic) -> SearchResult:
    """Fall back the fewest ranked units until `first.recipe` passes `judge` (see the module doc)."""
    start = clock()
    if first.drift.passed:
        return SearchResult(first, True, 1, 0.0)
    ranking_ends = start + seconds * RANKING_SHARE
    ranked = rank_units(build, probe, first, prepared, progress=progress, in_time=lambda: clock() < ranking_ends)
    with tqdm(total=None, unit="trial", desc="fallback", disable=not progress, file=sys.stderr) as bar:
        trials = _Trials(build, probe, judge, first, bar, lambda: clock() - start < seconds)
        _grow(trials, ranked)
        _prune(trials)
    chosen = trials.passing if trials.passing is not None else trials.best
    return SearchResult(chosen, trials.passing is not None, trials.count, clock() - start, tuple(ranked))


class _Trials:
    """The trials of one search: the best drift seen and the smallest fallback that meets the budget."""

    def __init__(self, build: Build, probe: DriftProbe, judge: Judge, first: Trial, bar,
                 in_time: Callable[[], bool]) -> None:
        self.build, self.probe, self.judge, self.first, self.bar = build, probe, judge, first, bar
        self.in_time = in_time
        self.best, self.passing, self.count = first, None, 1

    def met(self, units: tuple[str, ...]) -> bool:
        recipe = self.first.recipe.with_(exclude=self.first.recipe.exclude + units)
        result = evaluate(self.build, self.probe, self.judge, recipe, units)
        self.count += 1
        self.bar.update(1)
        passed = result.drift.passed
        self.bar.set_postfix_str(f"{len(units)} node(s) in float, budget {'met' if passed else 'missed'}")
        if passed and (self.passing is None or len(units) <= len(self.passing.fallback)):
            self.passing = result
        if result.drift.score() > self.best.drift.score():
            self.best = result
        return passed


def _grow(trials: _Trials, ranked: Sequence[str]) -> None:
    """The shortest prefix of `ranked` that meets the budget: k = 1, 2, 4, ..., then bisection."""
    low, high, k = 0, None, 1
    while k <= len(ranked) and trials.in_time():
        if trials.met(tuple(ranked[:k])):
            high = k
            break
        low = k
        k = min(2 * k, len(ranked)) if k < len(ranked) else len(ranked) + 1
    while high is not None and high - low > 1 and trials.in_time():
        middle = (low + high) // 2
        if trials.met(tuple(ranked[:middle])):
            high = middle
        else:
            low = middle


def _prune(trials: _Trials, most: int = PRUNE_AT_MOST) -> None:
    """Give back to INT8 each unit of the passing prefix the budget does not need, least harmful
    first: isolated sensitivity ranks a consumer of a broken tensor beside its producer, and the
    prefix drags along units ranked between them."""
    if trials.passing is None or len(trials.passing.fallback) > most:
        return
    for unit in reversed(trials.passing.fallback):
        kept = tuple(u for u in trials.passing.fallback if u != unit)
        if not kept or not trials.in_time():
            break
        trials.met(kept)


def rank_units(build: Build, probe: DriftProbe, first: Trial, prepared: onnx.ModelProto, *,
               progress: bool = False, in_time: Callable[[], bool] | None = None) -> list[str]:
    """The fallback units of `first`, most harmful alone first (see the module doc). Units left
    unmeasured when `in_time()` turns false follow, in graph order."""
    candidate = first.model
    if first.recipe.format is not Format.QDQ:  # the switches need DequantizeLinear inputs
        candidate = build(first.recipe.with_(format=Format.QDQ))[0]
    units = set(fallback_units(prepared, first.plan))
    base = FloatBase(prepared, candidate, _by_name(prepared, candidate))
    picked = [k for k, node in enumerate(base.nodes) if node.name in units]
    chunks, expected = _smallest(probe, RANKING_SAMPLES)
    rows = isolated_rows(base, chunks, expected, probe.pairs, probe.kinds, nodes=picked, progress=progress,
                         in_time=in_time, literal=True)
    measured = [row.node for row in rows]
    return measured + [base.nodes[k].name for k in picked if base.nodes[k].name not in set(measured)]


def fallback_units(prepared: onnx.ModelProto, plan: QuantPlan) -> list[str]:
    """Quantized nodes that carry a quantization of their own; a data-movement node reuses its
    input's scale, so returning it alone to float changes nothing."""
    by_name = {n.name: n for n in prepared.graph.node if n.name}
    units = []
    for name in plan.quantized:
        node = by_name.get(name)
        handler = handler_for(node) if node is not None else None
        if handler is not None and handler.output is not OutputRule.PASSTHROUGH:
            units.append(name)
    return units


def _by_name(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> Matching:
    """Node pairs by name: the candidate was made from this very graph, and keeps its node names."""
    index = {n.name: i for i, n in enumerate(reference.graph.node) if n.name}
    pairs = tuple((index[n.name], i) for i, n in enumerate(candidate.graph.node) if n.name in index)
    return Matching((), (), pairs)


def _smallest(probe: DriftProbe, rows: int) -> tuple[list[dict], list[dict]]:
    """The smallest feeds of the probe (fewest elements, the first among equals) up to `rows`
    rows, in probe order: the ranking runs every unit on them, so they are chosen to be cheap."""
    sizes = [sum(a.size for a in chunk.values()) for chunk in probe.chunks]
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], i))
    chosen, taken = [], 0
    for i in order:
        if taken >= rows:
            break
        chosen.append(i)
        taken += next(iter(probe.chunks[i].values())).shape[0]
    chosen.sort()
    return [probe.chunks[i] for i in chosen], [probe.expected[i] for i in chosen]
