"""The drift budget of `ptq quantize`: which samples measure the drift, and the limits it must meet.

Every quantization with data measures its own drift: the FP32 model and the candidate run on
the same samples (drift/probe.py) and are judged with `ptq compare`'s figures and thresholds.
The samples are `--eval-data` when given, else up to EVAL_SAMPLES of the calibration samples,
evenly spaced over the sorted files (files 0, n/k, 2n/k, ...): a deterministic choice. They are
not withheld from calibration (that would change every default output), so without
--eval-data the drift is measured in-sample and says so.

The default budget is one that every healthy quantization of the CNNs of ../shared/realdata
meets with a margin (bench/budget.py measures them; the worst, MobileNetV1-0.25 per channel:
mean cosine 0.987, top-1 agreement 0.92 on 100 samples), so their outputs never change, while
a collapsed model (MobileNetV1 per tensor: cosine 0.17, agreement 0.09) misses it by far.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ptq_cli.data import iter_batches, open_dataset
from ptq_cli.drift.kinds import OutputKind
from ptq_cli.drift.probe import DriftProbe
from ptq_cli.drift.record import DriftRecord
from ptq_cli.drift.report import OutputReport, ThresholdResult
from ptq_cli.drift.thresholds import Thresholds, evaluate
from ptq_cli.errors import PtqError, UsageError
from ptq_cli.model.io import input_specs
from ptq_cli.model.sessions import parallel_sessions
from ptq_cli.quantization.placement.fallback import evaluate as evaluate_candidate
from ptq_cli.quantization.placement.fallback import search
from ptq_cli.quantization.timings import Stopwatch
from ptq_cli.recipe import Recipe

if TYPE_CHECKING:
    from ptq_cli.quantization.placement.fallback import Trial

# A share of the samples (top-1 or sequence agreement) moves by 1/n when one sample flips: at 32
# samples one OCR line is 3 points, and the fallback stopped at whichever prefix the noise let
# through (PP-OCRv4: 29 of 32 lines read as FP32, 83-87 % of held-out lines). Each trial takes
# ~3x as long as with 32; the CNNs' default verdicts are the same (bench/budget.py).
EVAL_SAMPLES = 100
DEFAULT_THRESHOLDS = Thresholds(min_cosine=0.97, min_agreement=0.9)
# Stricter defaults for the kinds no CNN classifier has (their outputs cannot change): a sentence
# embedding is only useful while its cosine to FP32 is near 1, and a line of text decodes
# differently as soon as one of its ~50-100 steps flips. The evaluation samples are calibration
# samples, which a quantized model reads better than unseen ones, and the search stops at the
# first candidate that passes, so the limits hold with a margin: 95 % of the sequences decoded as
# FP32's, and 99.6 % of the steps (the finer figure: thousands of steps, not 100 lines).
# PP-OCRv4, 100 calibration lines -> 300 held-out lines read as FP32, over 19 candidates: every
# one with >= 99.6 % of steps agreeing read 94-99 % of held-out lines as FP32; at 99.1-99.6 %,
# 86-94 % even with 95-99 of the 100 lines decoded as FP32; at 99 % (the old limit), 82-87 %.
DEFAULT_BY_KIND = ((OutputKind.EMBEDDING, Thresholds(min_cosine=0.99)),
                   (OutputKind.STEP_SCORES, Thresholds(min_agreement=0.996, min_sequence_agreement=0.95)))
# No time limit by default: a limit in seconds makes the written file depend on the machine and
# its load. The search is bounded by its structure instead (one ranking pass, O(log n) prefix
# trials, at most PRUNE_AT_MOST give-backs); --budget-time caps it for who prefers time to bytes.
DEFAULT_SECONDS = math.inf
# The default bound on the search, counted in candidates (the first one included) so that a slow
# or busy machine writes the same file as a fast one. The shared models need at most 20
# (PP-OCRv4: 20, MiniLM-L3: 1, the CNNs: 1); each candidate past the first costs one build and one
# run of at most EVAL_SAMPLES samples, less when it fails (DriftProbe.measure stops it early).
DEFAULT_TRIALS = 24


@dataclass(frozen=True)
class Budget:
    """The drift a written output may show, and how long the fallback search may try to reach it.

    `best_effort`: when the limits cannot be met, write the best candidate found (and say so)
    instead of failing."""

    thresholds: Thresholds = DEFAULT_THRESHOLDS
    by_kind: tuple[tuple[OutputKind, Thresholds], ...] = DEFAULT_BY_KIND  # more limits for some kinds
    seconds: float = DEFAULT_SECONDS
    trials: int = DEFAULT_TRIALS  # candidates the search may measure, the first included
    workers: int = 0  # onnxruntime sessions that run a candidate's samples at once (0: one per core)
    best_effort: bool = False
    fallback: bool = True  # return the most sensitive nodes to float until the limits hold
    # A limit no output can be judged by (top-1 agreement of a model without scores) is left out
    # rather than failed: right for the default, which must suit every model; limits the user
    # gives are held strictly.
    where_measurable: bool = True

    def __post_init__(self) -> None:
        if not self.seconds > 0:
            raise UsageError(f"the budget's time limit must be positive, got {self.seconds} s")
        if self.trials < 1 or self.workers < 0:
            raise UsageError(f"the search needs at least one trial and no negative worker count, got "
                             f"{self.trials} trial(s) and {self.workers} worker(s)")

    def sessions_for(self, model: onnx.ModelProto) -> int:
        """How many sessions run a candidate's samples at once: `workers`, else one per core
        (model/sessions.parallel_sessions). The figures are the same for any number."""
        return self.workers or parallel_sessions(model)

    def judge(self, outputs: tuple[OutputReport, ...]) -> tuple[ThresholdResult, ...]:
        """The verdict of every limit on these per-output figures."""
        results = list(evaluate(self.thresholds, outputs, where_measurable=self.where_measurable))
        for kind, thresholds in self.by_kind:
            chosen = tuple(o for o in outputs if o.kind is kind)
            if chosen:
                results += evaluate(thresholds, chosen, where_measurable=self.where_measurable)
        return tuple(results)

    def describe(self) -> str:
        extra = [f"{kind.value} outputs: {t.describe()}" for kind, t in self.by_kind]
        return "; ".join([self.thresholds.describe()] + extra)

    def to_dict(self) -> dict:
        return {**self.thresholds.to_dict(), "by_kind": {kind.value: t.to_dict() for kind, t in self.by_kind}}


# No limits, no search: the drift is still measured and reported.
MEASURE_ONLY = Budget(Thresholds(), by_kind=(), fallback=False)


class DriftBudgetError(PtqError):
    """The drift budget could not be met; nothing was written."""


@dataclass(frozen=True)
class EvalSamples:
    feeds: tuple[dict[str, np.ndarray], ...]
    description: str
    batch_free: bool
    labels: tuple[tuple[int, ...] | None, ...] = ()


def eval_samples(model: onnx.ModelProto, data, eval_data, image, labels=None,
                 limit: int = EVAL_SAMPLES) -> EvalSamples | None:
    """The samples the drift is measured on, or None when there is no data at all."""

    source = eval_data if eval_data is not None else data
    if source is None:
        return None
    specs = input_specs(model)
    if isinstance(source, (str, os.PathLike)):
        dataset = open_dataset(source, specs, image=image, labels=labels)
    else:
        dataset = source
    total = len(dataset)
    count = min(limit, total)
    if eval_data is None:
        picked = [i * total // count for i in range(count)] if count else []
        dataset = replace(dataset, entries=tuple(dataset.entries[i] for i in picked))
        spacing = f"files {', '.join(map(str, picked[:3]))}, ... in sorted order" if count < total else "all"
        what = (f"{count} of the {total} calibration samples ({spacing}; also calibrated on: "
                "pass --eval-data DIR for held-out data)")
    else:
        dataset = replace(dataset, entries=dataset.entries[:count])
        what = f"the first {count} of {total} samples of {dataset.description}"
    batches = list(iter_batches(dataset, specs, batch_size=1))
    batch_free = all(len(s.shape) > 0 and s.shape[0] is None for s in specs)
    return EvalSamples(tuple(b.feeds for b in batches), what, batch_free, tuple(b.labels for b in batches))


@dataclass(frozen=True)
class BudgetOutcome:
    """The candidate to write and what its drift measurement found."""

    trial: "Trial"
    met: bool               # the thresholds hold (always True without thresholds)
    searched: bool          # the fallback search ran
    trials: int = 0         # candidates the search measured beyond the first
    seconds: float = 0.0

    def record(self, budget: Budget) -> DriftRecord:
        """The drift of the candidate written, as the summary, --json and the metadata show it."""
        return self.trial.drift.record(budget.to_dict(), tuple(self.trial.fallback), tuple(self.trial.run_time),
                                       self.met)


def hold_budget(source: onnx.ModelProto, build, recipe: Recipe, samples: EvalSamples, budget: Budget,
                prepared: Callable[[], onnx.ModelProto], *, progress: bool,
                stopwatch: Stopwatch | None = None, engine=None) -> BudgetOutcome:
    """Measure `build(recipe)`'s drift on `samples`; fall back until the budget holds if it does not.
    Raises DriftBudgetError when it cannot be met and best effort was not asked for.

    A candidate that can no longer pass stops running samples (DriftProbe.measure: the same
    verdicts), except under best effort, which may write the best failing candidate and so
    compares full figures, and without the fallback, which reports the first candidate's.
    `engine` (a cluster) runs the reference and the candidates on its workers."""

    stopwatch = stopwatch or Stopwatch()
    stop_early = budget.fallback and not budget.best_effort
    workers = budget.sessions_for(source)
    with stopwatch.phase("reference"):
        probe = DriftProbe(source, samples.feeds, description=samples.description, batch_free=samples.batch_free,
                           labels=samples.labels, workers=workers, engine=engine, progress=progress)
    with stopwatch.phase("first candidate"):
        first = evaluate_candidate(build, probe, budget.judge, recipe, stop_early=stop_early,
                         progress="drift: INT8 candidate" if progress else None)
    stopwatch.trials.append(first.seconds)
    if first.drift.passed or not budget.fallback:
        return BudgetOutcome(first, first.drift.passed, False)
    found = search(build, probe, budget.judge, first, prepared(), seconds=budget.seconds, max_trials=budget.trials,
                   progress=progress, stop_early=stop_early, workers=workers, stopwatch=stopwatch)
    # A candidate with every node in float meets any budget (its SQNR is infinite) but is no answer.
    passed = found.passed and found.trial.plan.quantizes_anything
    outcome = BudgetOutcome(found.trial, passed, True, found.trials - 1, found.seconds)
    if not passed and not budget.best_effort:
        reached = "; ".join(found.trial.drift.failures) or "the budget with any node still quantized"
        raise DriftBudgetError(
            f"the drift budget ({budget.describe()}) cannot be met: the best of {found.trials} "
            f"candidates in {found.seconds:.0f} s ({len(found.trial.fallback)} node(s) in float, "
            f"{len(found.trial.run_time)} at run time) still misses "
            f"{reached}; nothing was written. Loosen the budget (--min-cosine, --min-agreement, ...), "
            + ("give more time (--budget-time), " if math.isfinite(budget.seconds) else "")
            + ("allow more candidates (--budget-trials), " if found.trials >= budget.trials else "")
            + "or pass --best-effort to write the best candidate anyway")
    return outcome
