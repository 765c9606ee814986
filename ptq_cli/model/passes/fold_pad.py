"""A zero Pad before a Conv becomes the Conv's own padding: onnxruntime has no integer Pad
fusion, so a Pad left in the graph runs in float between a Dequantize and a Quantize."""

from __future__ import annotations

import onnx
from onnx import helper

from ptq_cli.model.graph import GraphIndex, attribute, remove_nodes
from ptq_cli.model.passes.base import Pass, PassResult


class FoldPad(Pass):
    name = "fold-pad"

    def __call__(self, model: onnx.ModelProto) -> PassResult:
        graph = model.graph
        index = GraphIndex(graph)
        removed: set[int] = set()
        for pad in graph.node:
            conv = index.single_consumer(pad.output[0]) if pad.op_type == "Pad" else None
            if conv is None or conv.op_type != "Conv" or conv.input[0] != pad.output[0]:
                continue
            pads = spatial_zero_pads(pad, index)
            if pads is None or attribute(conv, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                continue
            old = attribute(conv, "pads", [0] * len(pads))
            if len(old) != len(pads):
                continue
            merged = [a + b for a, b in zip(old, pads)]
            kept = [a for a in conv.attribute if a.name != "pads"]
            del conv.attribute[:]
            conv.attribute.extend(kept + [helper.make_attribute("pads", merged)])
            conv.input[0] = pad.input[0]
            removed.add(id(pad))
        remove_nodes(graph, removed)
        return PassResult(model, bool(removed), (f"folded {len(removed)} zero Pad into Conv padding",)
                          if removed else ())


def spatial_zero_pads(pad: onnx.NodeProto, index: GraphIndex) -> list[int] | None:
    """The Pad's spatial pads as a Conv `pads` list, or None unless it is a zero pad of N,C-free dims."""
    if attribute(pad, "mode", b"constant") not in (b"constant", "constant"):
        return None
    if len(pad.input) > 1:  # opset >= 11: pads (and the value) are inputs
        pads = index.constant(pad.input[1])
        value = index.constant(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else None
        if pads is None or (len(pad.input) > 2 and pad.input[2] and value is None) or \
                (len(pad.input) > 3 and pad.input[3]):
            return None
        pads, value = [int(p) for p in pads], 0.0 if value is None else float(value.reshape(-1)[0])
    else:
        pads, value = list(attribute(pad, "pads", [])), float(attribute(pad, "value", 0.0))
    rank = len(pads) // 2
    if value != 0.0 or rank < 3 or any(p < 0 for p in pads):
        return None
    begins, ends = pads[:rank], pads[rank:]
    if begins[:2] != [0, 0] or ends[:2] != [0, 0]:
        return None  # padding of the batch or channel dims is not a Conv padding
    return begins[2:] + ends[2:]
