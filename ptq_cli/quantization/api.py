"""`ptq_cli.quantize()`: FP32 model + recipe + calibration -> INT8 model, written atomically.

The flow: load the source (float16/64 widened to float32), build candidates the way the recipe's
kind of quantization does (modes.py), hold the candidate to the drift budget (placement/budget.py,
which may fall back), time it again when it changed, check it and write it (output.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import onnx

from ptq_cli import __version__
from ptq_cli.drift.record import DriftRecord
from ptq_cli.errors import ModelError, UsageError
from ptq_cli.model.external import PROTOBUF_LIMIT, model_size
from ptq_cli.model.io import LAZY_ABOVE, check_writable, save_model
from ptq_cli.model.kernels import HostKernels
from ptq_cli.model.prepare import prepare
from ptq_cli.quantization.modes import Mode, codebook_mode, dynamic_mode, static_mode, weight_only_mode
from ptq_cli.quantization.output import check_excludes, check_run_time, nothing_quantized, stamp, verify_loads
from ptq_cli.quantization.placement.budget import DEFAULT_THRESHOLDS, Budget, BudgetOutcome, eval_samples, hold_budget
from ptq_cli.quantization.placement.latency import IfSlower, LatencyDecision, Objective, SlowerThanFloat
from ptq_cli.quantization.placement.latency.feeds import timing_feeds
from ptq_cli.quantization.placement.latency.machine import Machine, OnnxruntimeMachine
from ptq_cli.quantization.placement.latency.search import retime
from ptq_cli.quantization.plan import QuantPlan, SkipReason, Why
from ptq_cli.quantization.source import Source, load_source
from ptq_cli.quantization.static import Ranges, quantize_model, required_opset
from ptq_cli.quantization.timings import Stopwatch
from ptq_cli.recipe import Recipe

__all__ = ["QuantizeResult", "Ranges", "default_output", "quantize", "quantize_model"]


@dataclass(frozen=True)
class QuantizeResult:
    """What `quantize` did. `output` is None when nothing was written (no output path given)."""

    model: onnx.ModelProto
    output: Path | None
    recipe: Recipe
    quantized: tuple[str, ...]
    skipped: tuple[SkipReason, ...]
    fused: dict[str, str] = field(default_factory=dict)
    size_before: int = 0
    size_after: int = 0
    source_sha256: str = ""
    prepare_skipped: tuple[str, ...] = ()  # what the graph passes left undone, and why
    notes: tuple[str, ...] = ()  # model-wide changes to the recipe (e.g. per-tensor at an old opset)
    latency: LatencyDecision | None = None  # what was measured to choose the placement (--objective speed)
    float_written: bool = False  # INT8 did not pay and the float model was written instead (--if-slower float)
    # The drift measured on the evaluation samples, the budget and the fallback decisions
    # (see quantization/placement/budget.py); None when there was no data to measure it on.
    drift: DriftRecord | None = None
    fallback_trials: int = 0
    fallback_seconds: float = 0.0
    range_sources: dict[str, str] = field(default_factory=dict)  # activation -> where its range came from (data-free)
    probed_host: HostKernels | None = None  # this machine's kernels, when --target host chose by them
    seconds: dict = field(default_factory=dict)  # where the time went (timings.py: Stopwatch.to_dict)

    def to_dict(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "source_sha256": self.source_sha256,
            "quantized": list(self.quantized),
            "fused": dict(self.fused),
            "skipped": [s.to_dict() for s in self.skipped],
            "notes": list(self.notes),
            "size_before": self.size_before,
            "size_after": self.size_after,
            "prepare_skipped": list(self.prepare_skipped),
            "recipe": self.recipe.to_dict(),
            "drift": self.drift.to_dict() if self.drift else None,
            "ptq_version": __version__,
            "latency": self.latency.to_dict() if self.latency else None,
            "float_written": self.float_written,
            "range_sources": dict(self.range_sources),
            "target": self.recipe.target.value,
            "probed_host": self.probed_host.value if self.probed_host else None,
            "seconds": self.seconds,
        }


def default_output(model_path: str | os.PathLike, recipe: Recipe | None = None) -> Path:
    path = Path(model_path)
    kind = recipe.weight_only.dtype.value if recipe is not None and recipe.weight_only is not None else "int8"
    return path.with_name(f"{path.stem}.{kind}.onnx")


def quantize(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None, *,
             data=None, calibration=None, recipe: Recipe = Recipe(), image=None, force: bool = False,
             progress: bool = True, batch_size: int = 1, max_samples: int | None = None,
             objective: Objective = Objective.SIZE, if_slower: IfSlower = IfSlower.INT8,
             machine: Machine | None = None,
             eval_data=None, labels=None, budget: Budget = Budget(), data_free: bool = False,
             probed_host: HostKernels | None = None, engine=None) -> QuantizeResult:
    """Quantize `model` (a path or a ModelProto) and write it to `output` (when given).

    Activation ranges come from `calibration` (a CalibrationTable or the path of one) or are
    measured on `data` (a folder/Dataset) with `recipe.calibration`. The input is never modified.

    objective=Objective.SPEED (opt-in, as on the CLI) times placements on `machine` (onnxruntime on
    this machine unless given) and keeps the fastest; the returned recipe records it (its
    `exclude` names the float prefix); Objective.ACCURACY keeps, of the placements timed, the
    one with the most nodes in float that still beats FP32. When no INT8 placement beats FP32, `if_slower` decides:
    write the INT8 one (INT8, the default: the result says it does not pay), raise SlowerThanFloat (FAIL)
    or write the float model (FLOAT).
    Objective.SIZE (the default) times nothing: same inputs and recipe, same bytes on any machine.
    The drift is measured on `eval_data` (or on part of `data`) and must meet `budget`; the most
    sensitive nodes go back to float until it does (DriftBudgetError when it cannot be met,
    unless `budget.best_effort`). `budget=MEASURE_ONLY` measures and reports without limits.

    `recipe.target` says which CPUs the integer weights are exact on (Target.PORTABLE, the
    default: every one); `probed_host`, when the caller chose the target by probing this
    machine (model/kernels.py), is recorded in the output's metadata and the result.

    `engine` (ptq_cli.engine.open_engine, a Dask cluster) runs the drift budget's reference and
    candidates on its workers, with the same decisions and bytes as here; the calibration and
    the ranking stay in this process (calibrate on the cluster first with `calibrate(...,
    engine=)` and pass the table), and so does latency timing, which measures this machine.

    data_free=True needs neither data nor a table: ranges come from BatchNormalization statistics
    where the model has them and from synthetic inputs (seeded by recipe.seed) elsewhere
    (quantization/datafree.py); the drift is then measured on `eval_data` only.
    """
    if data_free and (recipe.dynamic or recipe.weight_codebook is not None):
        raise UsageError("--data-free is for static quantization; --dynamic and --weight-codebook need no data")
    stopwatch = Stopwatch()
    with stopwatch.phase("load"):
        source = load_source(model)
    if objective is not Objective.SIZE and not model_size(source.model).total < PROTOBUF_LIMIT:
        # Timing placements hands onnxruntime the model as bytes, which protobuf cannot hold here.
        objective = Objective.SIZE
        source = replace(source, notes=source.notes + (
            "latency timing skipped: the model is 2 GB or more (as with --objective size)",))
    inputs = _input_paths(source.path, data, calibration)
    if output is not None:
        check_writable(output, force=force, protect=inputs)  # before the long calibration
    if objective is not Objective.SIZE:
        machine = machine or OnnxruntimeMachine()
    # prepare -> (equalize) -> calibrate -> (latency search): what every candidate is built from
    mode = _mode(source, recipe, data, calibration, image, data_free=data_free, objective=objective,
                 if_slower=if_slower, machine=machine, stopwatch=stopwatch,
                 collect=dict(progress=progress, batch_size=batch_size, max_samples=max_samples))
    # place -> round -> emit, held to the drift budget (fallback) and timed again when it changed
    chosen = _choose(source, mode, data, eval_data, image, labels, budget, machine, progress, stopwatch, engine)
    _check_choice(recipe, source, chosen, writes=output is not None)
    drift = chosen.outcome.record(budget) if chosen.outcome else None
    # The candidate was built for this run alone: stamped in place (a copy would cost its size).
    stamp(chosen.model, chosen.recipe, source.sha256, mode.data_description, drift, probed_host)
    with stopwatch.phase("check"):
        verify_loads(chosen.model, source.model)
    decision = chosen.decision
    slower = decision is not None and not decision.pays
    if slower and if_slower is IfSlower.FAIL:
        raise SlowerThanFloat(decision)
    written_model = source.model if slower and if_slower is IfSlower.FLOAT else chosen.model
    # A large model given with external data gets its output written the same way: whoever
    # loads it (compare, onnxruntime) then maps the weights instead of parsing them.
    external = model_size(source.model).external > 0 and model_size(written_model).total >= LAZY_ABOVE
    with stopwatch.phase("write"):
        written = save_model(written_model, output, force=force, protect=inputs, external=external) if output else None
    plan, outcome = chosen.plan, chosen.outcome
    skipped = tuple(_fallback_reason(s, outcome.trial.fallback if outcome else ()) for s in plan.skipped)
    if decision is not None:
        skipped = tuple(_latency_reason(s, recipe, decision) for s in skipped)
    done = sorted([*plan.quantized, *plan.dynamic, *plan.weight_only], key=_graph_order(source.model))
    return QuantizeResult(written_model, written, chosen.recipe, tuple(done), skipped,
                          dict(plan.fused), model_size(source.model).total, model_size(written_model).total,
                          source.sha256, tuple(plan.prepare_skipped), source.notes + tuple(plan.notes),
                          latency=decision, float_written=written_model is source.model, drift=drift,
                          fallback_trials=outcome.trials if outcome else 0,
                          fallback_seconds=outcome.seconds if outcome else 0.0,
                          range_sources=mode.range_sources(plan) if mode.range_sources else {},
                          probed_host=probed_host, seconds=stopwatch.to_dict())


@dataclass(frozen=True)
class Chosen:
    """The candidate to write, and what chose it."""

    model: onnx.ModelProto
    plan: QuantPlan
    recipe: Recipe  # the one asked, changed by the latency search and the fallback
    outcome: BudgetOutcome | None  # the drift budget's measurement and search; None without samples
    decision: LatencyDecision | None  # the latency search's, timed on what is written; None: not timed


def _mode(source: Source, recipe: Recipe, data, calibration, image, *, data_free: bool, objective: Objective,
          if_slower: IfSlower, machine: Machine | None, stopwatch: Stopwatch, collect: dict) -> Mode:
    """How this kind of quantization builds candidates, from data read once (modes.py)."""
    if recipe.weight_only is not None:
        return weight_only_mode(source, data, calibration, recipe, image, **collect)
    if recipe.dynamic:
        return dynamic_mode(source, recipe)
    if recipe.weight_codebook is not None:
        return codebook_mode(source, data, calibration, recipe, image, **collect)
    return static_mode(source, data, calibration, recipe, image, data_free=data_free, objective=objective,
                       if_slower=if_slower, machine=machine, stopwatch=stopwatch, **collect)


def _choose(source: Source, mode: Mode, data, eval_data, image, labels, budget: Budget, machine: Machine | None,
            progress: bool, stopwatch: Stopwatch, engine) -> Chosen:
    """The candidate of the mode's recipe, held to the drift budget on real samples (never on
    data-free synthetic ones), and timed again when the budget's fallback changed it."""
    with stopwatch.phase("reference"):
        samples = eval_samples(source.model, data, eval_data, image, labels)
    recipe, decision = mode.recipe, mode.decision
    outcome = _within_budget(source.model, mode.floating, mode.build, recipe, samples, budget, progress,
                             stopwatch, engine)
    if outcome is not None:
        quantized, plan, recipe = outcome.trial.model, outcome.trial.plan, outcome.trial.recipe
    elif decision is not None and recipe == decision.recipe:
        quantized, plan = decision.model, decision.plan
    else:
        with stopwatch.phase("build"):
            quantized, plan = mode.build(recipe)
    if decision is not None and recipe != decision.recipe:  # the verdict is about what is written: time it
        searched = outcome is not None and bool(outcome.trial.fallback or outcome.trial.run_time)
        why = "after the drift budget's fallback" if searched else "every node quantized"
        timed_on = mode.timing_data if mode.timing_data is not None else data
        with stopwatch.phase("latency search"):
            decision = retime(decision, source.model, quantized, plan, recipe,
                              timing_feeds(source.model, timed_on, image)[0], machine, why)
    return Chosen(quantized, plan, recipe, outcome, decision)


