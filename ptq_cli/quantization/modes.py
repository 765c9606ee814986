"""How each kind of quantization makes a candidate from a recipe, once its data is read.

A `Mode` holds `build(recipe) -> (model, plan)`: the drift budget's fallback and the latency
search call it with changed recipes, so what is read once (calibration, Gram matrices, the
prepared graph) is read here, before. Static quantization also chooses its placement by timing
(the speed objective) here, as it alone has placements to choose.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import onnx

from ptq_cli.calibration.api import calibrate
from ptq_cli.calibration.table import CalibrationTable
from ptq_cli.errors import UsageError
from ptq_cli.model.io import opset_version
from ptq_cli.model.prepare import QDQ_4_16_BIT_OPSET, QDQ_PER_AXIS_OPSET, prepare, prepare_with_result
from ptq_cli.quantization.arithmetic.equalize import equalization_pairs, equalize
from ptq_cli.quantization.datafree import range_sources as sources_of
from ptq_cli.quantization.datafree import synthetic_data, with_batchnorm_ranges
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.emitters.codebook import emit_codebook
from ptq_cli.quantization.emitters.dynamic import DYNAMIC_DATA, check_dynamic_recipe, emit_dynamic
from ptq_cli.quantization.emitters.subgraphs import emit_bodies
from ptq_cli.quantization.emitters.weight_only import emit_weight_only
from ptq_cli.quantization.placement.latency import IfSlower, LatencyDecision, Objective, search_placement
from ptq_cli.quantization.placement.latency.feeds import timing_feeds
from ptq_cli.quantization.placement.latency.machine import Machine
from ptq_cli.quantization.placement.opsets import all_float, fit_recipe
from ptq_cli.quantization.plan import QuantPlan
from ptq_cli.quantization.source import Source
from ptq_cli.quantization.static import quantize_model, required_opset
from ptq_cli.quantization.timings import Stopwatch
from ptq_cli.recipe import CalibMethod, Recipe, Rounding

Build = Callable[[Recipe], tuple[onnx.ModelProto, QuantPlan]]


@dataclass(frozen=True)
class Mode:
    build: Build
    recipe: Recipe                  # what to build: the latency search may have changed the one asked
    data_description: str           # the data the model was made from, for its metadata
    floating: onnx.ModelProto       # the float graph the fallback prepares and ranks nodes on
    decision: LatencyDecision | None = None
    range_sources: Callable[[QuantPlan], dict[str, str]] | None = None  # data-free: where each range came from
    timing_data: object = None      # what placements were timed on (data-free: the synthetic samples)


def weight_only_mode(loaded: Source, data, calibration, recipe: Recipe, image, **collect) -> Mode:
    """Block-wise weights, float activations; GPTQ reads the Gram matrices of a calibration."""
    source = loaded.model
    grams, described = _weight_only_grams(source, loaded.sha256, loaded.path, data, calibration, recipe, image,
                                          **collect)

    def build(r: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
        min_opset = QDQ_4_16_BIT_OPSET if r.weight_only.qdq else QDQ_PER_AXIS_OPSET
        return _as_plan(emit_weight_only(prepare(source, min_opset=min_opset), r, grams))
    return Mode(build, recipe, described, source)


def dynamic_mode(loaded: Source, recipe: Recipe) -> Mode:
    """Run-time activation ranges: no data; the model is prepared once, for every trial."""
    check_dynamic_recipe(recipe)
    prepared = prepare_with_result(loaded.model, min_opset=QDQ_PER_AXIS_OPSET)
    return Mode(lambda r: _dynamic(prepared, r), recipe, DYNAMIC_DATA, loaded.model)


def codebook_mode(loaded: Source, data, calibration, recipe: Recipe, image, **collect) -> Mode:
    """Clustered weights; the first build is the one asked, kept for when it is asked again. The
    prepared graph and its Gram matrices depend on the codebook's bits alone (the opset), so the
    drift budget's trials reuse them instead of calibrating again (PP-OCRv4: minutes per trial)."""
    source, source_sha = loaded.model, loaded.sha256
    inputs: dict[int, tuple] = {}

    def prepared_inputs(r: Recipe) -> tuple:
        opset = QDQ_4_16_BIT_OPSET if r.weight_codebook.bits <= 4 else QDQ_PER_AXIS_OPSET
        if opset not in inputs:
            inputs[opset] = _codebook_inputs(source, source_sha, data, calibration, opset, image, **collect)
        return inputs[opset]

    def build(r: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
        return _with_codebook(r, *prepared_inputs(r))[:2]

    first = _with_codebook(recipe, *prepared_inputs(recipe))
    return Mode(lambda r: first[:2] if r == recipe else build(r), recipe, first[2], source)


def static_mode(loaded: Source, data, calibration, recipe: Recipe, image, *, data_free: bool,
                objective: Objective, if_slower: IfSlower, machine: Machine, max_samples=None,
                stopwatch: Stopwatch | None = None, **collect) -> Mode:
    """Calibrated activation ranges on one prepared graph, which calibration measures and the plan
    quantizes (equalized, when asked: its activations between the Conv pairs are rescaled); with
    the speed objective, the placement timed fastest on `machine`."""
    source, source_sha = loaded.model, loaded.sha256
    range_sources = None
    if data_free:
        data = synthetic_data(source, data, calibration, image, seed=recipe.seed, max_samples=max_samples)
    stopwatch = stopwatch or Stopwatch()
    with stopwatch.phase("prepare"):
        prepared = prepare_with_result(source, min_opset=required_opset(recipe))
    floating = prepared.model
    collect = dict(collect, max_samples=max_samples)
    if recipe.equalize:
        with stopwatch.phase("equalize"):
            floating = _equalized(floating, data, recipe, image, **collect)
    with stopwatch.phase("calibrate"):
        table = _calibration_table(floating, source_sha, data, calibration, recipe, image, **collect)
    means = {name: table.channel_mean(name) for name in table.names if table.channel_mean(name) is not None}
    ranges = _activation_ranges(table, floating)
    if data_free:
        ranges, sources = with_batchnorm_ranges(source, floating, ranges)
        range_sources = lambda plan: sources_of(plan, sources)  # noqa: E731

    def build(r: Recipe) -> tuple[onnx.ModelProto, QuantPlan]:
        model, plan = quantize_model(floating, r, ranges, means, table.grams, prepared=True)
        return model, replace(plan, prepare_skipped=prepared.skipped)
    decision = None
    if objective is not Objective.SIZE:
        with stopwatch.phase("latency search"):
            decision = _measured(source, floating, recipe, build, data, image, machine, objective)
        # When nothing pays and INT8 is written all the same, it is written for its size: every
        # node quantized, not the fastest placement (whose float prefix only made it bigger).
        if decision.pays or if_slower is not IfSlower.INT8:
            recipe = decision.recipe
    return Mode(build, recipe, table.data, floating, decision, range_sources, timing_data=data)


WEIGHT_ONLY_DATA = "none (weight-only, rounded to nearest)"


def _weight_only_grams(source, source_sha, path, data, calibration, recipe: Recipe, image, **collect):
    """What weight-only quantization reads of the data: GPTQ the Gram matrices of a calibration,
    nearest rounding nothing. Returns (grams or None, the data's description)."""
    if recipe.rounding is Rounding.STOCHASTIC:
        raise UsageError("--weight-only rounds to nearest or with gptq; stochastic rounding is for INT8 weights")
    if recipe.rounding is not Rounding.GPTQ:
        return None, WEIGHT_ONLY_DATA
    if calibration is None and data is not None:  # only the Gram matrices: no activation is observed
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
    emitted = _dynamic_everywhere(prepared, fitted)
    if not emitted.quantized and "Conv" not in fitted.dynamic_ops and \
            any(n.op_type == "Conv" for n in prepared.graph.node):
        # A convolutional model has nothing that gets faster dynamically: rather than refuse it,
        # store its Conv weights as ConvInteger (4x smaller), and say what that costs.
        fitted = fitted.with_(dynamic_ops=fitted.dynamic_ops + ("Conv",))
        emitted = _dynamic_everywhere(prepared, fitted)
        notes += ("no MatMul/Gemm to quantize dynamically: Conv became ConvInteger, 4x smaller "
                  "but slower than float Conv in onnxruntime; static quantization (--data) makes it faster",)
    model, plan = _as_plan(emitted)
    return model, replace(plan, notes=notes, prepare_skipped=prepared_result.skipped)


def _dynamic_everywhere(prepared: onnx.ModelProto, recipe: Recipe) -> EmitResult:
    """emit_dynamic on the main graph and inside every If/Loop/Scan body."""
    return emit_bodies(emit_dynamic(prepared, recipe), lambda body: emit_dynamic(body, recipe))


def _as_plan(emitted: EmitResult) -> tuple[onnx.ModelProto, QuantPlan]:
    """What a recipe-driven emitter (run-time, weight-only, codebook) wrote, as the plan that
    the drift budget, the checks and the summary read for every kind of quantization."""
    return emitted.model, QuantPlan(quantized=emitted.quantized, skipped=emitted.skipped, notes=emitted.notes)


def _codebook_inputs(source, source_sha, data, calibration, opset: int, image, **collect):
    """The prepared graph at `opset`, the Gram matrices of its layers' inputs when data or a table
    has them, and what the data was."""
    grams, description = None, "none: codebook weights cluster the weights alone"
    prepared = prepare(source, min_opset=opset)
    if data is not None or calibration is not None:
        if calibration is not None and data is not None:
            raise UsageError("give either --data or --calibration, not both")
        if calibration is not None:
            table = calibration if isinstance(calibration, CalibrationTable) else CalibrationTable.load(calibration)
            table.check_model(source_sha)
        else:
            # The prepared graph (opset >= 13) is the one whose layers the Gram keys name.
            table = calibrate(prepared, data, image=image, grams=True, histograms=False, **collect)
        grams, description = table.grams, table.data
    return prepared, grams, description


def _with_codebook(recipe: Recipe, prepared, grams, description):
    """Codebook weights, weighted by the layers' input Gram matrices when there are some."""
    return (*_as_plan(emit_codebook(prepared, recipe, grams)), description)


def _measured(source, floating, recipe, build: Build, data, image, machine: Machine, objective) -> LatencyDecision:
    """The placement of `recipe` chosen by timing on `machine` against the source model."""
    feeds, described = timing_feeds(source, data, image)
    decision = search_placement(source, floating, recipe, build, feeds, machine, objective=objective)
    return replace(decision, timed_on=described)


def _equalized(prepared: onnx.ModelProto, data, recipe: Recipe, image, **collect) -> onnx.ModelProto:
    """The prepared model with its Conv pairs equalized, from a first pass measuring where each
    ReLU6 clips."""
    if data is None:
        raise UsageError("--equalize needs --data: it measures each channel's peak before ReLU6 "
                         "(a calibration table alone is not enough)")
    peaks = [conv1.output[0] for conv1, _, _ in equalization_pairs(prepared)]
    if not peaks:
        return prepared
    table = calibrate(prepared, data, image=image, tensors=peaks, channel_axis=1, prepared=True, **collect)
    channel_max = {name: table.stats[name].channels.max for name in peaks if name in table.stats}
    return equalize(prepared, channel_max)[0]


def _calibration_table(source, source_sha, data, calibration, recipe, image, **collect):
    if calibration is not None and data is not None:
        raise UsageError("give either --data or --calibration, not both")
    if calibration is not None:
        table = calibration if isinstance(calibration, CalibrationTable) else CalibrationTable.load(calibration)
        table.check_model(source_sha)
    elif data is not None:
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
