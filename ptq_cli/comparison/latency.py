"""Inference latency of the reference and the candidate on the same inputs.

Both sessions are warmed up, then timed interleaved (A B, B A, A B, ...), so that a change in machine
load or CPU frequency during the measurement hits both models alike. The order alternates so that
neither model always runs on caches warmed by the other. We report the median and the 10th/90th
percentiles (the spread) of single `session.run` calls, and the speed-up reference / candidate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ptq_cli.comparison.report import LatencyReport, TimingStats
from ptq_cli.errors import UsageError


@dataclass(frozen=True)
class LatencySettings:
    warmup: int = 5
    runs: int = 50
    max_inputs: int = 8   # distinct input batches cycled through while timing

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.runs < 1 or self.max_inputs < 1:
            raise UsageError("latency settings need warmup >= 0, runs >= 1 and max_inputs >= 1")


def measure_latency(reference, candidate, inputs: list[dict[str, np.ndarray]],
                    settings: LatencySettings = LatencySettings()) -> LatencyReport:
    """Time `reference.run` and `candidate.run` (onnxruntime sessions) on `inputs`."""
    if not inputs:
        raise UsageError("latency needs at least one input sample; the data set is empty")
    for i in range(settings.warmup):
        feeds = inputs[i % len(inputs)]
        reference.run(None, feeds)
        candidate.run(None, feeds)
    ref_times, cand_times = [], []
    for i in range(settings.runs):
        feeds = inputs[i % len(inputs)]
        pair = [(reference, ref_times), (candidate, cand_times)]
        for session, times in (pair if i % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
    return LatencyReport(warmup=settings.warmup, runs=settings.runs, inputs=len(inputs),
                         reference=_stats(ref_times), candidate=_stats(cand_times))


def _stats(seconds: list[float]) -> TimingStats:
    ms = np.asarray(seconds) * 1000.0
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return TimingStats(median_ms=float(median), p10_ms=float(p10), p90_ms=float(p90),
                       min_ms=float(ms.min()), max_ms=float(ms.max()))
