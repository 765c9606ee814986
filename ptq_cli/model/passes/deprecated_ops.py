"""Deprecated and experimental ONNX ops rewritten as the standard ops they stand for.

Old exporters (Keras/CoreML converters at opset 7-9) wrote experimental ops such as ImageScaler.
onnxruntime still runs them, but onnx's version converter has no schema for them and refuses the
whole model, so the opset could not be raised to one with QuantizeLinear. Each is rewritten at the
model's own opset into ops every later opset has (elementwise Mul/Add broadcast from opset 7).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ptq_cli.model.graph import NameAllocator, attribute
from ptq_cli.model.io import opset_version
from ptq_cli.model.passes.base import Pass, PassResult

# Broadcasting Mul/Add (numpy rules, no `broadcast` attribute) exist from opset 7.
_BROADCAST_OPSET = 7


class RewriteDeprecatedOps(Pass):
    name = "deprecated-ops"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        done = rewrite_deprecated_ops(model)
        return PassResult(model, bool(done), tuple(f"{n}: experimental op rewritten as standard ops" for n in done))


def rewrite_deprecated_ops(model: onnx.ModelProto) -> list[str]:
    """Replace ImageScaler, Scale, Affine and ScaledTanh in place; return the rewritten node names."""
    if opset_version(model) < _BROADCAST_OPSET:
        return []
    graph = model.graph
    names = NameAllocator(graph)
    nodes, done = [], []
    for node in graph.node:
        rewrite = _REWRITES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rewrite is None:
            nodes.append(node)
            continue
        new_nodes, constants = rewrite(node, names)
        nodes.extend(new_nodes)
        graph.initializer.extend(constants)
        done.append(node.name or node.output[0])
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def _image_scaler(node, names):
    """y = scale * x + bias[c], bias per channel of an NCHW input."""
    scale = float(attribute(node, "scale", 1.0))
    bias = np.asarray(attribute(node, "bias", [0.0]), np.float32)
    return _affine(node, names, np.float32(scale), bias.reshape(1, -1, 1, 1))


def _scale(node, names):
    return _affine(node, names, np.float32(attribute(node, "scale", 1.0)), None)


def _affine_op(node, names):
    return _affine(node, names, np.float32(attribute(node, "alpha", 1.0)),
                   np.float32(attribute(node, "beta", 0.0)))


def _scaled_tanh(node, names):
    """y = alpha * tanh(beta * x)."""
    stem = node.name or node.output[0]
    beta, alpha = names.new(f"{stem}_beta"), names.new(f"{stem}_alpha")
    scaled, tanh = names.new(f"{stem}_scaled"), names.new(f"{stem}_tanh")
    constants = [numpy_helper.from_array(np.float32(attribute(node, "beta", 1.0)), beta),
                 numpy_helper.from_array(np.float32(attribute(node, "alpha", 1.0)), alpha)]
    return [helper.make_node("Mul", [node.input[0], beta], [scaled], name=names.new(f"{stem}_mul_beta")),
            helper.make_node("Tanh", [scaled], [tanh], name=names.new(f"{stem}_tanh")),
            helper.make_node("Mul", [tanh, alpha], [node.output[0]], name=names.new(f"{stem}_mul_alpha"))], constants


def _affine(node, names, scale: np.ndarray, bias: np.ndarray | None):
    """y = x * scale (+ bias): a Mul, and an Add when there is a bias."""
    stem = node.name or node.output[0]
    scale_name = names.new(f"{stem}_scale")
    constants = [numpy_helper.from_array(np.asarray(scale, np.float32), scale_name)]
    if bias is None or not np.any(bias):
        return [helper.make_node("Mul", [node.input[0], scale_name], [node.output[0]], name=stem)], constants
    bias_name, scaled = names.new(f"{stem}_bias"), names.new(f"{stem}_scaled")
    constants.append(numpy_helper.from_array(np.asarray(bias, np.float32), bias_name))
    return [helper.make_node("Mul", [node.input[0], scale_name], [scaled], name=names.new(f"{stem}_mul")),
            helper.make_node("Add", [scaled, bias_name], [node.output[0]], name=stem)], constants


_REWRITES = {"ImageScaler": _image_scaler, "Scale": _scale, "Affine": _affine_op, "ScaledTanh": _scaled_tanh}
