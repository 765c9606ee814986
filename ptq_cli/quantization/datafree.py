"""Data-free static quantization: activation ranges without any user data.

Two sources, best first: the BatchNormalization statistics the model still carries (see
calibration/batchnorm.py: exact for the blocks they describe, carried forward through the graph),
and for every other tensor a calibration pass over synthetic inputs drawn to match each input's
declared or inferred statistics (data/synthetic.py). Each range's source is reported.
"""

from __future__ import annotations

from ptq_cli.calibration.batchnorm import batchnorm_ranges
from ptq_cli.data.dataset import Dataset
from ptq_cli.data.synthetic import DEFAULT_SAMPLES, synthetic_dataset
from ptq_cli.errors import UsageError
from ptq_cli.model.io import input_specs

BATCHNORM = "BatchNormalization statistics"
SYNTHETIC = "synthetic inputs"


def synthetic_data(source, data, calibration, image, *, seed: int, max_samples: int | None) -> Dataset:
    """The synthetic Dataset that stands in for --data."""
    if data is not None or calibration is not None:
        raise UsageError("--data-free chooses ranges without data: drop --data / --calibration (or --data-free)")

    return synthetic_dataset(source, input_specs(source), image, samples=max_samples or DEFAULT_SAMPLES, seed=seed)


def with_batchnorm_ranges(source, prepared, ranges) -> tuple[dict, dict[str, str]]:
    """`ranges` with every BN-derived range put in and the class scores taken out, and the
    source of each range kept."""

    derived = batchnorm_ranges(source, prepared)
    merged = dict(ranges)
    merged.update(derived)
    for name in score_tensors(prepared) - set(derived):
        merged.pop(name, None)
    return merged, {name: BATCHNORM if name in derived else SYNTHETIC for name in merged}


_RANKING_OPS = ("Softmax", "LogSoftmax", "ArgMax", "TopK")
_RESHAPING_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")


def score_tensors(model) -> set[str]:
    """The graph outputs and the inputs of Softmax/ArgMax/TopK, traced back through reshapes.

    Synthetic inputs do not make a classifier confident: the scores they produce stay a few
    times smaller than real ones (ResNet-8: largest logit -0.6 instead of 13), and a range cut
    there ties the top classes. Without a range, the layer that writes them stays in float."""
    producer = {out: node for node in model.graph.node for out in node.output}
    pending = [o.name for o in model.graph.output]
    pending += [n.input[0] for n in model.graph.node if n.op_type in _RANKING_OPS and n.input]
    found: set[str] = set()
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        node = producer.get(name)
        if node is not None and node.op_type in _RESHAPING_OPS:
            pending.append(node.input[0])
    return found


def range_sources(plan, sources: dict[str, str]) -> dict[str, str]:
    """Where the range of each quantized activation came from (a folded Relu's range stands in
    for its producer's; fixed ranges such as Softmax's [0, 1] come from neither)."""
    out = {}
    for tensor in plan.activations:
        origin = sources.get(plan.range_source.get(tensor, tensor))
        out[tensor] = origin or "fixed by the op, or inherited through data movement"
    return out
