"""Raise the opset to one with per-axis QuantizeLinear/DequantizeLinear (13), or 21 for 4- and
16-bit types: writing `axis` into an older opset gives a model onnxruntime refuses."""

from __future__ import annotations

import onnx
from onnx import helper, version_converter

from ptq_cli.errors import ModelError
from ptq_cli.model.io import opset_version
from ptq_cli.model.passes.base import Pass, PassResult


class UpgradeOpset(Pass):
    name = "upgrade-opset"

    def __init__(self, min_opset: int) -> None:
        self.min_opset = min_opset

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        current = opset_version(model)
        if current >= self.min_opset:
            return PassResult(model, False)
        try:
            upgraded = version_converter.convert_version(model, self.min_opset)
        except Exception as exc:
            raise ModelError(f"the model is at opset {current}; per-channel QDQ needs opset {self.min_opset}, "
                             f"and onnx's version converter failed ({type(exc).__name__}: {exc}). "
                             "Try --per-tensor, or upgrade the model with your exporter.") from None
        upgraded.ir_version = max(upgraded.ir_version, helper.find_min_ir_version_for(
            [helper.make_opsetid("", self.min_opset)], ignore_unknown=True))
        return PassResult(upgraded, True, (f"opset {current} -> {self.min_opset}",))
