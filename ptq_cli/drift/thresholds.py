"""Pass/fail limits on drift (`ptq compare`'s thresholds, `ptq quantize`'s budget), checked against
the finished per-output figures.

- min_sqnr (dB): every output's SQNR must reach it;
- max_top1_drop (percentage points): on every classification-like output, the top-1 accuracy drop
  against the labels when there are labels, else 100 * (1 - top-1 agreement with the reference);
- min_cosine: every output's mean cosine similarity must reach it;
- min_agreement (0..1): on every output with an agreement figure, the top-1 agreement with the
  reference (per step for step scores; exact equality for integer outputs) must reach it;
- min_sequence_agreement (0..1): on every step-scores output ([N, T, C]), the share of samples
  whose greedily decoded sequence is the reference's (drift/sequences.py) must reach it.

Integer outputs (ids, masks, indices) have no SQNR or cosine worth judging: min_sqnr and
min_cosine skip them, min_agreement holds them to their exact agreement.

A candidate that produced NaN/Inf on any sample misses min_sqnr and min_cosine (those rows are left
out of the averages, so the averages alone would hide them); for top-1 they already count as misses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ptq_cli.drift.kinds import OutputKind
from ptq_cli.drift.report import OutputReport, ThresholdResult
from ptq_cli.errors import UsageError


@dataclass(frozen=True)
class Thresholds:
    min_sqnr: float | None = None
    max_top1_drop: float | None = None
    min_cosine: float | None = None
    min_agreement: float | None = None
    min_sequence_agreement: float | None = None

    def __post_init__(self) -> None:
        for name in THRESHOLD_NAMES:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UsageError(f"threshold {name} must be a finite number, got {value}")
        if self.max_top1_drop is not None and self.max_top1_drop < 0:
            raise UsageError(f"max_top1_drop is in percentage points and must be >= 0, got {self.max_top1_drop}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError(f"min_cosine must lie in [-1, 1], got {self.min_cosine}")
        for name in ("min_agreement", "min_sequence_agreement"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise UsageError(f"{name} is a fraction and must lie in [0, 1], got {value}")

    @property
    def any(self) -> bool:
        return any(getattr(self, name) is not None for name in THRESHOLD_NAMES)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in THRESHOLD_NAMES}

    def describe(self) -> str:
        units = {"min_sqnr": " dB", "max_top1_drop": " pt"}
        shown = [f"{name} {getattr(self, name):g}{units.get(name, '')}" for name in THRESHOLD_NAMES
                 if getattr(self, name) is not None]
        return ", ".join(shown) or "none"


THRESHOLD_NAMES = (  # the order every report lists them in
    "min_sqnr", "max_top1_drop", "min_cosine", "min_agreement", "min_sequence_agreement")


def evaluate(thresholds: Thresholds, outputs: tuple[OutputReport, ...], *,
             where_measurable: bool = False) -> tuple[ThresholdResult, ...]:
    """One result per threshold set. `where_measurable`: a threshold that no output can be judged
    by (top-1 on a model without scores) is left out instead of failing, as a default budget
    that must suit every model needs."""
    results = []
    floats = tuple(o for o in outputs if o.kind not in (OutputKind.INTEGER, OutputKind.OTHER))
    if thresholds.min_sqnr is not None:
        results.append(_lower_bound("min_sqnr", thresholds.min_sqnr, floats,
                                    lambda o: math.inf if o.exact else o.sqnr_db, "SQNR", " dB"))
    if thresholds.max_top1_drop is not None:
        results.append(_top1(thresholds.max_top1_drop, outputs))
    if thresholds.min_cosine is not None:
        results.append(_lower_bound("min_cosine", thresholds.min_cosine, floats,
                                    lambda o: o.cosine_mean, "mean cosine", ""))
    if thresholds.min_agreement is not None:
        judged = tuple(o for o in outputs if not where_measurable or _agreement_measurable(o))
        results.append(_agreement(thresholds.min_agreement, judged))
    if thresholds.min_sequence_agreement is not None:
        judged = tuple(o for o in outputs if not where_measurable or _sequences_measurable(o))
        results.append(_sequence_agreement(thresholds.min_sequence_agreement, judged))
    if where_measurable:
        measurable = {"min_sqnr": bool(floats), "min_cosine": bool(floats),
                      "max_top1_drop": any(o.classification for o in outputs),
                      "min_agreement": any(_agreement_measurable(o) for o in outputs),
                      "min_sequence_agreement": any(_sequences_measurable(o) for o in outputs)}
        results = [r for r in results if measurable[r.name]]
    return tuple(results)


def _lower_bound(name, limit, outputs, value_of, label, unit) -> ThresholdResult:
    worst_value, worst_name, problems = math.inf, None, []
    for out in outputs:
        value = value_of(out)
        if out.nonfinite_candidate:
            problems.append(f"output {out.name!r} has NaN/Inf on {out.nonfinite_candidate} sample(s)")
        if math.isnan(value):
            problems.append(f"output {out.name!r} has no measurable {label}")
        elif worst_name is None or value < worst_value:  # an exact output is measured too: inf
            worst_value, worst_name = value, out.name
    if worst_name is None and not problems:
        problems.append("no output to measure")
    passed = not problems and worst_value >= limit
    shown = "inf" if worst_value == math.inf else f"{_figure(worst_value, limit, passed)}{unit}"
    if problems:
        detail = "; ".join(problems)
    else:
        detail = f"worst {label} {shown} on output {worst_name!r} {'>=' if passed else '<'} {limit:g}{unit}"
    value = worst_value if worst_name is not None else None
    return ThresholdResult(name, float(limit), value, passed, detail)


def _top1(limit: float, outputs: tuple[OutputReport, ...]) -> ThresholdResult:
    drops = [(o.classification.top1_drop_pt, o.name) for o in outputs if o.classification]
    drops = [(d, n) for d, n in drops if d is not None]
    if not drops:
        return ThresholdResult("max_top1_drop", float(limit), None, False,
                               "no classification-like output (rank 2, more than one class) to measure top-1 on")
    worst, name = max(drops)
    labelled = any(o.classification and o.classification.labelled for o in outputs)
    what = "top-1 accuracy drop vs labels" if labelled else "top-1 disagreement with the reference"
    passed = worst <= limit
    detail = f"{what} {worst:.2f} pt on output {name!r} {'<=' if passed else '>'} {limit:g} pt"
    return ThresholdResult("max_top1_drop", float(limit), worst, passed, detail)


# Below this many samples one flipped answer moves a per-sample agreement by more than 5 points:
# too coarse for a limit that must hold on every healthy model. Per-step agreement counts steps.
AGREEMENT_MIN_SAMPLES = 20


def _agreement_measurable(out: OutputReport) -> bool:
    if out.top1_agreement is None:
        return False
    return out.kind is OutputKind.STEP_SCORES or out.samples >= AGREEMENT_MIN_SAMPLES


def _agreement(limit: float, outputs: tuple[OutputReport, ...]) -> ThresholdResult:
    return _worst_share("min_agreement", limit, outputs, lambda o: o.top1_agreement, "top-1 agreement",
                        "no output with an agreement figure (scores, step scores or integers)")


def _sequences_measurable(out: OutputReport) -> bool:
    return out.sequence_agreement is not None and out.samples >= AGREEMENT_MIN_SAMPLES


def _sequence_agreement(limit: float, outputs: tuple[OutputReport, ...]) -> ThresholdResult:
    return _worst_share("min_sequence_agreement", limit, outputs, lambda o: o.sequence_agreement,
                        "share of sequences decoded as the reference's",
                        "no step-scores output ([N, T, C] made by a Softmax) to decode")


def _worst_share(name: str, limit: float, outputs: tuple[OutputReport, ...], value_of, what: str,
                 missing: str) -> ThresholdResult:
    """A lower limit on a share (0..1) that some outputs have, held by the worst of them."""
    values = [(value_of(o), o.name) for o in outputs if value_of(o) is not None]
    if not values:
        return ThresholdResult(name, float(limit), None, False, missing)
    worst, output = min(values)
    passed = worst >= limit
    detail = f"worst {what} {_figure(worst, limit, passed)} on output {output!r} {'>=' if passed else '<'} {limit:g}"
    return ThresholdResult(name, float(limit), worst, passed, detail)


def _figure(value: float, limit: float, passed: bool) -> str:
    """`value` with 4 significant digits, or as many more as a miss needs not to read as the limit
    itself ("0.996 < 0.996" for 0.99596)."""
    digits = 4
    while not passed and digits < 10 and float(f"{value:.{digits}g}") >= limit:
        digits += 1
    return f"{value:.{digits}g}"
