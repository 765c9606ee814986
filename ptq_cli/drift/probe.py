"""Drift of candidate models on a fixed set of samples, against a reference run once.

    probe = DriftProbe(fp32_model, feeds, description="32 of 100 calibration samples")
    drift = probe.measure(candidate_model, budget.judge)  # Drift: per-output figures + verdicts

The reference's outputs are computed once and kept, so that a search trying many candidates
pays only for running the candidates. Figures are those of `ptq compare` (drift/outputs.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ptq_cli.drift.kinds import OutputKind, output_kinds
from ptq_cli.drift.outputs import OutputState, PerfectBatch
from ptq_cli.drift.report import OutputReport, ThresholdResult
from ptq_cli.drift.runtime import make_session, run
from ptq_cli.drift.sensitivity import regroup

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

    def to_dict(self) -> dict:
        return {
            "samples": self.samples, "data": self.description,
            "outputs": [_output_summary(o) for o in self.outputs],
            "budget": [{**r.to_dict(), "value": _round(r.value)} for r in self.results], "passed": self.passed,
        }


class DriftProbe:
    """The reference's outputs on fixed samples; `measure(candidate)` runs only the candidate."""

    def __init__(self, reference: onnx.ModelProto, feeds: Sequence[dict[str, np.ndarray]], *,
                 description: str, batch_free: bool = True, labels: Sequence[tuple | None] | None = None) -> None:
        """`labels`: one tuple of labels (one per row) or None per feed, for top-1 accuracy."""
        self.kinds = output_kinds(reference)
        self.pairs = [(o.name, o.name) for o in reference.graph.output]
        labelled = labels is not None and any(label is not None for label in labels)
        # Labels follow their feeds, which are then run as given rather than regrouped.
        self.chunks = regroup(feeds, math.inf) if batch_free and not labelled else list(feeds)
        self.labels = list(labels) if labelled else [None] * len(self.chunks)
        self.samples = sum(_rows(c) for c in self.chunks)
        self.description = description
        session = make_session(reference, "reference")
        self.expected = [run(session, chunk, "reference", [r for r, _ in self.pairs]) for chunk in self.chunks]
        self._perfect_batches: list[dict[str, PerfectBatch | None]] | None = None

    def measure(self, candidate: onnx.ModelProto | bytes, judge: Judge | None = None, *,
                stop_early: bool = False) -> Drift:
        """The candidate's drift, judged by `judge` (per-output figures in, threshold results out;
        e.g. `Budget.judge`, or `lambda outputs: evaluate(thresholds, outputs)`)."""
        return self.measure_session(make_session(candidate, "candidate"), judge, stop_early=stop_early)

    def measure_session(self, session, judge: Judge | None = None, *, stop_early: bool = False) -> Drift:
        """`measure` on a session already made (its creation timed apart).

        stop_early: stop as soon as the candidate can no longer pass `judge`, that is when even a
        candidate equal to the reference on every sample not yet run would miss a limit. Every
        limit (SQNR, cosine, agreement of scores, steps, sequences or integers, top-1 disagreement)
        can only rise when a sample is added that agrees exactly, so this stop never turns a pass
        into a fail nor a fail into a pass: its error rates are zero, and a candidate that passes
        always runs every sample. With labels (top-1 accuracy: a candidate may beat the reference
        on a sample) it never stops."""
        states = [OutputState(r, c, self.kinds.get(r, OutputKind.TENSOR), histogram=False) for r, c in self.pairs]
        rest = self._perfect() if stop_early and judge is not None and not any(self.labels) else None
        measured = 0
        for index, (chunk, expected, labels) in enumerate(zip(self.chunks, self.expected, self.labels)):
            got = run(session, chunk, "candidate", [c for _, c in self.pairs])
            for state in states:
                state.update(expected[state.name], got[state.cand_name], _rows(chunk), labels)
            measured += _rows(chunk)
            if rest is None or index + 1 == len(self.chunks):
                continue
            best = tuple(s.best_case([batch[s.name] for batch in rest[index + 1:]]).report() for s in states)
            verdicts = judge(best)
            if not all(r.passed for r in verdicts):
                outputs = tuple(state.report() for state in states)
                return Drift(measured, self.description, outputs, verdicts, complete=False)
        outputs = tuple(state.report() for state in states)
        return Drift(self.samples, self.description, outputs, judge(outputs) if judge is not None else ())

    def _perfect(self) -> list[dict[str, PerfectBatch | None]]:
        """Per chunk, what each output would add with a candidate equal to the reference."""
        if self._perfect_batches is None:
            self._perfect_batches = [
                {name: PerfectBatch.of(self.kinds.get(name, OutputKind.TENSOR), expected[name], _rows(chunk))
                 for name, _ in self.pairs}
                for chunk, expected in zip(self.chunks, self.expected)]
        return self._perfect_batches


def _rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1


def _shortfall(result: ThresholdResult) -> float:
    """How far a missed threshold is from its limit, in comparable units (fractions; dB / 10)."""
    if result.value is None or not math.isfinite(result.value):
        return 10.0
    scale = {"min_sqnr": 10.0, "max_top1_drop": 100.0}.get(result.name, 1.0)
    return abs(result.value - result.limit) / scale


def _round(value: float | None) -> float | None:
    # Few digits: the figures go into the output's metadata, which must not wobble in the last bit.
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


def _output_summary(out: OutputReport) -> dict:
    return {"name": out.name, "kind": out.kind.value, "sqnr_db": _round(out.sqnr_db),
            "cosine_mean": _round(out.cosine_mean), "cosine_min": _round(out.cosine_min),
            "top1_agreement": _round(out.top1_agreement), "sequence_agreement": _round(out.sequence_agreement),
            "nonfinite_candidate": out.nonfinite_candidate}
