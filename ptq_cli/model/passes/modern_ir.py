"""Raise the IR version to what the opsets need (IR 3 files, e.g. from CNTK, require every new
initializer to be a graph input too) and stop listing initializers as inputs, which makes
onnxruntime treat them as overridable and skip constant folding."""

from __future__ import annotations

import onnx
from onnx import helper

from ptq_cli.model.passes.base import Pass, PassResult


class ModernIr(Pass):
    name = "modern-ir"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        changes = []
        needed = max(model.ir_version, helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True), 4)
        if needed != model.ir_version:
            changes.append(f"IR version {model.ir_version} -> {needed}")
            model.ir_version = needed
        initializers = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        if len(inputs) != len(model.graph.input):
            changes.append(f"{len(model.graph.input) - len(inputs)} initializers no longer listed as inputs")
            del model.graph.input[:]
            model.graph.input.extend(inputs)
        return PassResult(model, bool(changes), tuple(changes))
