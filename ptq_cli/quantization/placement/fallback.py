"""Automatic fallback: return the nodes that hurt the outputs most to float until the budget holds.

The contract, which other searches (latency) call too:

    trial = evaluate(build, probe, budget.judge, recipe)   # a candidate recipe in, measured drift out

`build(recipe)` quantizes the float model with that recipe (the calibration is done once, before);
`probe` holds the FP32 outputs on the evaluation samples. A search is a sequence of such trials.

The ranking: each fallback unit (a quantized compute node, with the Relu/Clip folded into it)
is measured alone, with only its quantization on and everything else float, as `ptq compare
--per-layer` does (drift/sensitivity.py); the lowest output SQNR comes first. The search then
takes the first k units off static INT8, k = 1, 2, 4, ... until the budget holds, and bisects
between the last k that failed and the first that held for the fewest. A unit off static INT8
that is a MatMul/Gemm on a constant weight is quantized at run time (dynamic:
DynamicQuantizeLinear → MatMulInteger, faster than float on every MatMul worth quantizing); the
others, and those when no prefix meets the budget that way, go back to float. Under limits that
move smoothly (SQNR, cosine) each unit of the prefix is then tried back in INT8, least harmful
first, or at run time, and kept there when the budget still holds (see _prune for why not under
a share of the samples). 16-bit activations are no step of this ladder: onnxruntime's CPU
kernels run them as float ops between Q/DQ pairs, slower than float itself. Every trial is one
build and one run of the evaluation samples (stopped as soon as the candidate can no longer pass:
drift/probe.py); the search stops at its limit in candidates (or seconds, when given) with the
best trial so far.
"""

from __future__ import annotations

import math
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
from ptq_cli.model.graph import GraphIndex
from ptq_cli.quantization.placement.handlers import OutputRule, handler_for
from ptq_cli.quantization.plan import QuantPlan
from ptq_cli.quantization.placement.transformer import runs_at_run_time
from ptq_cli.quantization.timings import Stopwatch, TrialTime
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
    run_time: tuple[str, ...] = ()  # units the search quantizes at run time instead (also in recipe.run_time)
    seconds: TrialTime | None = None


@dataclass(frozen=True)
class SearchResult:
    trial: Trial          # the fewest units meeting the budget, else the best drift reached
    passed: bool
    trials: int
    seconds: float
    ranked: tuple[tuple[str, ...], ...] = ()


def evaluate(build: Build, probe: DriftProbe, judge: Judge, recipe: Recipe, fallback: tuple[str, ...] = (),
             run_time: tuple[str, ...] = (), *, stop_early: bool = False, progress: str | None = None) -> Trial:
    """The contract: quantize with `recipe`, measure the candidate's drift, judge it (`Budget.judge`).
    `stop_early`: stop running samples once the candidate can no longer pass (DriftProbe.measure);
    `progress`: the label of a bar over its samples."""
    start = time.perf_counter()
    model, plan = build(recipe)
    built = time.perf_counter()
    loaded = probe.load(model)
    ready = time.perf_counter()
    drift = probe.measure_loaded(loaded, judge, stop_early=stop_early, progress=progress)
    seconds = TrialTime(built - start, ready - built, time.perf_counter() - ready, drift.samples, probe.samples,
                        drift.passed)
    return Trial(recipe, model, plan, drift, fallback, run_time, seconds)


def search(build: Build, probe: DriftProbe, judge: Judge, first: Trial, prepared: onnx.ModelProto, *,
           seconds: float, max_trials: float = math.inf, progress: bool = False,
           clock: Callable[[], float] = time.monotonic, stop_early: bool = False, workers: int = 1,
           stopwatch: Stopwatch | None = None) -> SearchResult:
    """Fall back the fewest ranked units until `first.recipe` passes `judge` (see the module doc),
    measuring at most `max_trials` candidates (`first` included) in at most `seconds`.
    `stop_early`: each trial stops running samples once it can no longer pass (the same verdicts;
    the figures of a failed trial then cover the samples it ran); `workers`: sessions that run
    the ranking's variants at once (the same rows; the trials' samples run where `probe` says)."""
    start = clock()
    if first.drift.passed:
        return SearchResult(first, True, 1, 0.0)
    stopwatch = stopwatch or Stopwatch()
    ranking_ends = start + seconds * RANKING_SHARE
    with stopwatch.phase("ranking"):
        ranked = rank_units(build, probe, first, prepared, progress=progress,
                            in_time=lambda: clock() < ranking_ends, workers=workers)
    with tqdm(total=None, unit="trial", desc="fallback trials", disable=not progress, file=sys.stderr) as bar, \
            stopwatch.phase("trials"):
        trials = _Trials(build, probe, judge, first, bar, lambda: clock() - start < seconds, stop_early, stopwatch,
                         max_trials)
        run_time = _run_time_units(prepared, ranked, first.plan.dynamic, first.recipe)
        _grow(trials, ranked, run_time)
        _prune(trials, run_time)
    chosen = trials.passing if trials.passing is not None else trials.best
    return SearchResult(chosen, trials.passing is not None, trials.count, clock() - start, tuple(ranked))


