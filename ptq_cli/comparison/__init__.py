"""`ptq compare`: accuracy drift between a reference model and a candidate (usually its INT8 version).

engine (the run loop) · latency · report (typed result, JSON schema) · render/junit/html (output formats).
The measurement itself (metrics, output kinds, layer matching, isolated sensitivity, thresholds)
lives in ptq_cli.drift, which quantize's drift budget uses too.
"""

from ptq_cli.comparison.api import compare, compare_batches
from ptq_cli.comparison.latency import LatencySettings
from ptq_cli.comparison.report import CompareReport
from ptq_cli.drift.thresholds import Thresholds

__all__ = ["compare", "compare_batches", "CompareReport", "Thresholds", "LatencySettings"]
