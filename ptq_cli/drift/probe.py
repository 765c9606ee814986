"""Drift of candidate models on a fixed set of samples, against a reference run once.

    probe = DriftProbe(fp32_model, feeds, description="32 of 100 calibration samples")
    drift = probe.measure(candidate_model, budget.judge)  # Drift: per-output figures + verdicts

The reference's outputs are computed once and kept, so that a search trying many candidates
pays only for running the candidates. Figures are those of `ptq compare` (drift/outputs.py).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from tqdm import tqdm

from ptq_cli.drift.kinds import OutputKind, output_kinds
from ptq_cli.drift.outputs import OutputState, PerfectBatch
from ptq_cli.drift.record import DriftRecord, OutputFigures, Verdict
from ptq_cli.drift.report import OutputReport, ThresholdResult
from ptq_cli.drift.runners import OnEngine, Sessions
from ptq_cli.drift.sensitivity import regroup

if TYPE_CHECKING:
    from ptq_cli.engine import Engine

Judge = Callable[[tuple[OutputReport, ...]], tuple[ThresholdResult, ...]]


@dataclass(frozen=True)
class Drift:
    """How far one candidate drifted on the probe's samples, and the verdict of each threshold."""

    samples: int
    description: str
    outputs: tuple[OutputReport, ...]
    results: tuple[ThresholdResult, ...] = ()
    # False when the measurement stopped once the candidate could no longer pass: `outputs` are
    # the figures of the samples run, `results` the verdicts of the best the candidate could
    # still have reached (DriftProbe.measure).
    complete: bool = True

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(f"{r.name}: {r.detail}" for r in self.results if not r.passed)

    def score(self) -> tuple[int, float]:
        """Orders drifts, best last: fewer missed thresholds, then the smallest shortfall."""
        missed = [r for r in self.results if not r.passed]
        return (-len(missed), -sum(_shortfall(r) for r in missed))

    def record(self, thresholds: Mapping, fallback: tuple[str, ...] = (), run_time: tuple[str, ...] = (),
               met: bool = True) -> DriftRecord:
        """What quantize records of this drift, with the budget it was held to."""
        return DriftRecord(self.samples, self.description, tuple(OutputFigures.of(o) for o in self.outputs),
                           tuple(Verdict.of(r) for r in self.results), self.passed, thresholds, fallback, run_time, met)


