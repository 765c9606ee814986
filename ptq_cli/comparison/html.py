"""A self-contained HTML report: tables, a per-layer SQNR bar chart and an |error| histogram per output.

Everything is inline (CSS and SVG, no script, no font or image from the network), so the file can
be archived as a CI artifact and opened anywhere.
"""

from __future__ import annotations

import math
from html import escape

from ptq_cli.comparison.render import (accuracy_rows, exclude_line, host_line, host_warning, latency_line, layer_rows,
                                   output_rows, sensitivity_rows)
from ptq_cli.comparison.report import CompareReport, LayerReport, OutputReport

_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f3f3f3}.pass{color:#196c2e}.fail{color:#b3261e}svg text{font:11px sans-serif}
h1{font-size:20px}h2{font-size:16px;margin-top:1.5em}"""


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _bar_color(value: float) -> str:
    if math.isnan(value) or value < 10:
        return "#d93025"
    return "#f29900" if value < 20 else "#1e8e3e"


def layer_chart(layers: tuple[LayerReport, ...]) -> str:
    """Horizontal bars, one per matched tensor, worst SQNR at the top."""
    if not layers:
        return "<p>No layer was matched.</p>"
    finite = [m.sqnr_db for m in layers if math.isfinite(m.sqnr_db) and not m.nonfinite_candidate]
    top = max([40.0] + finite)
    label_w, bar_w, row_h = 340, 420, 16
    height = row_h * len(layers) + 24
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 80}" height="{height}" '
             'role="img" aria-label="per-layer SQNR">']
    for i, m in enumerate(layers):
        y = i * row_h
        bad = bool(m.nonfinite_candidate) or math.isnan(m.sqnr_db)
        value = top if math.isinf(m.sqnr_db) and m.sqnr_db > 0 else (0.0 if bad else max(m.sqnr_db, 0.0))
        width = bar_w * min(value, top) / top if not bad else bar_w
        shown = "NaN/Inf" if m.nonfinite_candidate else ("-" if math.isnan(m.sqnr_db) else f"{m.sqnr_db:.1f} dB")
        label = f"{m.op_type} {m.node or m.tensor}"
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{escape(label[:52])}'
                     f'<title>{escape(m.tensor)}</title></text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{width:.1f}" height="{row_h - 4}" '
                     f'fill="{_bar_color(-1 if bad else value)}"/>')
        parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 12}">{escape(shown)}</text>')
    axis_y = row_h * len(layers) + 14
    for tick in range(0, int(top) + 1, 10):
        x = label_w + bar_w * tick / top
        parts.append(f'<text x="{x:.1f}" y="{axis_y}" text-anchor="middle">{tick}</text>')
    parts.append("</svg>")
    return "".join(parts)


def error_histogram(out: OutputReport) -> str:
    """Counts of |reference - candidate| per half-decade bin (log scale on x)."""
    counts, edges = out.hist_counts, out.hist_edges
    if not counts or not sum(counts):
        return "<p>No finite error to show.</p>"
    width, height, pad = 560, 140, 30
    bar = width / len(counts)
    peak = max(counts)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 2 * pad}" height="{height + 40}" '
             f'role="img" aria-label="error histogram of {escape(out.name)}">']
    for i, count in enumerate(counts):
        h = height * count / peak
        x = pad + i * bar
        parts.append(f'<rect x="{x:.1f}" y="{height - h + 5:.1f}" width="{bar - 1:.1f}" height="{h:.1f}" '
                     f'fill="#4a73c9"><title>|err| in [1e{edges[i]:g}, 1e{edges[i + 1]:g}): {count}</title></rect>')
    for i, edge in enumerate(edges):
        if float(edge).is_integer() and int(edge) % 2 == 0:
            parts.append(f'<text x="{pad + i * bar:.1f}" y="{height + 20}" text-anchor="middle">1e{int(edge)}</text>')
    parts.append(f'<text x="{pad + width / 2}" y="{height + 36}" text-anchor="middle">|reference − candidate| '
                 '(first bin includes exact zeros)</text></svg>')
    return "".join(parts)


def render_html(report: CompareReport) -> str:
    status = ""
    if report.thresholds:
        status = '<span class="pass">passed</span>' if report.passed else '<span class="fail">failed</span>'
    body = [f"<h1>ptq compare {status}</h1>",
            f"<p>Reference: <code>{escape(report.reference.path or '(in memory)')}</code><br>"
            f"Candidate: <code>{escape(report.candidate.path or '(in memory)')}</code><br>"
            f"{report.samples} samples from {escape(report.data_description)}"
            f"{f', {report.labelled} labelled' if report.labelled else ''}."
            f"{f'<br>Host {escape(host_line(report))}.' if report.host else ''}</p>"]
    if host_warning(report):
        body += [f'<p class="fail">warning: {escape(host_warning(report))}</p>']
    body += ["<h2>Outputs</h2>", _table(*output_rows(report))]
    header, rows = accuracy_rows(report)
    if rows:
        body += ["<h2>Accuracy against labels</h2>", _table(header, rows)]
    if report.thresholds:
        items = "".join(f'<li class="{"pass" if t.passed else "fail"}">{"PASS" if t.passed else "FAIL"} '
                        f"{escape(t.name)} = {t.limit:g}: {escape(t.detail)}</li>" for t in report.thresholds)
        body += ["<h2>Thresholds</h2>", f"<ul>{items}</ul>"]
    if report.latency is not None:
        body += ["<h2>Latency</h2>", f"<p>{escape(latency_line(report))}</p>"]
    body += ["<h2>Error distribution per output</h2>"]
    for out in report.outputs:
        body += [f"<h3>{escape(out.name)}</h3>", error_histogram(out)]
    if report.layers is not None:
        sens = report.layers.sensitivity
        if sens is not None and sens.rows:
            line = exclude_line(report)
            body += ["<h2>Sensitivity: outputs with only this node quantized (worst first)</h2>",
                     f"<p>{sens.samples} samples.</p>", _table(*sensitivity_rows(report))]
            body += [f"<p>To leave the worst nodes in float: <code>{escape(line)}</code></p>"] if line else []
        body += ["<h2>Per-layer SQNR (worst first)</h2>", layer_chart(report.layers.matched),
                 _table(*layer_rows(report))]
        if report.layers.unmatched:
            body += ["<h3>Unmatched layers</h3>", _table(["tensor", "op type", "node", "reason"],
                     [[u.tensor, u.op_type, u.node, u.reason] for u in report.layers.unmatched])]
    body += [f"<p><em>note: {escape(n)}</em></p>" for n in report.notes]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>ptq compare</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
