"""Drift measurement, below both `ptq compare` and `ptq quantize`'s budget.

metrics (streaming accumulators) · kinds (what an output is: scores, step scores, embedding,
integer) · outputs (one output's figures by kind) · runtime (onnxruntime sessions) · layers
(graph matching of QDQ tensors) · switches/sensitivity (each quantized node measured alone)
· thresholds (pass/fail limits: compare's thresholds, quantize's budget) · report (typed figures).
"""

from ptq_cli.drift.kinds import OutputKind, output_kinds
from ptq_cli.drift.thresholds import Thresholds

__all__ = ["OutputKind", "output_kinds", "Thresholds"]