class DriftProbe:
    """The reference's outputs on fixed samples; `measure(candidate)` runs only the candidate."""

    def __init__(self, reference: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], *,
                 description: str, batch_free: bool = True, labels: Sequence[tuple | None] | None = None,
                 workers: int = 1, engine: "Engine | None" = None, progress: bool = False) -> None:
        """`labels`: one tuple of labels (one per row) or None per feed, for top-1 accuracy.
        `workers`: sessions that run samples at once in this process, one onnxruntime thread each;
        `engine` (a cluster: --engine dask) runs them on its workers instead. The figures are the
        same either way (runners.py). `progress`: a bar (stderr) while the reference runs."""
        self.kinds = output_kinds(reference)
        self.pairs = [(o.name, o.name) for o in reference.graph.output]
        labelled = labels is not None and any(label is not None for label in labels)
        # Labels follow their feeds, which are then run as given rather than regrouped.
        self.chunks = regroup(feeds, math.inf) if batch_free and not labelled else list(feeds)
        self.labels = list(labels) if labelled else [None] * len(self.chunks)
        self.samples = sum(_rows(c) for c in self.chunks)
        self.description = description
        self.workers, self.engine = workers, engine if engine is not None and engine.distributed else None
        names = [r for r, _ in self.pairs]
        with contextlib.closing(self.load(reference, "reference").run(self.chunks, range(len(self.chunks)),
                                                                      names)) as outputs, \
                tqdm(total=self.samples, unit="sample", desc="drift: FP32 reference", file=sys.stderr,
                     disable=not progress, leave=False) as bar:
            self.expected = []
            for index, got in outputs:
                self.expected.append(got)
                bar.update(_rows(self.chunks[index]))
        self._perfect_batches: list[dict[str, PerfectBatch | None]] | None = None
        self._order: list[int] = list(range(len(self.chunks)))  # the order early-stopped runs take
        self._hardness: dict[int, tuple[int, float]] = {}  # per chunk, from its last run: see _hardness

    def load(self, model: onnx.ModelProto | bytes, what: str = "candidate") -> Sessions | OnEngine:
        """Where `model` runs: its sessions here, or the engine's workers (which load it there)."""
        return OnEngine(self.engine, model, what) if self.engine is not None else Sessions(model, what, self.workers)

    def measure(self, candidate: onnx.ModelProto | bytes, judge: Judge | None = None, *,
                stop_early: bool = False) -> Drift:
        """The candidate's drift, judged by `judge` (per-output figures in, threshold results out;
        e.g. `Budget.judge`, or `lambda outputs: evaluate(thresholds, outputs)`)."""
        return self.measure_loaded(self.load(candidate), judge, stop_early=stop_early)

    def measure_loaded(self, loaded: Sessions | OnEngine, judge: Judge | None = None, *,
                       stop_early: bool = False, progress: str | None = None) -> Drift:
        """`measure` on a candidate already loaded (`load`: its sessions' creation timed apart).

        stop_early: stop as soon as the candidate can no longer pass `judge`, that is when even a
        candidate equal to the reference on every sample not yet run would miss a limit. Every
        limit (SQNR, cosine, agreement of scores, steps, sequences or integers, top-1 disagreement)
        can only rise when a sample is added that agrees exactly, so this stop never turns a pass
        into a fail nor a fail into a pass: its error rates are zero, and a candidate that passes
        always runs every sample. With labels (top-1 accuracy: a candidate may beat the reference
        on a sample) it never stops.

        So that a failing candidate fails after few samples, the samples that disagreed most in
        the previous measurements run first; the figures are still summed in the samples' own
        order (one state per sample, merged in order: 0.0 + x is x), so they depend neither on
        that order nor on where the samples ran. `progress`: a bar (stderr) with this label."""
        rest = self._perfect() if stop_early and judge is not None and not any(self.labels) else None
        order = list(self._order if rest is not None else range(len(self.chunks)))
        done: dict[int, list[OutputState]] = {}
        so_far = self._states()
        with contextlib.closing(loaded.run(self.chunks, order, [c for _, c in self.pairs])) as outputs, \
                tqdm(total=self.samples, unit="sample", desc=progress, file=sys.stderr, disable=progress is None,
                     leave=False) as bar:
            for step, (index, got) in enumerate(outputs):
                chunk, expected = self.chunks[index], self.expected[index]
                bar.update(_rows(chunk))
                done[index] = self._states()
                for state, whole in zip(done[index], so_far):
                    state.update(expected[state.name], got[state.cand_name], _rows(chunk), self.labels[index])
                    whole.merge(state)
                self._hardness[index] = _hardness(done[index])
                if rest is None or step + 1 == len(self.chunks):
                    continue
                left = [rest[i] for i in order[step + 1:]]
                verdicts = judge(tuple(s.best_case([batch[s.name] for batch in left]).report() for s in so_far))
                if not all(r.passed for r in verdicts):
                    self._reorder()
                    measured = sum(_rows(self.chunks[i]) for i in done)
                    figures = tuple(state.report() for state in _merged(self._states(), done))
                    return Drift(measured, self.description, figures, verdicts, complete=False)
        if rest is not None:
            self._reorder()
        figures = tuple(state.report() for state in _merged(self._states(), done))
        return Drift(self.samples, self.description, figures, judge(figures) if judge is not None else ())

    def _states(self) -> list[OutputState]:
        return [OutputState(r, c, self.kinds.get(r, OutputKind.TENSOR), histogram=False) for r, c in self.pairs]

    def _reorder(self) -> None:
        """Samples that disagreed first, then those never run, then the rest, worst first."""
        self._order = sorted(range(len(self.chunks)), key=lambda i: (*self._hardness.get(i, (0, -math.inf)), i))

    def _perfect(self) -> list[dict[str, PerfectBatch | None]]:
        """Per chunk, what each output would add with a candidate equal to the reference."""
        if self._perfect_batches is None:
            self._perfect_batches = [
                {name: PerfectBatch.of(self.kinds.get(name, OutputKind.TENSOR), expected[name], _rows(chunk))
                 for name, _ in self.pairs}
                for chunk, expected in zip(self.chunks, self.expected)]
        return self._perfect_batches


def _merged(states: list[OutputState], done: dict[int, list[OutputState]]) -> list[OutputState]:
    """`states` with every chunk's figures folded in, in chunk order."""
    for index in sorted(done):
        for state, part in zip(states, done[index]):
            state.merge(part)
    return states


def _hardness(states: list[OutputState]) -> tuple[int, float]:
    """How badly a candidate did on one chunk, as a sort key (worst first): the rows, steps or
    integers that disagree with the reference, then the noise-to-signal ratio of its outputs."""
    disagree, noise = 0, 0.0
    for state in states:
        if state.classes is not None:
            disagree += state.classes.samples - state.classes.agree1
        disagree += state.rows - state.equal
        errors = state.errors
        disagree += errors.nonfinite_cand
        if errors.sum_sq_ref > 0:
            noise += errors.sum_sq_err / errors.sum_sq_ref
    return -disagree, -noise


def _rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _shortfall(result: ThresholdResult) -> float:
    """How far a missed threshold is from its limit, in comparable units (fractions; dB / 10)."""
    if result.value is None or not math.isfinite(result.value):
        return 10.0
    scale = {"min_sqnr": 10.0, "max_top1_drop": 100.0}.get(result.name, 1.0)
    return abs(result.value - result.limit) / scale

