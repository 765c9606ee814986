"""The contract every emitter keeps: a prepared model and what to write in, an `EmitResult` out.

    emit_qdq(prepared, plan)            emit_qoperator(prepared, plan)
    emit_dynamic(prepared, recipe)      emit_weight_only(prepared, recipe, grams)
    emit_codebook(prepared, recipe, grams)
    emit_bodies(model, emit_one_body)   (If/Loop/Scan bodies, each with one of the above)

What to write is a QuantPlan for the static formats, which placement decided for the whole graph
at once; the run-time, weight-only and codebook emitters decide node by node from the recipe
alone (a node's form depends on nothing but the node), so the recipe is their plan. Either way
the emitter copies the model (the one given is never touched) and says, per node it looked at,
whether it wrote it in integer form or left it float and why, in the same types placement uses.
`emit_bodies` is the one that does not copy: it completes another emitter's fresh result (its
bodies) in place, as no other stage has seen that model yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ptq_cli.quantization.plan import SkipReason


@dataclass(frozen=True)
class EmitResult:
    model: onnx.ModelProto           # a new model: the emitter's input is left as it was
    quantized: tuple[str, ...]       # nodes written in integer form (or with integer weights)
    skipped: tuple[SkipReason, ...]  # nodes it looked at and left float, and why
    notes: tuple[str, ...] = ()      # model-wide things the user should know
