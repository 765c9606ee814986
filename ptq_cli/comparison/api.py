"""`compare()`: how far a candidate model (usually the INT8 one) drifted from its reference.

    report = compare("model.onnx", "model.int8.onnx", "eval/", per_layer=True,
                     thresholds=Thresholds(min_sqnr=20, max_top1_drop=1.0))
    report.failures      # missed thresholds, one line each; report.to_dict() is the JSON form
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

import onnx

from ptq_cli.comparison.engine import measure
from ptq_cli.comparison.host import host_report
from ptq_cli.comparison.latency import LatencySettings, measure_latency
from ptq_cli.drift.layers import match_layers
from ptq_cli.comparison.report import CompareReport, ModelRef
from ptq_cli.comparison.sharded import measure_on
from ptq_cli.data import iter_batches, open_dataset
from ptq_cli.drift.kinds import output_kinds
from ptq_cli.drift.runtime import make_session
from ptq_cli.drift.sensitivity import measure_sensitivity
from ptq_cli.drift.thresholds import Thresholds, evaluate
from ptq_cli.errors import DataError, ModelError, UsageError
from ptq_cli.model.io import InputSpec, input_specs, load_model, sha256_file

if TYPE_CHECKING:
    from ptq_cli.engine import Engine

__all__ = ["compare", "compare_batches", "Thresholds", "LatencySettings", "CompareReport"]

ModelLike = str | os.PathLike | onnx.ModelProto
DEFAULT_SENSITIVITY_SAMPLES = 32


def compare(reference: ModelLike, candidate: ModelLike, data, *, labels: str | os.PathLike | None = None,
            image=None, per_layer: bool = False, latency: bool = False, max_samples: int | None = None,
            batch_size: int = 1, thresholds: Thresholds = Thresholds(), progress: bool = True,
            latency_settings: LatencySettings = LatencySettings(),
            per_layer_samples: int = DEFAULT_SENSITIVITY_SAMPLES, engine: "Engine | None" = None,
            parts: int | None = None) -> CompareReport:
    """Run both models on `data` (a folder, or a `ptq_cli.data.Dataset`) and measure the drift.

    `labels`: a file of integer labels in sample order (class sub-folders of an image folder are
    read as labels without it); `image`: an `ImagePreprocess` for image folders. `per_layer` adds
    the per-tensor SQNR and each quantized node's isolated sensitivity, measured on the first
    `per_layer_samples` samples.
    `engine` (ptq_cli.engine.open_engine) measures the output figures as `parts` tasks on its
    executor, a Dask cluster for instance, with the same figures as one process
    (comparison/sharded.py); both models must be paths. Not with per_layer; latency is measured
    here, on this machine.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise UsageError(f"max samples must be at least 1, got {max_samples}")
    ref_model, ref_ref = _load(reference, "reference")
    cand_model, cand_ref = _load(candidate, "candidate")
    specs = check_same_inputs(ref_model, cand_model)
    if isinstance(data, (str, os.PathLike)):
        dataset = open_dataset(data, specs, image=image, labels=labels)
    else:
        if labels is not None or image is not None:
            raise UsageError("labels= and image= apply when data is a folder; build the Dataset with them")
        dataset = data
    if engine is not None:
        report = _compare_on(engine, reference, candidate, ref_model, cand_model, dataset, per_layer=per_layer,
                             latency=latency, max_samples=max_samples, batch_size=batch_size,
                             thresholds=thresholds, progress=progress, latency_settings=latency_settings,
                             parts=parts)
        return replace(report, reference=ref_ref, candidate=cand_ref)
    total = min(len(dataset), max_samples) if max_samples else len(dataset)
    batches = iter_batches(dataset, specs, batch_size=batch_size, max_samples=max_samples)
    report = compare_batches(ref_model, cand_model, batches, description=dataset.description,
                             per_layer=per_layer, latency=latency, thresholds=thresholds,
                             progress=progress, total=total, latency_settings=latency_settings,
                             per_layer_samples=per_layer_samples)
    return replace(report, reference=ref_ref, candidate=cand_ref)


def compare_batches(reference: onnx.ModelProto, candidate: onnx.ModelProto, batches, *,
                    description: str = "batches", per_layer: bool = False, latency: bool = False,
                    thresholds: Thresholds = Thresholds(), progress: bool = False,
                    total: int | None = None, latency_settings: LatencySettings = LatencySettings(),
                    per_layer_samples: int = DEFAULT_SENSITIVITY_SAMPLES) -> CompareReport:
    """The same as `compare` on already-loaded models and an iterable of batches
    (objects with `.feeds`, `.size`, `.labels`)."""
    if per_layer_samples < 1:
        raise UsageError(f"per-layer samples must be at least 1, got {per_layer_samples}")
    specs = check_same_inputs(reference, candidate)
    pairs, notes = output_pairs(reference, candidate)
    kinds = output_kinds(reference)
    matching = match_layers(reference, candidate) if per_layer else None
    measured = measure(reference, candidate, batches, pairs, kinds, matching=matching, total=total,
                       progress=progress, keep_inputs=latency_settings.max_inputs if latency else 0,
                       keep_samples=per_layer_samples if per_layer else 0)
    return _report(reference, candidate, measured, notes, description=description, matching=matching,
                   latency=latency, thresholds=thresholds, progress=progress, latency_settings=latency_settings,
                   per_layer_samples=per_layer_samples, pairs=pairs, kinds=kinds, specs=specs)


