"""The drift `ptq quantize` measured on what it wrote, as one typed record.

The summary, `--json`, the file's `ptq.drift` metadata and `ptq inspect` all render this record,
so what a file says about itself is what the run that wrote it said. Figures are rounded to six
significant digits: they go into the output's metadata, which must not wobble in the last bit
from one machine to the next.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from ptq_cli.drift.report import OutputReport, ThresholdResult
from ptq_cli.drift.thresholds import THRESHOLD_NAMES

DRIFT_KEY = "ptq.drift"  # the metadata entry of a quantized file that holds its DriftRecord (JSON)


@dataclass(frozen=True)
class OutputFigures:
    """One output's drift: SQNR and cosine for float outputs, agreement for classes and sequences."""

    name: str
    kind: str  # an OutputKind value ("other": a sequence or a map, not measured)
    sqnr_db: float | None  # None: infinite (identical) or not measured
    cosine_mean: float | None
    cosine_min: float | None
    top1_agreement: float | None
    sequence_agreement: float | None
    nonfinite_candidate: int

    @classmethod
    def of(cls, out: OutputReport) -> OutputFigures:
        return cls(out.name, out.kind.value, _round(out.sqnr_db), _round(out.cosine_mean), _round(out.cosine_min),
                   _round(out.top1_agreement), _round(out.sequence_agreement), out.nonfinite_candidate)


@dataclass(frozen=True)
class Verdict:
    """One threshold of the budget against the figure it limits."""

    name: str
    limit: float
    value: float | None
    passed: bool
    detail: str

    @classmethod
    def of(cls, result: ThresholdResult) -> Verdict:
        return cls(result.name, result.limit, _round(result.value), result.passed, result.detail)


@dataclass(frozen=True)
class DriftRecord:
    """What quantize measured on the evaluation samples, the budget it held the model to, and what
    the fallback search changed to meet it."""

    samples: int
    data: str  # what the samples were
    outputs: tuple[OutputFigures, ...]
    verdicts: tuple[Verdict, ...]  # one per threshold ("budget" in the dict form)
    passed: bool  # every verdict passed on the candidate written
    thresholds: Mapping = field(default_factory=dict)  # the budget's limits (Budget.to_dict)
    fallback: tuple[str, ...] = ()  # nodes returned to float
    run_time: tuple[str, ...] = ()  # MatMuls moved to run-time quantization
    met: bool = True  # the budget held (False: written with --best-effort)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "data": self.data, "outputs": [asdict(o) for o in self.outputs],
                "budget": [asdict(v) for v in self.verdicts], "passed": self.passed,
                "thresholds": dict(self.thresholds), "fallback": list(self.fallback),
                "run_time": list(self.run_time), "met": self.met}

    @classmethod
    def from_dict(cls, d: Mapping) -> DriftRecord:
        """The record as `to_dict` wrote it (e.g. a file's ptq.drift metadata)."""
        return cls(d["samples"], d["data"], tuple(OutputFigures(**o) for o in d["outputs"]),
                   tuple(Verdict(**v) for v in d["budget"]), d["passed"], d.get("thresholds", {}),
                   tuple(d.get("fallback", ())), tuple(d.get("run_time", ())), d.get("met", True))

    def lines(self, search: str = "") -> list[str]:
        """The record for people, indented for a summary; `search` says what the fallback cost
        ("12 trials, 30 s"), when it is known."""
        lines = [f"  drift on {self.data}:"]
        for out in self.outputs:
            lines.append(_output_line(out))
        if self.verdicts:
            lines.append(f"  budget {_limits(self.thresholds)}: {'met' if self.met else 'NOT MET'}")
        if self.fallback:
            cost = f"{search}; " if search else ""
            lines.append(f"  fallback: {len(self.fallback)} node(s) returned to float "
                         f"({cost}recorded in the recipe's exclude): {_names(self.fallback)}")
        if self.run_time:
            lines.append(f"  fallback: {len(self.run_time)} MatMul(s) quantized at run time instead of statically "
                         f"(recorded in the recipe's run_time): {_names(self.run_time)}")
        if self.verdicts and not self.met:
            failures = "; ".join(v.detail for v in self.verdicts if not v.passed)
            lines.append(f"  WARNING: BEST EFFORT: this model does NOT meet the drift budget: {failures}")
        return lines


def _output_line(out: OutputFigures) -> str:
    if out.kind == "other":  # a sequence or a map (ZipMap's): no figures, not "SQNR inf"
        return f"    {out.name} (other): not measured (not a tensor: a sequence or a map)"
    figures = []
    if out.kind != "integer":
        figures += [f"SQNR {_fmt(out.sqnr_db, '.1f')} dB", f"cosine {_fmt(out.cosine_mean, '.5f')}"]
    if out.top1_agreement is not None:
        what = {"step_scores": "per-step top-1 agreement", "integer": "exact"}.get(out.kind, "top-1 agreement")
        figures.append(f"{what} {100 * out.top1_agreement:.1f} %")
    if out.sequence_agreement is not None:
        figures.append(f"sequences decoded as FP32 {100 * out.sequence_agreement:.1f} %")
    return f"    {out.name} ({out.kind}): " + ", ".join(figures)


def _names(names: tuple[str, ...], shown: int = 8) -> str:
    more = f", ... ({len(names) - shown} more; all in --json and the metadata)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _limits(thresholds: Mapping) -> str:
    """The limits in one fixed order (thresholds.THRESHOLD_NAMES, kinds alphabetically), whatever
    order the mapping has: the metadata's JSON is written with sorted keys, a live budget is not."""
    def listed(limits: Mapping) -> list[str]:
        return [f"{name} {limits[name]:g}" for name in THRESHOLD_NAMES if limits.get(name) is not None]

    shown = listed(thresholds)
    for kind, limits in sorted(thresholds.get("by_kind", {}).items()):
        shown.append(f"{kind} outputs {', '.join(listed(limits))}")
    return ", ".join(shown) or "none"


def _fmt(value: float | None, spec: str) -> str:
    return "inf" if value is None else format(value, spec)


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")
