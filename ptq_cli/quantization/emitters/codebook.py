"""Codebook (non-uniform) weights: store indices into a few float centroids instead of floats.

Each weight tensor of Conv/ConvTranspose/Gemm/MatMul, and each Gather table, is clustered by
k-means to 2**bits centroids, one codebook per output channel (or per tensor). The file keeps

    W_indices  uint4 (bits <= 4, two per byte) or uint8, laid out [channels, values per channel]
    W_codebook float16 [channels, 2**bits] (float32 when a centroid does not fit float16)

and the graph rebuilds W under its own name:

    Cast(W_indices -> int64), Cast(W_codebook -> float) -> GatherElements(axis=1) -> Reshape [-> Transpose]

Every input of that chain is a constant, so onnxruntime folds it at load: the model runs in float
at the speed of the original, only the file shrinks (4-bit: ~1/8 of the weights plus the
codebooks). Unlike a uniform grid, the centroids follow the weights' distribution (dense near
zero, a few for the outliers), so at equal bits the error is smaller. With the input Gram matrix
H of a layer (calibration with --data or a table made with --gram), each weight counts by the
energy of the input it multiplies, diag(H), so the centroids serve the weights that matter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ptq_cli.calibration.gram import gram_key
from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute
from ptq_cli.quantization.arithmetic.kmeans import kmeans_rows
from ptq_cli.quantization.arithmetic.stochastic import weight_rng
from ptq_cli.quantization.emitters.base import EmitResult
from ptq_cli.quantization.emitters.codebook_gptq import gptq_assign
from ptq_cli.quantization.plan import SkipReason, Why
from ptq_cli.recipe import PerChannel, Recipe

_MIN_VALUES_PER_CENTROID = 16  # a tensor smaller than 16·2**bits values is left alone: nothing to gain


@dataclass(frozen=True)
class _Site:
    node: onnx.NodeProto
    tensor: str
    axis: int  # the output-channel axis of the weight


def emit_codebook(model: onnx.ModelProto, recipe: Recipe, grams: Mapping | None = None) -> EmitResult:
    """A copy of the prepared `model` with its weights as codebooks; the nodes whose weights were
    clustered, and why the others were not."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    index = GraphIndex(out.graph)
    names = NameAllocator(out.graph)
    done, skipped, expanded, seen = [], [], [], set()
    for node in out.graph.node:
        site = _site(node, index)
        if site is None or site.tensor in seen:
            continue
        seen.add(site.tensor)
        weight = index.constant(site.tensor)
        reason = _refuse(node, weight, recipe)
        if reason is None:
            reason = _expand(site, weight, _gram(site, weight, index, grams), recipe, names, expanded, out.graph)
        if reason is None:
            done.append(node.name)
        else:
            why = Why.EXCLUDED if recipe.excludes(node.name, node.op_type) else Why.UNSUPPORTED
            skipped.append(SkipReason(node.name, node.op_type, reason, why))
    nodes = expanded + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    rebuilt = {n.output[0] for n in expanded}  # the weights the chains now produce
    kept = [t for t in out.graph.initializer if t.name not in rebuilt]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return EmitResult(out, tuple(done), tuple(skipped))


def _site(node: onnx.NodeProto, index: GraphIndex) -> _Site | None:
    """The weight of `node` a codebook can replace, with its output-channel axis."""
    op = node.op_type
    position = 0 if op == "Gather" else 1
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Gather") or len(node.input) <= position:
        return None
    tensor = node.input[position]
    if tensor not in index.initializers or not index.is_float(tensor):
        return None
    ndim = len(index.initializers[tensor].dims)
    if op == "Conv":
        axis = 0
    elif op == "ConvTranspose":
        axis = 1 if attribute(node, "group", 1) == 1 else 0
    elif op == "Gemm":
        axis = 0 if attribute(node, "transB", 0) else 1
    else:
        # MatMul [K, N]: N. Gather table [rows, width]: a codebook per column. Per row (token) is
        # 1.2 dB closer on MiniLM's table, yet the embeddings drift more (mean cosine 0.964 vs 0.986).
        axis = ndim - 1
    return _Site(node, tensor, axis) if ndim >= 2 else None


def _refuse(node: onnx.NodeProto, weight: np.ndarray, recipe: Recipe) -> str | None:
    if recipe.excludes(node.name, node.op_type):
        return "excluded by --exclude"
    if weight.dtype != np.float32:
        return f"its weight is {weight.dtype}; codebooks replace float32 weights"
    k = 1 << recipe.weight_codebook.bits
    if weight.size < _MIN_VALUES_PER_CENTROID * k:
        return f"its weight has {weight.size} values: too few to gain from a {k}-entry codebook"
    return None


