"""What `ptq inspect` reports, as frozen data, and its two renderings (a table and JSON)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptq_cli.drift.record import DriftRecord
from ptq_cli.inspect.portability import Portability


@dataclass(frozen=True)
class TensorInfo:
    """One quantized tensor. `scale`/`zero_point` have one entry per channel when per channel,
    none when computed at run time (DynamicQuantizeLinear)."""

    tensor: str
    role: str  # "activation" or "weight"
    qtype: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None  # the channel axis when per channel
    source: str  # the node that holds the parameters
    representable: tuple[float, float] | None  # [(qmin - Z)·S, (qmax - Z)·S] (over all channels)
    wasted: float | None  # fraction of [qmin, qmax] never used (mean over channels); None: unknown
    wasted_worst: float | None  # the worst channel
    wasted_basis: str  # where the float range behind `wasted` comes from

    @property
    def granularity(self) -> str:
        if not self.scale:
            return "dynamic"
        return "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "role": self.role, "type": self.qtype, "granularity": self.granularity,
                "axis": self.axis, "scale": list(self.scale), "zero_point": list(self.zero_point),
                "source": self.source, "representable_range": list(self.representable) if self.representable else None,
                "wasted_fraction": self.wasted, "wasted_fraction_worst_channel": self.wasted_worst,
                "wasted_basis": self.wasted_basis}


@dataclass(frozen=True)
class RequantInfo:
    """The real multiplier of an integer op's requantization, as integer-only kernels need it:
    M ≈ M0 · 2^-shift with M0 a Q31 integer (one per output channel when per channel)."""

    node: str
    op_type: str
    terms: str  # e.g. "S_x·S_w/S_y"
    multiplier: tuple[float, ...]
    m0: tuple[int, ...]
    shift: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"node": self.node, "op_type": self.op_type, "terms": self.terms,
                "multiplier": list(self.multiplier), "m0": list(self.m0), "shift": list(self.shift)}


@dataclass(frozen=True)
class InspectReport:
    model: str
    format: str  # "qdq", "qoperator", "dynamic" or "float"
    tensors: tuple[TensorInfo, ...]
    requantization: tuple[RequantInfo, ...]
    portability: Portability = Portability(())
    drift: DriftRecord | None = None  # what ptq measured when it wrote the file (its metadata)

    def to_dict(self) -> dict:
        return {"model": self.model, "format": self.format, "tensors": [t.to_dict() for t in self.tensors],
                "requantization": [r.to_dict() for r in self.requantization],
                "portability": self.portability.to_dict(), "drift": self.drift.to_dict() if self.drift else None}

    def render(self) -> str:
        lines = [f"{self.model}: {self.format} format, {len(self.tensors)} quantized tensors", ""]
        rows = [("tensor", "role", "type", "granularity", "scale", "zero point", "wasted", "basis")]
        rows += [(t.tensor, t.role, t.qtype, t.granularity, _span(t.scale, "{:.4g}"), _span(t.zero_point, "{}"),
                  _wasted(t), t.wasted_basis) for t in self.tensors]
        lines += _table(rows)
        if self.requantization:
            lines += ["", "requantization (M = M0 · 2^-shift, M0 in Q31):"]
            rows = [("node", "op", "M", "multiplier", "M0", "shift")]
            rows += [(r.node, r.op_type, r.terms, _span(r.multiplier, "{:.6g}"), _span(r.m0, "{}"),
                      _span(r.shift, "{}")) for r in self.requantization]
            lines += _table(rows)
        if self.drift is not None:
            lines += ["", "recorded by ptq quantize when it wrote this file:", *self.drift.lines()]
        lines += ["", *_portability_lines(self.portability)]  # the verdict last: scripts read it there
        return "\n".join(lines)


def _portability_lines(p: Portability) -> list[str]:
    lines = []
    if p.nodes:
        lines += ["16-bit pair sums (x86 without VNNI adds u8·s8 products in pairs, saturating to "
                  "[-32768, 32767]):"]
        rows = [("node", "op", "weight", "max pair sum", "min pair sum", "without VNNI")]
        rows += [(n.node or "-", n.op_type, ", ".join(n.weights), _sum(n.high), _sum(n.low), n.verdict)
                 for n in p.nodes]
        lines += _table(rows) + [""]
    if p.recipe_target:
        lines.append(f"recipe target: {p.recipe_target}")
    return lines + [p.verdict]


def _sum(value: int | None) -> str:
    return "-" if value is None else str(value)


def _span(values: tuple, fmt: str) -> str:
    if not values:
        return "run time"
    if len(set(values)) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(min(values))}..{fmt.format(max(values))} ({len(values)})"


def _wasted(t: TensorInfo) -> str:
    if t.wasted is None:
        return "?"
    if t.wasted_worst is not None and not np.isclose(t.wasted_worst, t.wasted):
        return f"{t.wasted:.1%} (worst {t.wasted_worst:.1%})"
    return f"{t.wasted:.1%}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
