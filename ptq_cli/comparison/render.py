"""Text (terminal) and Markdown renderings of a CompareReport."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

from ptq_cli.comparison.report import CompareReport, OutputReport


def fmt(value: float | None, spec: str = ".4g", *, scale: float = 1.0, suffix: str = "") -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value * scale:{spec}}{suffix}"


def _sqnr(out: OutputReport) -> str:
    return "inf (exact)" if out.exact else fmt(out.sqnr_db, ".2f")


def _pct(value: float | None) -> str:
    return fmt(value, ".2f", scale=100.0, suffix=" %")


def _model_name(path: str | None, fallback: str) -> str:
    return Path(path).name if path else fallback


def output_rows(report: CompareReport) -> tuple[list[str], list[list[str]]]:
    header = ["output", "SQNR dB", "cosine", "max abs", "mean abs", "RMSE", "top-1 agree", "top-5 agree",
              "NaN/Inf rows"]
    sequences = any(out.sequence_agreement is not None for out in report.outputs)
    if sequences:  # step scores: the share of samples decoded as the reference decodes them
        header.append("sequences same")
    rows = []
    for out in report.outputs:
        cls = out.classification
        rows.append([out.name, _sqnr(out), fmt(out.cosine_mean, ".5f"), fmt(out.max_abs_error, ".3g"),
                     fmt(out.mean_abs_error, ".3g"), fmt(out.rmse, ".3g"),
                     _pct(out.top1_agreement) if out.top1_agreement is not None else "-",
                     _pct(cls.top5_agreement) if cls else "-", str(out.nonfinite_candidate)])
        if sequences:
            rows[-1].append(_pct(out.sequence_agreement) if out.sequence_agreement is not None else "-")
    return header, rows


def accuracy_rows(report: CompareReport) -> tuple[list[str], list[list[str]]]:
    header = ["output", "labelled", "reference top-1", "candidate top-1", "drop", "reference top-5",
              "candidate top-5"]
    rows = []
    for out in report.outputs:
        cls = out.classification
        if cls is None or not cls.labelled:
            continue
        rows.append([out.name, str(cls.labelled), _pct(cls.reference_top1), _pct(cls.candidate_top1),
                     fmt(cls.top1_drop_pt, ".2f", suffix=" pt"), _pct(cls.reference_top5),
                     _pct(cls.candidate_top5)])
    return header, rows


def layer_rows(report: CompareReport, layers=None) -> tuple[list[str], list[list[str]]]:
    header = ["SQNR dB", "local dB", "weights dB", "op type", "node", "tensor", "quantized"]
    if layers is None:
        layers = report.layers.matched if report.layers else ()
    rows = [[("NaN/Inf" if m.nonfinite_candidate else fmt(m.sqnr_db, ".2f")), fmt(m.local_sqnr_db, ".2f"),
             fmt(m.weight_sqnr_db, ".2f"), m.op_type, m.node or "-", m.tensor, "yes" if m.quantized else "no"]
            for m in layers]
    return header, rows


def sensitivity_rows(report: CompareReport) -> tuple[list[str], list[list[str]]]:
    header = ["output SQNR dB", "top-1 agree", "op type", "node"]
    sens = report.layers.sensitivity if report.layers else None
    rows = [[("NaN/Inf" if r.nonfinite_candidate else fmt(r.sqnr_db, ".2f")), _pct(r.top1_agreement),
             r.op_type, r.node or "-"] for r in (sens.rows if sens else ())]
    return header, rows


def exclude_line(report: CompareReport) -> str | None:
    """`--exclude A --exclude B ...` for the worst nodes of the sensitivity pass, ready to paste."""
    sens = report.layers.sensitivity if report.layers else None
    offenders = sens.offenders() if sens else ()
    return " ".join(f"--exclude {shlex.quote(r.node)}" for r in offenders) or None


def _sensitivity_heading(report: CompareReport) -> str:
    sens = report.layers.sensitivity
    return (f"sensitivity: model outputs with only this node quantized, worst first "
            f"({sens.samples} samples)")


def _short(text: str, width: int = 48) -> str:
    """Long generated names (TF converters make 200-character ones) cut in the middle."""
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width // 2):]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    rows = [[_short(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    return (["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(esc, r)) + " |" for r in rows])


def latency_line(report: CompareReport) -> str | None:
    lat = report.latency
    if lat is None:
        return None
    part = lambda t: f"median {t.median_ms:.3f} ms (p10 {t.p10_ms:.3f}, p90 {t.p90_ms:.3f})"  # noqa: E731
    return (f"latency ({lat.runs} interleaved runs after {lat.warmup} warm-up): reference "
            f"{part(lat.reference)}, candidate {part(lat.candidate)}; speed-up {fmt(lat.speedup, '.2f')}x")


def _threshold_lines(report: CompareReport, *, markdown: bool) -> list[str]:
    lines = []
    for t in report.thresholds:
        mark = ("✅" if t.passed else "❌") if markdown else ("PASS" if t.passed else "FAIL")
        lines.append(f"{'- ' if markdown else '  '}{mark} {t.name} = {t.limit:g}: {t.detail}")
    return lines


def _text_sensitivity(report: CompareReport) -> list[str]:
    sens = report.layers.sensitivity
    if sens is None or not sens.rows:
        return []
    lines = ["", _sensitivity_heading(report) + ":"] + _table(*sensitivity_rows(report))
    line = exclude_line(report)
    if line:
        lines += ["", "to leave the worst nodes in float, quantize again with (try the first few first):",
                  f"  {line}"]
    if sens.fixed:
        lines += [f"note: weights of {len(sens.fixed)} node(s) have no float original in the reference and stay "
                  f"quantized in every variant: {', '.join(sens.fixed)}"]
    return lines


def _md_sensitivity(report: CompareReport) -> list[str]:
    sens = report.layers.sensitivity
    if sens is None or not sens.rows:
        return []
    lines = [f"**{_sensitivity_heading(report).capitalize()}**", ""] + _md_table(*sensitivity_rows(report))
    line = exclude_line(report)
    if line:
        lines += ["", "To leave the worst nodes in float:", "", "```", line, "```"]
    return lines + [""]


def host_line(report: CompareReport) -> str | None:
    return f"integer kernels: {report.host.kernels}" if report.host else None


def host_warning(report: CompareReport) -> str | None:
    return report.host.warning if report.host else None


def render_text(report: CompareReport) -> str:
    lines = [f"ptq compare: {report.samples} samples from {report.data_description}"
             + (f" ({report.labelled} labelled)" if report.labelled else ""),
             f"  reference  {report.reference.path or '(in memory)'}",
             f"  candidate  {report.candidate.path or '(in memory)'}"]
    lines += [f"  host       {host_line(report)}"] if report.host else []
    lines += [f"warning: {host_warning(report)}"] if host_warning(report) else []
    lines += [""]
    lines += _table(*output_rows(report))
    header, rows = accuracy_rows(report)
    if rows:
        lines += ["", "accuracy against labels:"] + _table(header, rows)
    if report.layers is not None:
        lines += ["", f"per-layer SQNR, worst first ({len(report.layers.matched)} matched):"]
        lines += _table(*layer_rows(report))
        lines += _text_sensitivity(report)
        if report.layers.unmatched:
            lines += ["", f"unmatched layers ({len(report.layers.unmatched)}):"]
            lines += [f"  {u.tensor} ({u.op_type} {u.node or '-'}): {u.reason}" for u in report.layers.unmatched]
    if report.latency is not None:
        lines += ["", latency_line(report)]
    if report.thresholds:
        lines += ["", "thresholds:"] + _threshold_lines(report, markdown=False)
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def render_markdown(report: CompareReport) -> str:
    ref = _model_name(report.reference.path, "reference")
    cand = _model_name(report.candidate.path, "candidate")
    status = "" if not report.thresholds else (" — ✅ passed" if report.passed else " — ❌ failed")
    lines = [f"### ptq compare: `{cand}` vs `{ref}`{status}", "",
             f"{report.samples} samples from {report.data_description}"
             + (f", {report.labelled} labelled." if report.labelled else ".")
             + (f" Host {host_line(report)}." if report.host else ""), ""]
    lines += [f"> ⚠️ **warning:** {host_warning(report)}", ""] if host_warning(report) else []
    lines += _md_table(*output_rows(report))
    header, rows = accuracy_rows(report)
    if rows:
        lines += ["", "**Accuracy against labels**", ""] + _md_table(header, rows)
    if report.thresholds:
        lines += ["", "**Thresholds**", ""] + _threshold_lines(report, markdown=True)
    if report.latency is not None:
        lines += ["", latency_line(report)]
    if report.layers is not None:
        lines += [""] + _md_sensitivity(report)
        lines += [f"<details><summary>Per-layer SQNR, worst first ({len(report.layers.matched)} "
                  f"matched, {len(report.layers.unmatched)} unmatched)</summary>", ""]
        lines += _md_table(*layer_rows(report))
        if report.layers.unmatched:
            lines += ["", "Unmatched: " + ", ".join(f"`{u.tensor}` ({u.reason})" for u in report.layers.unmatched)]
        lines += ["", "</details>"]
    lines += [f"\n> note: {n}" for n in report.notes]
    return "\n".join(lines) + "\n"
