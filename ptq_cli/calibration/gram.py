"""Second-order statistics of the weighted layers' inputs: H = Σ x·xᵀ, reduced inside onnxruntime.

GPTQ rounding weighs each weight's rounding error by how the layer's input spreads it, which
is the Gram matrix of the rows the weight multiplies (its "input vectors"):

    MatMul/Gemm  x [..., K]          -> rows x[..., :]                      H [1, K, K]
    Conv         x [N, C, H, W]      -> one row per output position and group: the patch
                                        (C/g channels × kh × kw taps) it reads    H [g, d, d]

The Conv's patches come from the model's own Conv with a one-hot weight (same strides, pads,
dilations and groups): output channel j of group g copies tap j of that group's patch, so
onnxruntime does the im2col on the fly, with the exact border handling of the layer; a 1×1,
stride-1 Conv needs none (its rows are the pixels). Either way the rows go through one batched
MatMul P·Pᵀ, so only H (d×d per group, never the rows) leaves the session, and every
intermediate is freed as in plain inference.

Each batch's H comes out in float32 and is summed in float64, in the order of the batches.
A float32 has 24 significant bits and a float64 53: the sum is exact (hence independent of the
order, and shards merge bit for bit) as long as no term is below 2^-29 of the running sum of its
entry; a smaller term can round differently in another order, by at most 2^-53 of the entry.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tqdm import tqdm

from ptq_cli.calibration.collector import _run, calibration_session
from ptq_cli.calibration.probes import Augmented
from ptq_cli.calibration.sums import PairSum
from ptq_cli.data import Batch
from ptq_cli.model.graph import GraphIndex, NameAllocator, attribute


@dataclass(frozen=True)
class GramSite:
    """One Gram matrix to collect: the input tensor, and the Conv layout that makes its rows."""

    key: str  # stable name in the table: the tensor, plus the Conv geometry for a Conv
    tensor: str
    conv: onnx.NodeProto | None  # the Conv whose patches are the rows; None: rows of the last axis
    width: int  # d: columns of the weight per group (K for a MatMul)
    groups: int = 1
    kernel: tuple[int, int] | None = None  # a Conv's kH, kW from its weight (kernel_shape is optional)


def gram_key(node: onnx.NodeProto, index: GraphIndex) -> str | None:
    """The key of the Gram matrix a MatMul/Gemm/Conv's weight needs, or None (no such weight)."""
    site = gram_site(node, index)
    return None if site is None else site.key


def gram_site(node: onnx.NodeProto, index: GraphIndex) -> GramSite | None:
    if len(node.input) < 2 or node.input[1] not in index.initializers or node.input[0] in index.initializers:
        return None
    weight = index.initializers[node.input[1]]
    dims = list(weight.dims)
    if node.op_type == "MatMul" and len(dims) == 2:
        return GramSite(node.input[0], node.input[0], None, dims[0])
    if node.op_type == "Gemm" and len(dims) == 2 and not attribute(node, "transA", 0):
        width = dims[1] if attribute(node, "transB", 0) else dims[0]
        return GramSite(node.input[0], node.input[0], None, width)
    if node.op_type == "Conv" and len(dims) == 4:
        groups = attribute(node, "group", 1)
        geometry = " ".join(f"{a.name}={_plain(helper.get_attribute_value(a))}"
                            for a in sorted(node.attribute, key=lambda a: a.name) if a.name != "kernel_shape")
        key = f"{node.input[0]}|conv k={dims[2]}x{dims[3]} {geometry}".rstrip()
        return GramSite(key, node.input[0], node, dims[1] * dims[2] * dims[3], groups, (dims[2], dims[3]))
    return None