def _gram(site: _Site, weight: np.ndarray, index: GraphIndex, grams: Mapping | None) -> np.ndarray | None:
    """The layer's input Gram matrix H [groups, d, d], d = the values of one output channel."""
    if not grams or site.node.op_type not in ("Conv", "Gemm", "MatMul") or weight.ndim < 2:
        return None

    gram = grams.get(gram_key(site.node, index) or "")
    if gram is None or gram.total is None:
        return None
    channels = weight.shape[site.axis]
    groups, d = gram.total.shape[0], gram.total.shape[1]
    if d * channels != weight.size or channels % groups or (site.node.op_type != "Conv" and groups != 1):
        return None
    return np.asarray(gram.total, np.float64)


def _importance(h: np.ndarray, channels: int) -> np.ndarray:
    """diag(H) laid out like the weight's rows [channels, d]: the energy of each weight's input."""
    diag = np.diagonal(h, axis1=1, axis2=2)  # [groups, d]
    rows = diag[np.arange(channels) // (channels // diag.shape[0])]
    # A little floor so that an input never seen non-zero still pulls its weights a bit.
    return rows + 1e-6 * max(float(rows.mean()), 1e-30)


def _expand(site: _Site, weight: np.ndarray, h: np.ndarray | None, recipe: Recipe,
            names: NameAllocator, nodes: list, graph: onnx.GraphProto) -> str | None:
    """Cluster the weight, store indices + codebook, and append the nodes that rebuild it."""
    spec = recipe.weight_codebook
    k = 1 << spec.bits
    moved = np.moveaxis(weight, site.axis, 0)
    channels = moved.reshape(moved.shape[0], -1)  # [output channels, d]
    per_channel = isinstance(spec.granularity, PerChannel)
    if per_channel and channels.shape[1] * spec.bits < 16 * k:  # float16 codebook (2k bytes) > indices
        return (f"{channels.shape[1]} values per output channel: a per-channel {k}-entry codebook would "
                "outweigh them (use --per-tensor to cluster it whole)")
    importance = None if h is None else _importance(h, channels.shape[0])
    rows = channels if per_channel else channels.reshape(1, -1)
    centroids, assignment = kmeans_rows(rows, k, None if importance is None else importance.reshape(rows.shape),
                                        rng=weight_rng(recipe.seed, site.tensor))
    if h is not None:  # then assign for the output error, with GPTQ's error feedback
        assignment, centroids = gptq_assign(channels, h, centroids)
        assignment, centroids = assignment.reshape(rows.shape), centroids[: rows.shape[0]]
    indices = names.new(f"{site.tensor}_codebook_indices")
    codebook = names.new(f"{site.tensor}_codebook")
    graph.initializer.append(_index_tensor(assignment, spec.bits, indices))
    graph.initializer.append(numpy_helper.from_array(_compact(centroids), codebook))

    def node(op: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or names.new(f"{site.tensor}_codebook_{op.lower()}")
        nodes.append(helper.make_node(op, inputs, [output], name=names.new(f"{site.tensor}_codebook_{op}"), **attrs))
        return output

    last = site.axis == 0
    table = node("Cast", [codebook], to=TensorProto.FLOAT)
    flat = node("GatherElements", [table, node("Cast", [indices], to=TensorProto.INT64)], axis=1)
    shape = names.new(f"{site.tensor}_codebook_shape")
    graph.initializer.append(numpy_helper.from_array(np.array(moved.shape, np.int64), shape))
    grid = node("Reshape", [flat, shape], site.tensor if last else None)
    if not last:
        perm = list(range(1, site.axis + 1)) + [0] + list(range(site.axis + 1, weight.ndim))
        node("Transpose", [grid], site.tensor, perm=perm)
    return None


def _index_tensor(assignment: np.ndarray, bits: int, name: str) -> onnx.TensorProto:
    """uint4, two indices a byte (first in the low nibble, as ONNX packs), or uint8."""
    if bits > 4:
        return numpy_helper.from_array(assignment.astype(np.uint8), name)
    flat = assignment.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
    return helper.make_tensor(name, TensorProto.UINT4, assignment.shape, packed.tobytes(), raw=True)


def _compact(centroids: np.ndarray) -> np.ndarray:
    """float16 when it keeps every codebook (row) to 2^-11 of its largest centroid, as for
    normal float16 values, or the row is negligible (below 2^-13 of the tensor: a dead filter
    whose ~1e-12 weights become 0); float32 otherwise."""
    with np.errstate(over="ignore"):
        half = centroids.astype(np.float16)
    back = half.astype(np.float32)
    peak = np.abs(centroids).max(axis=1, keepdims=True)
    tolerance = np.maximum(peak * 2.0 ** -11, peak.max() * 2.0 ** -24)
    if np.all(np.isfinite(back)) and np.all(np.abs(back - centroids) <= tolerance):
        return half
    return centroids
