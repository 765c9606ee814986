"""The drift-budget flags of `ptq quantize`, and the summary lines that report the drift."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ptq_cli.errors import UsageError

BUDGET_OPTION_NAMES = ("eval_data", "min_sqnr", "min_cosine", "min_agreement", "min_sequence_agreement",
                       "max_top1_drop", "no_budget", "best_effort", "budget_time", "budget_trials", "jobs")


def budget_options(func):
    """Decorator adding the drift-budget flags (the limits are those of `ptq compare`)."""
    options = [
        click.option("--eval-data", type=click.Path(exists=True, path_type=Path), metavar="DIR",
                     help="Measure the drift on the first 100 samples of DIR (same formats as --data) "
                          "instead of up to 100 evenly spaced calibration samples."),
        click.option("--min-sqnr", type=float, metavar="DB", help="Budget: every output's SQNR at least DB."),
        click.option("--min-cosine", type=click.FloatRange(-1, 1), metavar="C",
                     help="Budget: every float output's mean cosine similarity to FP32 at least C."),
        click.option("--min-agreement", type=click.FloatRange(0, 1), metavar="F",
                     help="Budget: top-1 agreement with FP32 (per step for [N, T, C] scores, exact for "
                          "integer outputs) at least F."),
        click.option("--min-sequence-agreement", type=click.FloatRange(0, 1), metavar="F",
                     help="Budget: on [N, T, C] step scores (a CTC head), the share of samples decoded as "
                          "FP32 decodes them (greedy: best class per step, repeats merged, blank dropped) "
                          "at least F. Default for such outputs: 0.95, with per-step agreement 0.996."),
        click.option("--max-top1-drop", type=click.FloatRange(min=0), metavar="PT",
                     help="Budget: top-1 drops by at most PT points (accuracy with --labels, else "
                          "agreement with FP32)."),
        click.option("--no-budget", is_flag=True,
                     help="Measure and report the drift, but set no limit and fall nothing back."),
        click.option("--best-effort", is_flag=True,
                     help="When the budget cannot be met, write the best candidate found (and say so) "
                          "instead of failing with exit 3."),
        click.option("--budget-time", type=click.FloatRange(min=1), metavar="S",
                     help="Time limit of the fallback search, in seconds [default: none: the search ends "
                          "by itself, and the same inputs give the same bytes on any machine under any load; "
                          "with a limit, a slower or busier machine may stop at another candidate]."),
        click.option("--budget-trials", type=click.IntRange(min=1), metavar="N", default=None,
                     help="At most N candidates measured by the fallback search, the first included "
                          "[default: 24]. Counted, not timed: the same bytes on any machine."),
        click.option("--jobs", "-j", type=click.IntRange(min=1), metavar="N", default=None,
                     help="onnxruntime sessions that run the search's samples at once, one thread each "
                          "[default: one per core, up to 4; 1 for a model of 256 MB or more]. The result "
                          "does not depend on it."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def pop_budget_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {name: kwargs.pop(name) for name in BUDGET_OPTION_NAMES}


def budget_from_options(*, eval_data, min_sqnr, min_cosine, min_agreement, min_sequence_agreement, max_top1_drop,
                        no_budget, best_effort, budget_time, budget_trials, jobs):
    # --help start-up: the drift package and the quantization stack cost ~90 ms more; only a run
    # that quantizes needs them.
    from ptq_cli.drift.thresholds import Thresholds
    from ptq_cli.quantization.placement.budget import DEFAULT_SECONDS, DEFAULT_TRIALS, MEASURE_ONLY, Budget

    given = Thresholds(min_sqnr, max_top1_drop, min_cosine, min_agreement, min_sequence_agreement)
    if no_budget:
        if given.any or best_effort or budget_trials:
            raise UsageError("--no-budget sets no limit; drop it, or drop the budget flags")
        return replace(MEASURE_ONLY, workers=jobs or 0)
    search = dict(seconds=DEFAULT_SECONDS if budget_time is None else budget_time,
                  trials=budget_trials or DEFAULT_TRIALS, workers=jobs or 0, best_effort=best_effort)
    if given.any:
        return Budget(given, by_kind=(), where_measurable=False, **search)
    return Budget(**search)


def drift_lines(result) -> list[str]:
    """The drift, the budget's verdict and the fallback decisions, for the summary."""
    if result.drift is None:
        return ["  drift not measured: no data (pass --eval-data DIR to measure it)"]
    return result.drift.lines(f"{result.fallback_trials} trials, {result.fallback_seconds:.0f} s")
