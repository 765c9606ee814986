"""`ptq compare`: accuracy drift between a reference model and a candidate (usually its INT8 version).

metrics (streaming accumulators) · layers (graph matching of QDQ tensors) · engine (the run loop)
· switches/sensitivity (each quantized node measured alone, for --per-layer) · latency · thresholds
· report (typed result, JSON schema) · render/junit/html (output formats).
"""

from ptq_cli.compare.api import compare, compare_batches
from ptq_cli.compare.latency import LatencySettings
from ptq_cli.compare.report import CompareReport
from ptq_cli.compare.thresholds import Thresholds

__all__ = ["compare", "compare_batches", "CompareReport", "Thresholds", "LatencySettings"]
