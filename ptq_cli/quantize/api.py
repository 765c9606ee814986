"""`ptq_cli.quantize()`: FP32 model + recipe + calibration -> INT8 model, written atomically."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from ptq_cli import __version__
from ptq_cli.errors import ModelError, UsageError
from ptq_cli.failures import is_onnxruntime_error, onnxruntime_message
from ptq_cli.model.external import PROTOBUF_LIMIT, model_size
from ptq_cli.model.sessions import inference_session
from ptq_cli.model.io import LAZY_ABOVE
from ptq_cli.model.io import check_model, check_writable, load_model, opset_version, save_model
from ptq_cli.model.passes.float32 import ToFloat32, float_kinds
from ptq_cli.model.passes import SequenceResult
from ptq_cli.model.prepare import QDQ_4_16_BIT_OPSET, QDQ_PER_AXIS_OPSET, prepare, prepare_with_result
from ptq_cli.quantize.arithmetic.bias_correction import correct_biases
from ptq_cli.quantize.placement.budget import DEFAULT_THRESHOLDS, Budget, BudgetOutcome, eval_samples, hold_budget
from ptq_cli.quantize.emitters.dynamic import DYNAMIC_DATA, check_dynamic_recipe, rewrite_dynamic
from ptq_cli.quantize.arithmetic.equalize import equalization_pairs, equalize
from ptq_cli.quantize.placement.opsets import all_float, fit_recipe
from ptq_cli.quantize.placement.plan import QuantPlan, SkipReason, make_plan, replan_weights
from ptq_cli.quantize.emitters.qdq import insert_qdq
from ptq_cli.quantize.emitters.subgraphs import has_bodies, quantize_bodies, without_owners
from ptq_cli.quantize.placement.latency import IfSlower, LatencyDecision, Objective, SlowerThanFloat, search_placement
from ptq_cli.quantize.placement.latency.search import retime
from ptq_cli.quantize.placement.latency.feeds import timing_feeds
from ptq_cli.quantize.placement.latency.machine import Machine, OnnxruntimeMachine
from ptq_cli.recipe import CalibMethod, Format, Recipe, Rounding

Ranges = Mapping[str, tuple[float, float]]


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
    # (see quantize/placement/budget.py); None when there was no data to measure it on.
    drift: dict | None = None
    fallback_trials: int = 0
    fallback_seconds: float = 0.0
    range_sources: dict[str, str] = field(default_factory=dict)  # activation -> where its range came from (data-free)

    def to_dict(self) -> dict:
        return {
            "output": str(self.output) if self.output else None,
            "source_sha256": self.source_sha256,
            "quantized": list(self.quantized),
            "fused": dict(self.fused),
            "skipped": [{"node": s.node, "op_type": s.op_type, "reason": s.reason} for s in self.skipped],
            "notes": list(self.notes),
            "size_before": self.size_before,
            "size_after": self.size_after,
            "prepare_skipped": list(self.prepare_skipped),
            "recipe": self.recipe.to_dict(),
            "drift": self.drift,
            "ptq_version": __version__,
            "latency": self.latency.to_dict() if self.latency else None,
            "float_written": self.float_written,
            "range_sources": dict(self.range_sources),
        }


def default_output(model_path: str | os.PathLike, recipe: Recipe | None = None) -> Path:
    path = Path(model_path)
    kind = recipe.weight_only.dtype.value if recipe is not None and recipe.weight_only is not None else "int8"
    return path.with_name(f"{path.stem}.{kind}.onnx")


def quantize_model(model: onnx.ModelProto, recipe: Recipe, ranges: Ranges,
                   channel_means: Mapping[str, np.ndarray] | None = None,
                   grams: Mapping | None = None, *, prepared: bool = False) -> tuple[onnx.ModelProto, QuantPlan]:
    """The pure transformation: a float model and activation ranges in, a quantized model out.
    `prepared` says the model already went through prepare() (it is not prepared again).

    `channel_means` (per-channel E[x] of Conv/Gemm inputs) enables bias correction; `grams`
    (Σ x·xᵀ of the weights' inputs, calibrate/gram.py) is what GPTQ rounding needs."""
    prepared_result = SequenceResult(model, False) if prepared else \
        prepare_with_result(model, min_opset=_required_opset(recipe))
    prepared = prepared_result.model
    recipe, notes = fit_recipe(recipe, opset_version(prepared))
    if recipe is None:  # the opset has no QuantizeLinear and cannot be raised
        return prepared, QuantPlan(skipped=all_float(prepared, notes[0]), notes=notes,
                                   prepare_skipped=prepared_result.skipped)
    plan = make_plan(prepared, recipe, ranges)
    if recipe.rounding is Rounding.GPTQ:
        from ptq_cli.quantize.arithmetic.rounding import gptq_plan

        plan, _ = gptq_plan(prepared, plan, grams or {}, recipe.weights)
    if recipe.bias_correction and channel_means:
        prepared, corrected = correct_biases(prepared, plan, channel_means)
        if corrected:
            # the biases are new tensors now; bias correction measured the GPTQ integers, keep them
            from ptq_cli.quantize.arithmetic.rounding import carry_rounding

            plan = carry_rounding(plan, replan_weights(prepared, recipe, plan, corrected), prepared)
    plan.prepare_skipped = prepared_result.skipped
    plan.notes.extend(notes)
    rewrite = insert_qdq
    if recipe.format is Format.QOPERATOR:
        from ptq_cli.quantize.emitters.qoperator import rewrite_qoperator

        rewrite = rewrite_qoperator
    out = rewrite(prepared, plan)
    if has_bodies(out):  # If/Loop/Scan: their bodies are quantized as graphs of their own, same format
        def body(sub: onnx.ModelProto):
            sub_plan = make_plan(sub, recipe, ranges)
            return rewrite(sub, sub_plan), sub_plan.quantized, sub_plan.skipped

        done, skipped = quantize_bodies(out, body)
        plan.quantized.extend(done)
        plan.skipped = without_owners(plan.skipped, out, done) + skipped
    return _with_dynamic_matmuls(out, plan, recipe), plan


def _with_dynamic_matmuls(model: onnx.ModelProto, plan: QuantPlan, recipe: Recipe) -> onnx.ModelProto:
    """The MatMuls placement quantizes at run time (placement.py), rewritten after the static pass."""
    if not plan.dynamic:
        return model
    rewritten, done, _ = rewrite_dynamic(model, recipe, only=frozenset(plan.dynamic))
    plan.dynamic = done
    return rewritten


WEIGHT_ONLY_DATA = "none (weight-only, rounded to nearest)"


def _weight_only_grams(source, source_sha, path, data, calibration, recipe: Recipe, image, **collect):
    """What weight-only quantization reads of the data: GPTQ the Gram matrices of a calibration,
    nearest rounding nothing. Returns (grams or None, the data's description)."""
    if recipe.rounding is Rounding.STOCHASTIC:
        raise UsageError("--weight-only rounds to nearest or with gptq; stochastic rounding is for INT8 weights")
    if recipe.rounding is not Rounding.GPTQ:
        return None, WEIGHT_ONLY_DATA
    if calibration is None and data is not None:  # only the Gram matrices: no activation is observed
        from ptq_cli.calibrate.api import calibrate

        table = calibrate(path or source, data, image=image, tensors=[], grams=True, **collect)
        return table.grams, table.data
    table = _calibration_table(path or source, source_sha, data, calibration, recipe, image, **collect)
    return table.grams, table.data


def _dynamic(prepared_result, recipe: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
    prepared = prepared_result.model
    fitted, notes = fit_recipe(recipe, opset_version(prepared))
    if fitted is None:  # below opset 11 there is no DynamicQuantizeLinear
        return prepared, QuantPlan(skipped=all_float(prepared, notes[0]), notes=notes,
                                   prepare_skipped=prepared_result.skipped)
    quantized, done, skipped = _rewrite_dynamic_everywhere(prepared, fitted)
    if not done and "Conv" not in fitted.dynamic_ops and any(n.op_type == "Conv" for n in prepared.graph.node):
        # A convolutional model has nothing that gets faster dynamically: rather than refuse it,
        # store its Conv weights as ConvInteger (4x smaller), and say what that costs.
        fitted = fitted.with_(dynamic_ops=fitted.dynamic_ops + ("Conv",))
        quantized, done, skipped = _rewrite_dynamic_everywhere(prepared, fitted)
        notes = notes + ["no MatMul/Gemm to quantize dynamically: Conv became ConvInteger, 4x smaller "
                         "but slower than float Conv in onnxruntime; static quantization (--data) "
                         "makes it faster"]
    return quantized, QuantPlan(quantized=done, skipped=skipped, notes=notes,
                                prepare_skipped=prepared_result.skipped)


def _rewrite_dynamic_everywhere(prepared: onnx.ModelProto, recipe: Recipe):
    """rewrite_dynamic on the main graph and inside every If/Loop/Scan body."""
    quantized, done, skipped = rewrite_dynamic(prepared, recipe)
    if has_bodies(quantized):
        more, more_skipped = quantize_bodies(quantized, lambda sub: rewrite_dynamic(sub, recipe))
        done, skipped = done + more, without_owners(skipped, quantized, more) + more_skipped
    return quantized, done, skipped


def _required_opset(recipe: Recipe) -> int:
    wide = {spec.dtype.bits for spec in (recipe.weights, recipe.activations)} - {8}
    return QDQ_4_16_BIT_OPSET if wide else QDQ_PER_AXIS_OPSET


def quantize(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None, *,
             data=None, calibration=None, recipe: Recipe = Recipe(), image=None, force: bool = False,
             progress: bool = True, batch_size: int = 1, max_samples: int | None = None,
             objective: Objective = Objective.SIZE, if_slower: IfSlower = IfSlower.INT8,
             machine: Machine | None = None,
             eval_data=None, labels=None, budget: Budget = Budget(), data_free: bool = False) -> QuantizeResult:
    """Quantize `model` (a path or a ModelProto) and write it to `output` (when given).

    Activation ranges come from `calibration` (a CalibrationTable or the path of one) or are
    measured on `data` (a folder/Dataset) with `recipe.calibration`. The input is never modified.

    objective=Objective.SPEED (the CLI's default) times placements on `machine` (onnxruntime on
    this machine unless given) and keeps the fastest; the returned recipe records it (its
    `exclude` names the float prefix); Objective.ACCURACY keeps, of the placements timed, the
    one with the most nodes in float that still beats FP32. When no INT8 placement beats FP32, `if_slower` decides:
    write the INT8 one (INT8, the default: the result says it does not pay), raise SlowerThanFloat (FAIL)
    or write the float model (FLOAT).
    Objective.SIZE (the API's default) times nothing: same inputs and recipe, same bytes.
    The drift is measured on `eval_data` (or on part of `data`) and must meet `budget`; the most
    sensitive nodes go back to float until it does (DriftBudgetError when it cannot be met,
    unless `budget.best_effort`). `budget=MEASURE_ONLY` measures and reports without limits.

    data_free=True needs neither data nor a table: ranges come from BatchNormalization statistics
    where the model has them and from synthetic inputs (seeded by recipe.seed) elsewhere
    (quantize/datafree.py); the drift is then measured on `eval_data` only.
    """
    if data_free and (recipe.dynamic or recipe.weight_codebook is not None):
        raise UsageError("--data-free is for static quantization; --dynamic and --weight-codebook need no data")
    source, source_sha, path = _load_source(model)
    source, widened = _float32(source)
    if objective is not Objective.SIZE and not model_size(source).total < PROTOBUF_LIMIT:
        # Timing placements hands onnxruntime the model as bytes, which protobuf cannot hold here.
        objective = Objective.SIZE
        widened += ("latency timing skipped: the model is 2 GB or more (as with --objective size)",)
    asked = recipe
    inputs = _input_paths(path, data, calibration)
    decision = None
    if output is not None:
        check_writable(output, force=force, protect=inputs)  # before the long calibration
    floating = source
    user_data = data  # the drift is measured on real samples only, never on synthetic ones
    if recipe.weight_only is not None:
        grams, data_description = _weight_only_grams(source, source_sha, path, data, calibration, recipe, image,
                                                     progress=progress, batch_size=batch_size,
                                                     max_samples=max_samples)

        def build(r: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
            from ptq_cli.quantize.emitters.weight_only import rewrite_weight_only

            min_opset = QDQ_4_16_BIT_OPSET if r.weight_only.qdq else QDQ_PER_AXIS_OPSET
            return rewrite_weight_only(prepare(source, min_opset=min_opset), r, grams)
    elif recipe.dynamic:
        check_dynamic_recipe(recipe)
        prepared = prepare_with_result(source, min_opset=QDQ_PER_AXIS_OPSET)  # once, for every trial

        def build(r: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
            return _dynamic(prepared, r)
        data_description = DYNAMIC_DATA
    elif recipe.weight_codebook is not None:
        codebook = dict(progress=progress, batch_size=batch_size, max_samples=max_samples)
        first = _with_codebook(source, path, source_sha, data, calibration, recipe, image, **codebook)
        data_description = first[2]

        def build(r: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
            if r == recipe:
                return first[0], first[1]
            return _with_codebook(source, path, source_sha, data, calibration, r, image, **codebook)[:2]
    else:
        collect = dict(progress=progress, batch_size=batch_size, max_samples=max_samples)
        if data_free:
            from ptq_cli.quantize.datafree import synthetic_data

            data = synthetic_data(source, data, calibration, image, seed=recipe.seed, max_samples=max_samples)
        # One prepared graph, which calibration measures and the plan quantizes (equalized, when
        # asked: its activations between the Conv pairs are rescaled).
        prepared = prepare_with_result(source, min_opset=_required_opset(recipe))
        floating = prepared.model
        if recipe.equalize:
            floating = _equalized(floating, data, recipe, image, **collect)
        table = _calibration_table(floating, source_sha, data, calibration, recipe, image, **collect)
        means = {name: table.channel_mean(name) for name in table.names if table.channel_mean(name) is not None}
        ranges = _activation_ranges(table, floating)
        if data_free:
            from ptq_cli.quantize.datafree import range_sources, with_batchnorm_ranges

            ranges, sources = with_batchnorm_ranges(source, floating, ranges)

        def build(r: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
            model, plan = quantize_model(floating, r, ranges, means, table.grams, prepared=True)
            plan.prepare_skipped = prepared.skipped
            return model, plan
        if objective is not Objective.SIZE:
            decision = _measured(source, floating, recipe, ranges, means, data, image, machine, objective,
                                 table.grams)
            # When nothing pays and INT8 is written all the same, it is written for its size: every
            # node quantized, not the fastest placement (whose float prefix only made it bigger).
            if decision.pays or if_slower is not IfSlower.INT8:
                recipe = decision.recipe
        data_description = table.data
    samples = eval_samples(source, user_data, eval_data, image, labels)
    outcome = _within_budget(source, floating, build, recipe, samples, budget, progress)
    if outcome is not None:
        quantized, plan, recipe = outcome.trial.model, outcome.trial.plan, outcome.trial.recipe
    elif decision is not None and recipe == decision.recipe:
        quantized, plan = decision.model, decision.plan
    else:
        quantized, plan = build(recipe)
    if decision is not None and recipe != decision.recipe:  # the verdict is about what is written: time it
        why = "after the drift budget's fallback" if outcome and outcome.trial.fallback else "every node quantized"
        decision = retime(decision, source, quantized, plan, recipe, timing_feeds(source, data, image)[0],
                          machine or OnnxruntimeMachine(), why)
    _check_excludes(asked, source, plan)
    _check_run_time(recipe, plan)
    if not plan.quantized and decision is None and not (outcome and outcome.searched) and output is not None:
        raise ModelError(_nothing_quantized(plan))  # (without an output, the result says why)
    drift = outcome.metadata(budget) if outcome else None
    _stamp(quantized, recipe, source_sha, data_description, drift)
    _verify_loads(quantized, source)
    slower = decision is not None and not decision.pays
    if slower and if_slower is IfSlower.FAIL:
        raise SlowerThanFloat(decision)
    written_model = source if slower and if_slower is IfSlower.FLOAT else quantized
    # A large model given with external data gets its output written the same way: whoever
    # loads it (compare, onnxruntime) then maps the weights instead of parsing them.
    external = model_size(source).external > 0 and model_size(written_model).total >= LAZY_ABOVE
    written = save_model(written_model, output, force=force, protect=inputs, external=external) if output else None
    skipped = tuple(_fallback_reason(s, outcome.trial.fallback if outcome else ()) for s in plan.skipped)
    if decision is not None:
        skipped = tuple(_latency_reason(s, asked, decision) for s in skipped)
    done = sorted([*plan.quantized, *plan.dynamic, *plan.weight_only], key=_graph_order(source))
    return QuantizeResult(written_model, written, recipe, tuple(done), skipped,
                          dict(plan.fused), model_size(source).total, model_size(written_model).total, source_sha,
                          tuple(plan.prepare_skipped), widened + tuple(plan.notes),
                          latency=decision, float_written=written_model is source, drift=drift,
                          fallback_trials=outcome.trials if outcome else 0,
                          fallback_seconds=outcome.seconds if outcome else 0.0,
                          range_sources=range_sources(plan, sources) if data_free else {})


def _latency_reason(skip: SkipReason, asked: Recipe, decision: LatencyDecision) -> SkipReason:
    if skip.node not in decision.chosen.float_nodes or asked.excludes(skip.node, skip.op_type) or \
            not skip.reason.startswith("excluded by"):
        return skip
    return SkipReason(skip.node, skip.op_type, "kept in float by --objective speed: faster in FP32 on this machine")


def _fallback_reason(skip: SkipReason, fallback: tuple[str, ...]) -> SkipReason:
    if skip.node not in fallback:
        return skip
    return SkipReason(skip.node, skip.op_type, "returned to float by the fallback search: the drift budget needs it")


def _within_budget(source, floating, build, recipe: Recipe, samples, budget: Budget,
                   progress: bool) -> BudgetOutcome | None:
    """The candidate of `recipe`, held to the drift budget on the evaluation samples; None when
    there are no samples to measure on."""
    if samples is None:
        if budget.thresholds.any and budget.thresholds != DEFAULT_THRESHOLDS:
            raise UsageError("a drift budget needs samples to measure on: pass --data or --eval-data DIR")
        return None
    return hold_budget(source, build, recipe, samples, budget,
                       lambda: prepare(floating, min_opset=_required_opset(recipe)), progress=progress)


def _with_codebook(source, path, source_sha, data, calibration, recipe, image, **collect):
    """Codebook weights, weighted by the layers' input Gram matrices when data or a table has them."""
    from ptq_cli.quantize.emitters.codebook import codebook_weights

    grams, description = None, "none: codebook weights cluster the weights alone"
    bits = recipe.weight_codebook.bits
    prepared = prepare(source, min_opset=QDQ_4_16_BIT_OPSET if bits <= 4 else QDQ_PER_AXIS_OPSET)
    if data is not None or calibration is not None:
        from ptq_cli.calibrate.table import CalibrationTable

        if calibration is not None and data is not None:
            raise UsageError("give either --data or --calibration, not both")
        if calibration is not None:
            table = calibration if isinstance(calibration, CalibrationTable) else CalibrationTable.load(calibration)
            table.check_model(source_sha)
        else:
            from ptq_cli.calibrate.api import calibrate

            # The prepared graph (opset >= 13) is the one whose layers the Gram keys name.
            table = calibrate(prepared, data, image=image, grams=True, histograms=False, **collect)
        grams, description = table.grams, table.data
    quantized, done, skipped = codebook_weights(prepared, recipe, grams)
    return quantized, QuantPlan(quantized=done, skipped=skipped), description


def _nothing_quantized(plan: QuantPlan) -> str:
    """Writing a float copy named as quantized would be nonsense: say why every node stayed float."""
    reasons: dict[tuple[str, str], int] = {}
    for skip in plan.skipped:
        reasons[(skip.op_type, skip.reason)] = reasons.get((skip.op_type, skip.reason), 0) + 1
    (op, reason), count = max(reasons.items(), key=lambda kv: kv[1]) if reasons else (("", "no node"), 0)
    more = f" (and {len(plan.skipped) - count} other node(s))" if len(plan.skipped) > count else ""
    why = f"{count} x {op}: {reason}{more}" if count else "the model has no node ptq can quantize"
    return f"nothing was quantized, so nothing was written: {why}"


def _check_excludes(recipe: Recipe, source: onnx.ModelProto, plan: QuantPlan) -> None:
    """An --exclude that matches no node name or op type is a typo, not a no-op: refuse it."""
    known = {s.node for s in plan.skipped} | {s.op_type for s in plan.skipped}
    for node in _all_nodes(source.graph):
        known.update((node.name, node.op_type))
    unknown = [entry for entry in recipe.exclude if entry not in known]
    if unknown:
        raise UsageError(f"--exclude {unknown[0]!r} matches no node name and no op type of the model; "
                         "check the spelling (`ptq compare --per-layer` prints node names)")


def _check_run_time(recipe: Recipe, plan: QuantPlan) -> None:
    """A run_time name that did not become a run-time MatMul is a mistake, unless the recipe also
    leaves it in float (the fallback may have)."""
    wrong = [name for name in recipe.run_time if name not in plan.dynamic and name not in recipe.exclude]
    if wrong:
        raise UsageError(f"the recipe's run_time names {wrong[0]!r}, which is not a MatMul/Gemm of an activation "
                         "by a constant 2-D weight; only those can be quantized at run time")


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def _input_paths(*given) -> tuple[str | os.PathLike, ...]:
    """The files and folders a run reads, which its output must never replace."""
    return tuple(p for p in given if isinstance(p, (str, os.PathLike)))


def _measured(source, floating, recipe, ranges, means, data, image, machine, objective,
              grams=None) -> LatencyDecision:
    """The placement of `recipe` chosen by timing on `machine` against the source model."""
    feeds, described = timing_feeds(source, data, image)
    decision = search_placement(source, floating, recipe,
                                lambda r: quantize_model(floating, r, ranges, means, grams, prepared=True),
                                feeds, machine or OnnxruntimeMachine(), objective=objective)
    return replace(decision, timed_on=described)


def _float32(source: onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """A float16/bfloat16/float64 model as a float32 one with Casts at its edges, and the note
    that says so; a float32 model as it is."""
    if not float_kinds(source):
        return source, ()
    converted = onnx.ModelProto()
    converted.CopyFrom(source)
    return converted, ToFloat32()(converted).changes


def _graph_order(model: onnx.ModelProto):
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    return lambda name: (order.get(name, len(order)), name)


def _equalized(prepared: onnx.ModelProto, data, recipe: Recipe, image, **collect) -> onnx.ModelProto:
    """The prepared model with its Conv pairs equalized, from a first pass measuring where each
    ReLU6 clips."""
    if data is None:
        raise UsageError("--equalize needs --data: it measures each channel's peak before ReLU6 "
                         "(a calibration table alone is not enough)")
    from ptq_cli.calibrate.api import calibrate

    peaks = [conv1.output[0] for conv1, _, _ in equalization_pairs(prepared)]
    if not peaks:
        return prepared
    table = calibrate(prepared, data, image=image, tensors=peaks, channel_axis=1, prepared=True, **collect)
    channel_max = {name: table.stats[name].channels.max for name in peaks if name in table.stats}
    return equalize(prepared, channel_max)[0]


def _load_source(model) -> tuple[onnx.ModelProto, str, Path | None]:
    from ptq_cli.calibrate.table import model_sha256

    if isinstance(model, onnx.ModelProto):
        check_model(model)
        return model, model_sha256(model), None
    path = Path(model)
    return load_model(path), model_sha256(path), path


def _calibration_table(source, source_sha, data, calibration, recipe, image, **collect):
    from ptq_cli.calibrate.table import CalibrationTable

    if calibration is not None and data is not None:
        raise UsageError("give either --data or --calibration, not both")
    if calibration is not None:
        table = calibration if isinstance(calibration, CalibrationTable) else CalibrationTable.load(calibration)
        table.check_model(source_sha)
    elif data is not None:
        from ptq_cli.calibrate.api import calibrate

        table = calibrate(source, data, spec=recipe.calibration, image=image,
                          grams=recipe.rounding is Rounding.GPTQ, model_sha=source_sha, prepared=True, **collect)
    else:
        raise UsageError("static quantization needs calibration data: pass --data DIR or --calibration TABLE "
                         "(or use --dynamic, which needs none)")
    if recipe.rounding is Rounding.GPTQ and not table.grams:
        raise UsageError("--rounding gptq needs the Gram matrices of the weights' inputs: pass --data, or "
                         "make the table with `ptq calibrate --gram`")
    if table.spec.method is not recipe.calibration.method or table.spec.percentile != recipe.calibration.percentile:
        table = table.with_method(recipe.calibration)
    return table


# Clipping methods trade outliers for resolution, which is right inside a network. It is wrong at
# its two ends: the graph inputs are the data itself (clipping the few bright pixels of an MNIST
# digit, a spike of background values dominating the histogram, erases the digit), and the
# largest scores of a classifier are the answer. Both keep their full min/max range.
_RANKING_OPS = ("Softmax", "LogSoftmax", "ArgMax", "TopK")
_RESHAPING_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")


def _activation_ranges(table, model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    ranges = dict(table.ranges)
    if table.spec.method is CalibMethod.MINMAX:
        return ranges
    producer = {out: node for node in model.graph.node for out in node.output}
    scores = [o.name for o in model.graph.output] + [i.name for i in model.graph.input]
    scores += [n.input[0] for n in model.graph.node if n.op_type in _RANKING_OPS]
    while scores:
        name = scores.pop()
        if name in ranges:
            ranges[name] = table.stats[name].min_max
        node = producer.get(name)
        if node is not None and node.op_type in _RESHAPING_OPS:
            scores.append(node.input[0])
    return ranges


def _stamp(model: onnx.ModelProto, recipe: Recipe, source_sha: str, data: str, drift: dict | None = None) -> None:
    """Record how the model was made, so that any output can be traced and reproduced."""
    props = {
        "ptq.version": __version__,
        "ptq.recipe": json.dumps(recipe.to_dict(), sort_keys=True),
        "ptq.source_sha256": source_sha,
        "ptq.calibration_data": data,
    }
    if drift is not None:
        props["ptq.drift"] = json.dumps(drift, sort_keys=True)
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def _verify_loads(model: onnx.ModelProto, source: onnx.ModelProto | None = None) -> None:
    """Never write an output onnxruntime refuses. When it refuses the input model too, say so:
    the input is what needs changing, not the quantization."""
    check_model(model, "the quantized model")
    failure = _ort_load_failure(model)
    if failure is None:
        return
    if source is not None:
        source_failure = _ort_load_failure(source)
        if source_failure is not None:
            raise ModelError(onnxruntime_message(source_failure, "the input model", "load")) from None
    raise ModelError(onnxruntime_message(failure, "the quantized model", "load") + "; nothing was written: "
                     "--exclude the node it names, or report it as a ptq bug") from None


def _ort_load_failure(model: onnx.ModelProto) -> Exception | None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        inference_session(model, options)
    except Exception as exc:  # onnxruntime raises its own exception types
        if not is_onnxruntime_error(exc):
            raise
        return exc
    return None