def _plain(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else list(value) if isinstance(value, (list, tuple)) else value


def gram_sites(model: onnx.ModelProto) -> list[GramSite]:
    index = GraphIndex(model.graph)
    sites = {}
    for node in model.graph.node:
        site = gram_site(node, index)
        if site is not None and index.is_float(site.tensor):
            sites.setdefault(site.key, site)
    return list(sites.values())


class Gram:
    """Σ x·xᵀ per group, in float64; merges by addition, to the same value however the batches
    were split (a PairSum: sums.py)."""

    def __init__(self, total: np.ndarray | None = None, batches: int = 0) -> None:
        self.sums = PairSum(None if total is None else np.asarray(total, dtype=np.float64))
        self.batches = batches

    @property
    def total(self) -> np.ndarray | None:
        return self.sums.value

    def add(self, h: np.ndarray) -> None:
        h = h.reshape((1, *h.shape)) if h.ndim == 2 else h
        self.sums.add(h)
        self.batches += 1

    def merge(self, other: "Gram") -> None:
        if other.sums.hi is None:
            return
        if self.sums.hi is not None and self.sums.hi.shape != other.sums.hi.shape:
            raise ValueError(f"Gram matrices of shapes {self.sums.hi.shape} and {other.sums.hi.shape} do not merge")
        self.sums.merge(other.sums)
        self.batches += other.batches

    def to_dict(self) -> dict[str, Any]:
        # The sum's value, correctly rounded (see ChannelMean.to_dict).
        total = np.zeros((0,)) if self.total is None else self.total
        return {"shape": list(total.shape), "batches": self.batches, "float64_base64": _base64(total)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Gram":
        shape = tuple(int(d) for d in data["shape"])
        values = np.frombuffer(base64.b64decode(data["float64_base64"]), dtype="<f8")
        if values.size != int(np.prod(shape)):
            raise ValueError(f"Gram matrix holds {values.size} values for shape {shape}")
        return cls(values.reshape(shape).astype(np.float64) if values.size else None, int(data["batches"]))


def _base64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f8").tobytes()).decode()


def augment_grams(model: onnx.ModelProto, sites: list[GramSite]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of `model` whose outputs are the per-batch Gram matrices of `sites`, in order."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    fresh = NameAllocator(graph).new

    def const(array: np.ndarray, base: str) -> str:
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    del graph.output[:]
    outputs = []
    for site in sites:
        rows = _rows_nodes(site, graph, fresh, const)  # [g, d, R]
        rows_t, h = fresh(f"{site.tensor}/ptq_rows_t"), fresh(f"{site.tensor}/ptq_gram")
        graph.node.append(helper.make_node("Transpose", [rows], [rows_t], perm=[0, 2, 1]))
        graph.node.append(helper.make_node("MatMul", [rows, rows_t], [h]))
        graph.output.append(onnx.ValueInfoProto(name=h))
        outputs.append(h)
    return out, outputs


def _rows_nodes(site: GramSite, graph: onnx.GraphProto, fresh, const) -> str:
    """Nodes that turn the site's input into its rows, laid out [groups, d, rows]."""
    g, d = site.groups, site.width
    x = site.tensor
    if site.conv is not None and not _is_pointwise(site.conv):
        kh, kw = (int(v) for v in _kernel(site))
        per_group = d // (kh * kw)
        onehot = np.zeros((g * d, per_group, kh, kw), np.float32)
        for j in range(d):
            onehot[np.arange(g) * d + j, j // (kh * kw), (j % (kh * kw)) // kw, j % kw] = 1.0
        patches = fresh(f"{x}/ptq_patches")
        attrs = {a.name: helper.get_attribute_value(a) for a in site.conv.attribute}
        attrs["kernel_shape"] = [kh, kw]
        graph.node.append(helper.make_node("Conv", [x, const(onehot, f"{x}/ptq_onehot")], [patches], **attrs))
        x = patches
    if site.conv is not None:  # [N, g*d, ...] -> [g, d, N*L]
        split, moved, rows = fresh(f"{x}/ptq_split"), fresh(f"{x}/ptq_moved"), fresh(f"{x}/ptq_rows")
        graph.node.append(helper.make_node("Reshape", [x, const(np.array([0, g, d, -1], np.int64), "ptq_shape")], [split]))
        graph.node.append(helper.make_node("Transpose", [split], [moved], perm=[1, 2, 0, 3]))
        graph.node.append(helper.make_node("Reshape", [moved, const(np.array([g, d, -1], np.int64), "ptq_shape")], [rows]))
        return rows
    # [..., K] -> [1, K, R] with Reshape/Transpose only: they read the same at every opset
    # (Unsqueeze took its axes as an attribute before opset 13).
    flat, columns, rows = fresh(f"{x}/ptq_flat"), fresh(f"{x}/ptq_columns"), fresh(f"{x}/ptq_rows")
    graph.node.append(helper.make_node("Reshape", [x, const(np.array([-1, d], np.int64), "ptq_shape")], [flat]))
    graph.node.append(helper.make_node("Transpose", [flat], [columns], perm=[1, 0]))
    graph.node.append(helper.make_node("Reshape", [columns, const(np.array([1, d, -1], np.int64), "ptq_shape")], [rows]))
    return rows


def _kernel(site: GramSite) -> tuple[int, int]:
    shape = attribute(site.conv, "kernel_shape", None)
    if shape:
        return int(shape[0]), int(shape[1])
    if site.kernel is not None:  # kernel_shape is optional: the weight's spatial dims
        return site.kernel
    raise ValueError("Conv without kernel_shape")  # gram_sites only builds sites it can read


def _is_pointwise(conv: onnx.NodeProto) -> bool:
    """A 1x1 Conv that reads every pixel once, without padding: its rows are the pixels."""
    return (list(attribute(conv, "kernel_shape", [0, 0]) or [0, 0]) == [1, 1]
            and all(v == 1 for v in attribute(conv, "strides", [1, 1]) or [1])
            and not any(attribute(conv, "pads", []) or [])
            and attribute(conv, "auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"))


def collect_grams(model: onnx.ModelProto, batches: Iterable[Batch], *, progress: bool = False,
                  total: int | None = None, sites: list[GramSite] | None = None,
                  threads: int = 0) -> dict[str, Gram]:
    """Σ x·xᵀ of every MatMul/Gemm/Conv weight's input over `batches`, keyed by gram_key."""
    sites = gram_sites(model) if sites is None else sites
    grams = {s.key: Gram() for s in sites}
    if not sites:
        return grams
    augmented, outputs = augment_grams(model, sites)
    session = calibration_session(augmented, "CPUExecutionProvider", numpy_work=False, threads=threads)
    plan = Augmented(outputs, [], [])
    with tqdm(total=total, unit="sample", desc="second-order statistics", file=sys.stderr,
              disable=not progress, leave=False) as bar:
        for batch in batches:
            for site, h in zip(sites, _run(session, plan, batch)):
                grams[site.key].add(h)
            bar.update(batch.size)
    return grams
