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
from ptq_cli.quantize.placement.handlers import OutputRule, handler_for
from ptq_cli.quantize.placement.plan import QuantPlan
from ptq_cli.recipe import Format, Recipe

Build = Callable[[Recipe], tuple[onnx.ModelProto, QuantPlan]]
RANKING_SAMPLES = 4  # isolated runs per unit: enough to order units, cheap enough for every unit
RANKING_SHARE = 0.5  # of the search's time, at most, for ranking; the trials get the rest
PRUNE_AT_MOST = 32  # units a passing fallback may hold for each to be tried back in INT8


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
    ranked: tuple[tuple[str, ...], ...] = ()


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


Unit = tuple[str, ...]  # node names that go back to float together (a pattern, or one node)


class _Trials:
    """The trials of one search: the best drift seen and the fewest units that meet the budget.
    A candidate with nothing left quantized meets any budget and is no answer: it never passes."""

    def __init__(self, build: Build, probe: DriftProbe, judge: Judge, first: Trial, bar,
                 in_time: Callable[[], bool]) -> None:
        self.build, self.probe, self.judge, self.first, self.bar = build, probe, judge, first, bar
        self.in_time = in_time
        self.best, self.passing, self.passing_units, self.count = first, None, (), 1

    def met(self, units: tuple[Unit, ...]) -> bool:
        names = tuple(name for unit in units for name in unit)
        recipe = self.first.recipe.with_(exclude=self.first.recipe.exclude + names)
        result = evaluate(self.build, self.probe, self.judge, recipe, names)
        self.count += 1
        self.bar.update(1)
        passed = result.drift.passed and bool(result.plan.quantized)
        self.bar.set_postfix_str(f"{len(names)} node(s) in float, budget {'met' if passed else 'missed'}")
        if passed and (self.passing is None or len(units) <= len(self.passing_units)):
            self.passing, self.passing_units = result, units
        if result.plan.quantized and result.drift.score() > self.best.drift.score():
            self.best = result
        return passed


def _grow(trials: _Trials, ranked: Sequence[Unit]) -> None:
    """The shortest prefix of `ranked` that meets the budget: k = 1, 2, 4, ..., all but one, all;
    then bisection between the last k that missed and the first that met."""
    n = len(ranked)
    sizes = sorted({min(2 ** i, n) for i in range(n.bit_length() + 1)} | ({n - 1} if n > 1 else set()))
    low, high = 0, None
    for k in sizes:
        if not trials.in_time():
            break
        if trials.met(tuple(ranked[:k])):
            high = k
            break
        low = k
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
    if trials.passing is None or len(trials.passing_units) > most:
        return
    for unit in reversed(trials.passing_units):
        kept = tuple(u for u in trials.passing_units if u != unit)
        if not kept or not trials.in_time():
            break
        trials.met(kept)


def rank_units(build: Build, probe: DriftProbe, first: Trial, prepared: onnx.ModelProto, *,
               progress: bool = False, in_time: Callable[[], bool] | None = None) -> list[Unit]:
    """The fallback units of `first`, most harmful alone first (see the module doc): a unit ranks
    where its most harmful node does. Units left unmeasured when `in_time()` turns false follow,
    in graph order."""
    candidate = first.model
    if first.recipe.format is not Format.QDQ:  # the switches need DequantizeLinear inputs
        candidate = build(first.recipe.with_(format=Format.QDQ))[0]
    units = fallback_units(prepared, first.plan)
    unit_of = {name: unit for unit in units for name in unit}
    base = FloatBase(prepared, candidate, _by_name(prepared, candidate))
    picked = [k for k, node in enumerate(base.nodes) if node.name in unit_of]
    chunks, expected = _smallest(probe, RANKING_SAMPLES)
    rows = isolated_rows(base, chunks, expected, probe.pairs, probe.kinds, nodes=picked, progress=progress,
                         in_time=in_time, literal=True)
    measured = [unit_of[row.node] for row in rows]
    ranked = [u for unit in measured for u in (unit, *_feeding_units(unit, prepared, unit_of))]
    ranked += [unit_of[base.nodes[k].name] for k in picked] + units
    return list(dict.fromkeys(ranked))  # first place of each unit, in order


def _feeding_units(unit: Unit, prepared: onnx.ModelProto, unit_of: dict[str, Unit]) -> list[Unit]:
    """The units whose quantized outputs `unit` reads (through data movement). They rank right
    after it: a node returned to float still reads its producer's quantized output (a QLinear
    producer keeps its output Q/DQ), so the harm measured at the reader may belong to them."""
    producer = {out: node for node in prepared.graph.node for out in node.output}
    inside = set(unit)
    found, todo = [], [t for node in prepared.graph.node if node.name in inside for t in node.input]
    for _ in range(256):  # data-movement chains are short; the bound guards against cycles
        if not todo:
            break
        node = producer.get(todo.pop())
        if node is None or node.name in inside:
            continue
        if node.name in unit_of:
            found.append(unit_of[node.name])
        elif node.input:
            todo.append(node.input[0])
    return found


def fallback_units(prepared: onnx.ModelProto, plan: QuantPlan) -> list[Unit]:
    """What can go back to float: each placement pattern (patterns.py) with a quantized node,
    whole, and each other quantized node that carries a quantization of its own (with the
    Relu/Clip folded into it), in graph order; then the run-time MatMuls and int8 tables. A
    data-movement node reuses its input's scale: returning it alone to float changes nothing."""
    by_name = {n.name: n for n in prepared.graph.node if n.name}
    in_pattern = {name: p for p in plan.patterns for name in p.nodes}
    units: list[Unit] = []
    for name in plan.quantized:
        node = by_name.get(name)
        handler = handler_for(node) if node is not None else None
        if name in in_pattern:
            unit = tuple(n for n in in_pattern[name].nodes)
        elif handler is not None and handler.output is not OutputRule.PASSTHROUGH:
            unit = (name,)
        else:
            continue
        if unit not in units:
            units.append(unit)
    # MatMuls quantized at run time and int8 embedding tables: the isolated switches cannot
    # measure them (no DequantizeLinear feeds them), so they rank last, but they can go back too.
    order = {n.name: i for i, n in enumerate(prepared.graph.node)}
    others = sorted(set(plan.dynamic) | set(plan.weight_only), key=lambda name: order.get(name, len(order)))
    return units + [(name,) for name in others if name not in in_pattern]


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