def _compare_on(engine: "Engine", reference: ModelLike, candidate: ModelLike, ref_model: onnx.ModelProto,
                cand_model: onnx.ModelProto, dataset, *, per_layer: bool, latency: bool,
                max_samples: int | None, batch_size: int, thresholds: Thresholds, progress: bool,
                latency_settings: LatencySettings, parts: int | None) -> CompareReport:
    if per_layer:
        raise UsageError("--per-layer runs in one process (it needs both models' intermediate tensors "
                         "side by side); drop --engine dask for it")
    if not all(isinstance(m, (str, os.PathLike)) for m in (reference, candidate)):
        raise UsageError("comparing on an engine needs both models as file paths (the workers read them)")
    pairs, notes = output_pairs(ref_model, cand_model)
    kinds = output_kinds(ref_model)
    measured = measure_on(engine, reference, candidate, dataset, pairs, kinds, batch_size=batch_size,
                          max_samples=max_samples, parts=parts, progress=progress,
                          keep_inputs=latency_settings.max_inputs if latency else 0)
    return _report(ref_model, cand_model, measured, notes, description=dataset.description, matching=None,
                   latency=latency, thresholds=thresholds, progress=progress,
                   latency_settings=latency_settings, per_layer_samples=DEFAULT_SENSITIVITY_SAMPLES,
                   pairs=pairs, kinds=kinds, specs=check_same_inputs(ref_model, cand_model))


def _report(reference: onnx.ModelProto, candidate: onnx.ModelProto, measured, notes: list[str], *,
            description: str, matching, latency: bool, thresholds: Thresholds, progress: bool,
            latency_settings: LatencySettings, per_layer_samples: int, pairs, kinds, specs) -> CompareReport:
    """The report of what `measure` (or a cluster) measured: per-layer sensitivity and latency
    are measured here, in this process."""
    if measured.samples == 0:
        raise DataError(f"no samples were read from {description}; nothing to compare")
    layers = measured.layers
    if matching is not None:
        batch_free = all(len(s.shape) > 0 and s.shape[0] is None for s in specs)
        sensitivity = measure_sensitivity(reference, candidate, matching, measured.kept_inputs, pairs,
                                          max_samples=per_layer_samples, batch_free=batch_free,
                                          progress=progress, kinds=kinds)
        layers = replace(layers, sensitivity=sensitivity)
    timing = None
    if latency:
        timing = measure_latency(make_session(reference, "reference"), make_session(candidate, "candidate"),
                                 list(measured.kept_inputs[:latency_settings.max_inputs]), latency_settings)
    if any(o.nonfinite_candidate for o in measured.outputs):
        notes.append("the candidate produced NaN/Inf on some samples; they are counted, "
                     "not averaged (see nonfinite_candidate)")
    return CompareReport(
        reference=ModelRef(None, None), candidate=ModelRef(None, None), data_description=description,
        samples=measured.samples, labelled=measured.labelled, outputs=measured.outputs,
        layers=layers, latency=timing, thresholds=evaluate(thresholds, measured.outputs),
        notes=tuple(notes), host=host_report(candidate))


def _load(model: ModelLike, what: str) -> tuple[onnx.ModelProto, ModelRef]:
    if isinstance(model, onnx.ModelProto):
        return model, ModelRef(None, None)
    if not isinstance(model, (str, os.PathLike)):
        raise UsageError(f"the {what} must be a path to an .onnx file or an onnx.ModelProto")
    return load_model(model), ModelRef(str(model), sha256_file(model))


def check_same_inputs(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> list[InputSpec]:
    """The reference's input specs; UsageError when the candidate's inputs differ in any way."""
    ref_specs, cand_specs = input_specs(reference), input_specs(candidate)
    ref_by_name = {s.name: s for s in ref_specs}
    cand_by_name = {s.name: s for s in cand_specs}
    if set(ref_by_name) != set(cand_by_name):
        raise UsageError(
            f"the models' inputs differ: reference has {_names(ref_specs)}, candidate has "
            f"{_names(cand_specs)}; compare needs two versions of the same model with the same inputs")
    for name, ref in ref_by_name.items():
        cand = cand_by_name[name]
        if ref.dtype != cand.dtype or ref.shape != cand.shape:
            raise UsageError(f"input {name!r} differs: reference {ref.describe()}, candidate "
                             f"{cand.describe()}; compare needs models with identical inputs")
    return ref_specs


def _names(specs: list[InputSpec]) -> str:
    return "[" + ", ".join(repr(s.name) for s in specs) + "]"


def output_pairs(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> tuple[list[tuple[str, str]], list[str]]:
    """(reference output, candidate output) by name; by position when no name is shared."""
    ref_names = [o.name for o in reference.graph.output]
    cand_names = [o.name for o in candidate.graph.output]
    if set(ref_names) <= set(cand_names):
        return [(n, n) for n in ref_names], []
    if not set(ref_names) & set(cand_names) and len(ref_names) == len(cand_names):
        pairs = list(zip(ref_names, cand_names))
        return pairs, ["outputs were matched by position (no output name is shared): "
                       + ", ".join(f"{r} ~ {c}" for r, c in pairs)]
    missing = [n for n in ref_names if n not in cand_names]
    raise ModelError(f"the candidate has no output named {', '.join(map(repr, missing))} "
                     f"(its outputs: {', '.join(map(repr, cand_names))}); is it made from this reference?")