def _check_choice(asked: Recipe, source: Source, chosen: Chosen, *, writes: bool) -> None:
    """Refuse names in the recipe that matched nothing, and a file with nothing quantized (without
    an output, the result says why instead)."""
    check_excludes(asked, source.model, chosen.plan)
    check_run_time(chosen.recipe, chosen.plan)
    searched = chosen.outcome is not None and chosen.outcome.searched
    if writes and not chosen.plan.quantizes_anything and chosen.decision is None and not searched:
        raise ModelError(nothing_quantized(chosen.plan))


def _latency_reason(skip: SkipReason, asked: Recipe, decision: LatencyDecision) -> SkipReason:
    if skip.node not in decision.chosen.float_nodes or asked.excludes(skip.node, skip.op_type) or \
            skip.why is not Why.EXCLUDED:
        return skip
    return SkipReason(skip.node, skip.op_type, "kept in float by --objective speed: faster in FP32 on this machine",
                      Why.LATENCY)


def _fallback_reason(skip: SkipReason, fallback: tuple[str, ...]) -> SkipReason:
    if skip.node not in fallback:
        return skip
    return SkipReason(skip.node, skip.op_type, "returned to float by the fallback search: the drift budget needs it",
                      Why.FALLBACK)


def _within_budget(source, floating, build, recipe: Recipe, samples, budget: Budget,
                   progress: bool, stopwatch: Stopwatch, engine=None) -> BudgetOutcome | None:
    """The candidate of `recipe`, held to the drift budget on the evaluation samples; None when
    there are no samples to measure on."""
    if samples is None:
        if budget.thresholds.any and budget.thresholds != DEFAULT_THRESHOLDS:
            raise UsageError("a drift budget needs samples to measure on: pass --data or --eval-data DIR")
        return None
    return hold_budget(source, build, recipe, samples, budget,
                       lambda: prepare(floating, min_opset=required_opset(recipe)), progress=progress,
                       stopwatch=stopwatch, engine=engine)


def _input_paths(*given) -> tuple[str | os.PathLike, ...]:
    """The files and folders a run reads, which its output must never replace."""
    return tuple(p for p in given if isinstance(p, (str, os.PathLike)))


def _graph_order(model: onnx.ModelProto):
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return lambda name: (order.get(name, len(order)), name)
