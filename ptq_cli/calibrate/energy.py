"""Input energy of each weighted layer: E[x_k²] per input feature, the diagonal of the Gram matrix.

The portable target bounds pairs of int8 weights (quantize/arithmetic/pairs.py). Which weight of
a pair gives way, and how coarse a channel's step may become, should depend on how much each
weight's error reaches the output: weight k's error δ_k is multiplied by input feature k, so it
costs E[x_k²]·δ_k². Transformer inputs (after LayerNorm) have feature energies 20–500× apart;
MiniLM-L3's mean cosine to FP32 goes from 0.99750 unweighted to 0.99757 weighted (full-range
weights: 0.99766). Where bias correction then removes the mean part of the error (Conv, Gemm),
the weighting is not used: by E[x²] it cost MobileNetV1-0.25 0.9 point of top-1, by the variance
0.4, and on the CNNs neither beat equal weights (quantize/transform.py says what is weighed).

Features are the input's last axis for MatMul/Gemm and axis 1 (channels) for Conv. The sums are
taken in float64 over the first ENERGY_SAMPLES calibration samples: relative energies settle
long before ranges do, and this pass runs the model once more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_cli.data import Batch
from ptq_cli.model.graph import GraphIndex, attribute

ENERGY_SAMPLES = 32
_WEIGHTED = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class FeatureEnergy:
    """Σ x_k² per input feature k, and the count of values each sum holds."""

    sum_of_squares: np.ndarray
    count: int

    @property
    def mean_square(self) -> np.ndarray:
        return self.sum_of_squares / self.count

    def __add__(self, other: "FeatureEnergy") -> "FeatureEnergy":
        return FeatureEnergy(self.sum_of_squares + other.sum_of_squares, self.count + other.count)


def energy_sites(model: onnx.ModelProto) -> dict[str, tuple[str, int]]:
    """node name -> (its input tensor, the feature axis) for every MatMul/Gemm/Conv with a constant weight."""
    index = GraphIndex(model.graph)
    sites = {}
    for node in model.graph.node:
        if node.op_type not in _WEIGHTED or len(node.input) < 2 or node.input[1] not in index.initializers:
            continue
        if node.input[0] in index.initializers or (node.op_type == "Gemm" and attribute(node, "transA", 0)):
            continue
        sites[node.name] = (node.input[0], 1 if node.op_type == "Conv" else -1)
    return sites


def collect_energy(model: onnx.ModelProto, batches: Iterable[Batch]) -> dict[str, FeatureEnergy]:
    """node name -> the energy of its input's features over `batches` (float64)."""
    from ptq_cli.calibrate.collector import make_session

    sites = energy_sites(model)
    inputs = {i.name for i in model.graph.input}
    tensors = sorted({tensor for tensor, _ in sites.values()} - inputs)  # graph inputs come from the feeds
    if not sites:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors if t not in present)
    session = make_session(probe, "CPUExecutionProvider", numpy_work=True)
    del probe
    sums: dict[str, FeatureEnergy] = {}
    for batch in batches:
        arrays = dict(zip(tensors, session.run(tensors, batch.feeds) if tensors else []))
        arrays.update((name, batch.feeds[name]) for name in inputs if name in batch.feeds)
        for node, (tensor, axis) in sites.items():
            x = np.asarray(arrays[tensor], np.float64)
            if x.ndim < 2:
                continue
            x = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])
            energy = FeatureEnergy(np.einsum("nk,nk->k", x, x), x.shape[0])
            sums[node] = energy if node not in sums else sums[node] + energy
    return sums