Unit = tuple[str, ...]  # node names that go back to float together (a pattern, or one node)


class _Trials:
    """The trials of one search: the best drift seen and the fewest units that meet the budget.
    A candidate with nothing left quantized meets any budget and is no answer: it never passes."""

    def __init__(self, build: Build, probe: DriftProbe, judge: Judge, first: Trial, bar,
                 in_time: Callable[[], bool], stop_early: bool = False, stopwatch: Stopwatch | None = None,
                 max_trials: float = math.inf) -> None:
        self.build, self.probe, self.judge, self.first, self.bar = build, probe, judge, first, bar
        self.in_seconds, self.max_trials = in_time, max_trials
        self.stop_early, self.stopwatch = stop_early, stopwatch or Stopwatch()
        self.best, self.passing, self.count = first, None, 1
        self.passing_units: tuple[Unit, ...] = ()      # the units the passing trial takes off static INT8
        self.passing_run_time: tuple[Unit, ...] = ()   # of those, the ones quantized at run time
        self.verdicts: dict[tuple[tuple[str, ...], tuple[str, ...]], bool | None] = {}  # each recipe measured once

    def in_time(self) -> bool:
        """Whether another candidate may be measured: within the count and the seconds."""
        return self.count < self.max_trials and self.in_seconds()

    def met(self, units: tuple[Unit, ...], run_time: tuple[Unit, ...] = ()) -> bool | None:
        """Whether the budget holds with `units` off static INT8: those of `run_time` quantized at
        run time, the others in float. None when nothing is left quantized (the glue that read
        only those units goes float with them): no answer, but past every answer."""
        run_time = tuple(u for u in run_time if u in units)
        floated = tuple(name for unit in units if unit not in run_time for name in unit)
        dynamic = tuple(name for unit in run_time for name in unit)
        if (floated, dynamic) in self.verdicts:
            return self.verdicts[(floated, dynamic)]
        recipe = self.first.recipe.with_(exclude=self.first.recipe.exclude + floated,
                                         run_time=self.first.recipe.run_time + dynamic)
        result = evaluate(self.build, self.probe, self.judge, recipe, floated, dynamic, stop_early=self.stop_early)
        self.stopwatch.trials.append(result.seconds)
        self.count += 1
        self.bar.update(1)
        anything = result.plan.quantizes_anything
        passed = result.drift.passed and anything
        at_run_time = f", {len(dynamic)} at run time" if dynamic else ""
        shown = f"budget {'met' if passed else 'missed'}" if anything else "nothing left quantized"
        self.bar.set_postfix_str(f"{len(floated)} node(s) in float{at_run_time}, {shown}")
        # Fewer units in float first, then fewer at run time: static INT8 > run time > float.
        cost = (len(units) - len(run_time), len(run_time))
        if passed and (self.passing is None or cost <= (len(self.passing_units) - len(self.passing_run_time),
                                                        len(self.passing_run_time))):
            self.passing, self.passing_units, self.passing_run_time = result, units, run_time
        if anything and result.drift.score() > self.best.drift.score():
            self.best = result
        verdict = passed if anything else None
        self.verdicts[(floated, dynamic)] = verdict
        return verdict


def _grow(trials: _Trials, ranked: Sequence[Unit], run_time: set[Unit]) -> None:
    """The shortest prefix of `ranked` that meets the budget: k = 1, 2, 4, ..., all but one, all;
    then bisection between the last k that missed and the first that met (or left nothing
    quantized: the answer is then shorter). A first pass quantizes
    the units of the prefix that can run at run time (`run_time`) there, as that keeps most of
    their speed; a second pass, with every unit of the prefix in float, looks for a shorter prefix
    (a MatMul that run time does not fix can make the first pass take more units off INT8)."""
    found = _grow_pass(trials, ranked, run_time) if run_time else None
    _grow_pass(trials, ranked, set(), below=found)


