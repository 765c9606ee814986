"""Where the seconds of one `ptq quantize` run went: the phases in the order they ran, and each
trial of the drift budget's search split into build, session creation and evaluation.

`--json` carries the same record ("seconds"), so a user can see what a run pays for without a
profiler; bench/quantize_time.py reads it beside onnxruntime's time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class TrialTime:
    """One candidate measured against the budget."""

    build: float      # quantize_model on the prepared graph
    session: float    # onnxruntime session creation (its graph optimizations)
    evaluate: float   # running the evaluation samples and the figures
    samples: int      # samples run (fewer than `of` when the candidate could no longer pass)
    of: int
    passed: bool

    def to_dict(self) -> dict:
        return {"build": round(self.build, 3), "session": round(self.session, 3),
                "evaluate": round(self.evaluate, 3), "samples": self.samples, "of": self.of,
                "passed": self.passed}


class Stopwatch:
    """Seconds per named phase, accumulated (a phase may run more than once)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.started = clock()
        self.phases: dict[str, float] = {}
        self.trials: list[TrialTime] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + self.clock() - start

    def to_dict(self) -> dict:
        trials = [t.to_dict() for t in self.trials]
        return {"total": round(self.clock() - self.started, 3),
                "phases": {name: round(seconds, 3) for name, seconds in self.phases.items()},
                "trials": trials}
