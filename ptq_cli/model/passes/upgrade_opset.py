"""Raise the opset to one with per-axis QuantizeLinear/DequantizeLinear (13), or 21 for 4- and
16-bit types: writing `axis` into an older opset gives a model onnxruntime refuses.

When onnx's version converter cannot get there (an op it has no adapter for), the model goes to
the highest lesser opset quantization can still use that the converter reaches (11: dynamic
quantization; 10: per-tensor QDQ), or stays at its own; quantization/placement/opsets.py degrades the recipe
to what that opset allows. A model onnxruntime runs is never refused for its opset.
"""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

from ptq_cli.model.io import opset_version
from ptq_cli.model.passes.base import Pass, PassResult

QDQ_PER_TENSOR_OPSET = 10  # QuantizeLinear/DequantizeLinear, per tensor only
DYNAMIC_OPSET = 11  # DynamicQuantizeLinear


class UpgradeOpset(Pass):
    name = "upgrade-opset"

    def __init__(self, min_opset: int) -> None:
        self.min_opset = min_opset

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        current = opset_version(model)
        if current >= self.min_opset:
            return PassResult(model, False)
        failures = []
        for target in [self.min_opset] + [v for v in (DYNAMIC_OPSET, QDQ_PER_TENSOR_OPSET)
                                          if current < v < self.min_opset]:
            try:
                upgraded = version_converter.convert_version(model, target)
            except Exception as exc:  # RuntimeError/ValueError/ConvertError on ops without an adapter
                failures.append(f"onnx's version converter cannot take opset {current} to {target} "
                                f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})")
                continue
            upgraded.ir_version = max(upgraded.ir_version, helper.find_min_ir_version_for(
                [helper.make_opsetid("", target)], ignore_unknown=True))
            return PassResult(upgraded, True, (f"opset {current} -> {target}",), tuple(failures))
        return PassResult(model, False, (), tuple(failures))