def _grow_pass(trials: _Trials, ranked: Sequence[Unit], run_time: set[Unit], below: int | None = None) -> int | None:
    """One pass of `_grow`, over prefixes shorter than `below`: the smallest k that met the budget
    or left nothing quantized (then the answer, if any, is shorter), or None."""
    def at_or_above_answer(k: int) -> bool:  # met, or nothing left quantized (past every answer)
        return trials.met(tuple(ranked[:k]), tuple(u for u in ranked[:k] if u in run_time)) is not False

    n = len(ranked) if below is None else below - 1
    sizes = sorted({min(2 ** i, n) for i in range(n.bit_length() + 1)} | ({n - 1} if n > 1 else set()))
    low, high = 0, None
    for k in sizes:
        if k < 1 or not trials.in_time():
            break
        if at_or_above_answer(k):
            high = k
            break
        low = k
    while high is not None and high - low > 1 and trials.in_time():
        middle = (low + high) // 2
        if at_or_above_answer(middle):
            high = middle
        else:
            low = middle
    return high


def _prune(trials: _Trials, run_time: set[Unit], most: int = PRUNE_AT_MOST) -> None:
    """Give back to INT8 each unit of the passing prefix the budget does not need, least harmful
    first: isolated sensitivity ranks a consumer of a broken tensor beside its producer, and the
    prefix drags along units ranked between them. A unit the budget needs off static INT8 that
    can run at run time (`run_time`) is tried there before it is left in float.

    Only short prefixes (at most `most` units) are pruned, and only under limits that move
    smoothly (SQNR, cosine). A limit on a share of scores or sequences (top-1 agreement, sequences
    decoded as FP32) moves in steps of one sample: every give-back that still meets it is another
    draw near the limit, and the pruned model fits the evaluation samples rather than the data.
    PP-OCRv4, 300 held-out lines (when the budget judged 32 lines): the seven searches that
    pruned wrote models reading 81-89 % of lines as FP32, the five that did not 87-93 %, all
    meeting 29 of 32 evaluation lines. (Exact agreement of integer outputs, ids or masks passed through, is no such share.)"""
    if trials.passing is None or len(trials.passing_units) > most:
        return
    if _judged_by_shares(trials.passing.drift):
        return
    for unit in reversed(trials.passing_units):
        if not trials.in_time():
            break
        kept = tuple(u for u in trials.passing_units if u != unit)
        if kept and trials.met(kept, trials.passing_run_time):
            continue
        if unit in run_time and unit not in trials.passing_run_time and trials.in_time():
            trials.met(trials.passing_units, trials.passing_run_time + (unit,))


_SHARE_LIMITS = ("min_agreement", "max_top1_drop", "min_sequence_agreement")


def _judged_by_shares(drift: Drift) -> bool:
    """Whether a limit on a share of samples judges a classification or a sequence output."""
    coarse = any(o.classification is not None or o.sequence_agreement is not None for o in drift.outputs)
    return coarse and any(result.name in _SHARE_LIMITS for result in drift.results)


def _run_time_units(prepared: onnx.ModelProto, units: Sequence[Unit], already: Sequence[str],
                    recipe: Recipe) -> set[Unit]:
    """The units that can be quantized at run time and are not yet (`already`): one MatMul/Gemm
    on a constant 2-D weight, in a static quantization (--dynamic runs every one at run time
    already; weight-only and codebook schemes keep activations float: no unit goes there)."""
    if recipe.dynamic or recipe.weight_only is not None or recipe.weight_codebook is not None:
        return set()
    index = GraphIndex(prepared.graph)
    by_name = {n.name: n for n in prepared.graph.node if n.name}
    return {unit for unit in units if len(unit) == 1 and unit[0] in by_name and unit[0] not in already
            and runs_at_run_time(by_name[unit[0]], index, recipe)}


def rank_units(build: Build, probe: DriftProbe, first: Trial, prepared: onnx.ModelProto, *,
               progress: bool = False, in_time: Callable[[], bool] | None = None, workers: int = 1) -> list[Unit]:
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
                         in_time=in_time, literal=True, workers=workers, desc="fallback: ranking nodes")
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
