"""What is checked and recorded before a quantized model is written: the recipe's names exist, the
model loads in onnxruntime, and its metadata says how it was made."""

from __future__ import annotations

import json

import onnx

from ptq_cli import __version__
from ptq_cli.errors import ModelError, UsageError
from ptq_cli.foreign_errors import is_onnxruntime_error, onnxruntime_message
from ptq_cli.model.io import check_model
from ptq_cli.model.sessions import open_session
from ptq_cli.drift.record import DRIFT_KEY, DriftRecord
from ptq_cli.quantization.plan import QuantPlan
from ptq_cli.recipe import Recipe


def stamp(model: onnx.ModelProto, recipe: Recipe, source_sha: str, data: str, drift: DriftRecord | None = None,
          probed_host=None) -> None:
    """Record how the model was made, so that any output can be traced and reproduced (the
    recipe holds the target; the probed host only when it chose the target: --target host)."""
    props = {
        "ptq.version": __version__,
        "ptq.recipe": json.dumps(recipe.to_dict(), sort_keys=True),
        "ptq.source_sha256": source_sha,
        "ptq.calibration_data": data,
    }
    if probed_host is not None:
        props["ptq.host_kernels"] = probed_host.value
    if drift is not None:
        props[DRIFT_KEY] = json.dumps(drift.to_dict(), sort_keys=True)
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def verify_loads(model: onnx.ModelProto, source: onnx.ModelProto | None = None) -> None:
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
    try:
        open_session(model)
    except Exception as exc:  # onnxruntime raises its own exception types
        if not is_onnxruntime_error(exc):
            raise
        return exc
    return None


def nothing_quantized(plan: QuantPlan) -> str:
    """Writing a float copy named as quantized would be nonsense: say why every node stayed float."""
    reasons: dict[tuple[str, str], int] = {}
    for skip in plan.skipped:
        reasons[(skip.op_type, skip.reason)] = reasons.get((skip.op_type, skip.reason), 0) + 1
    (op, reason), count = max(reasons.items(), key=lambda kv: kv[1]) if reasons else (("", "no node"), 0)
    more = f" (and {len(plan.skipped) - count} other node(s))" if len(plan.skipped) > count else ""
    why = f"{count} x {op}: {reason}{more}" if count else "the model has no node ptq can quantize"
    return f"nothing was quantized, so nothing was written: {why}"


def check_excludes(recipe: Recipe, source: onnx.ModelProto, plan: QuantPlan) -> None:
    """An --exclude that matches no node name or op type is a typo, not a no-op: refuse it."""
    known = {s.node for s in plan.skipped} | {s.op_type for s in plan.skipped}
    for node in _all_nodes(source.graph):
        known.update((node.name, node.op_type))
    unknown = [entry for entry in recipe.exclude if entry not in known]
    if unknown:
        raise UsageError(f"--exclude {unknown[0]!r} matches no node name and no op type of the model; "
                         "check the spelling (`ptq compare --per-layer` prints node names)")


def check_run_time(recipe: Recipe, plan: QuantPlan) -> None:
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
