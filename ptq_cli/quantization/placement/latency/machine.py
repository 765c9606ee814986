"""The machine ptq runs on, as seen through onnxruntime: end-to-end times and per-node profiles.

`Machine` is a protocol so that the search can be tested with a deterministic cost table; the
real one (`OnnxruntimeMachine`) times CPU sessions the way they are deployed (batch as given,
`threads` intra-op threads) and never leaves profiler files behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ptq_cli.model.sessions import SessionSpec, open_session

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Timing:
    """One model's time: the median single run of each interleaved round (seconds)."""

    rounds: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.rounds)) * 1e3

    @property
    def spread_ms(self) -> tuple[float, float]:
        """The 25th and 75th percentiles over rounds."""
        q1, q3 = np.percentile(self.rounds, [25, 75])
        return float(q1) * 1e3, float(q3) * 1e3

    def speedup_over(self, other: "Timing") -> float:
        """other / self, as the median over rounds of the per-round ratio (drift hits both alike)."""
        n = min(len(self.rounds), len(other.rounds))
        return float(np.median(np.asarray(other.rounds[:n]) / np.asarray(self.rounds[:n])))


class Machine(Protocol):
    def time(self, models: Sequence[bytes], feeds: Sequence[Feeds]) -> list[Timing]:
        """Time every model on the same feeds, interleaved; one Timing per model, in order."""
        ...

    def profile(self, model: bytes, feeds: Sequence[Feeds]) -> dict[str, tuple[str, float]]:
        """Per node of onnxruntime's optimized graph: (op type, median µs of its kernel)."""
        ...


@dataclass(frozen=True)
class OnnxruntimeMachine:
    """onnxruntime's CPU provider on this machine."""

    threads: int = 0  # intra-op threads; 0 = onnxruntime's default (one per physical core)
    seconds: float = 3.0  # timed seconds for the whole set of models
    min_rounds: int = 10
    block_seconds: float = 0.02  # each round runs each model for about this long
    profile_runs: int = 20

    def _session(self, model: bytes, profile_prefix: str | None = None):
        return open_session(model, SessionSpec(threads=self.threads, profile_prefix=profile_prefix))

    def time(self, models: Sequence[bytes], feeds: Sequence[Feeds]) -> list[Timing]:
        sessions = [self._session(m) for m in models]
        sizes = [self._block_size(s, feeds) for s in sessions]  # also the warm-up
        rounds: list[list[float]] = [[] for _ in sessions]
        deadline, round_no = time.perf_counter() + self.seconds, 0
        while time.perf_counter() < deadline or round_no < self.min_rounds:
            for k in np.roll(np.arange(len(sessions)), round_no):  # no model always goes first
                # Two untimed runs let the previous session's spinning threads go idle.
                first = round_no * sizes[k]  # every round goes on through the feeds: all of them get timed
                for r in range(2):
                    sessions[k].run(None, feeds[(first + r) % len(feeds)])
                block = []
                for r in range(sizes[k]):
                    start = time.perf_counter()
                    sessions[k].run(None, feeds[(first + r) % len(feeds)])
                    block.append(time.perf_counter() - start)
                rounds[k].append(float(np.median(block)))
            round_no += 1
        return [Timing(tuple(r)) for r in rounds]

    def _block_size(self, session, feeds: Sequence[Feeds]) -> int:
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < 0.1 or runs < 5:
            session.run(None, feeds[runs % len(feeds)])
            runs += 1
        per_run = (time.perf_counter() - start) / runs
        return max(3, int(self.block_seconds / per_run))

    def profile(self, model: bytes, feeds: Sequence[Feeds]) -> dict[str, tuple[str, float]]:
        with tempfile.TemporaryDirectory(prefix="ptq-profile-") as folder:
            session = self._session(model, os.path.join(folder, "profile"))
            for r in range(3 + self.profile_runs):
                session.run(None, feeds[r % len(feeds)])
            with open(session.end_profiling()) as f:
                events = json.load(f)
        durations: dict[str, list[float]] = defaultdict(list)
        ops: dict[str, str] = {}
        for event in events:
            name = event.get("name", "")
            if event.get("cat") == "Node" and name.endswith("_kernel_time"):
                node = name[: -len("_kernel_time")]
                durations[node].append(float(event["dur"]))
                ops[node] = event.get("args", {}).get("op_name", "")
        # The first runs include warm-up allocations; the median over all runs ignores them.
        return {node: (ops[node], float(np.median(d))) for node, d in durations.items()}
