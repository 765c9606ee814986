"""JUnit XML for CI systems: one test case per threshold, failed when the threshold was missed.

Without thresholds there is a single passing test case ("compare") so the file is never empty.
The text summary goes in <system-out> so that CI shows the figures next to the verdict.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ptq_cli.comparison.render import render_text
from ptq_cli.comparison.report import CompareReport


def render_junit(report: CompareReport, suite: str = "ptq compare") -> str:
    cases = list(report.thresholds)
    failures = sum(1 for t in cases if not t.passed)
    root = ET.Element("testsuites", name=suite, tests=str(max(len(cases), 1)), failures=str(failures))
    node = ET.SubElement(root, "testsuite", name=suite, tests=str(max(len(cases), 1)),
                         failures=str(failures), errors="0", skipped="0")
    _host_properties(node, report)
    for t in cases:
        case = ET.SubElement(node, "testcase", classname="ptq.compare", name=f"{t.name} {t.limit:g}")
        if not t.passed:
            ET.SubElement(case, "failure", message=t.detail, type="ThresholdMissed").text = t.detail
        else:
            ET.SubElement(case, "system-out").text = t.detail
    if not cases:
        ET.SubElement(node, "testcase", classname="ptq.compare", name="compare")
    ET.SubElement(node, "system-out").text = render_text(report)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _host_properties(suite: ET.Element, report: CompareReport) -> None:
    """The host's kernel class as suite properties (JUnit wants them before the test cases), so
    that a CI dashboard tells which kind of machine the figures were measured on."""
    if report.host is None:
        return
    properties = ET.SubElement(suite, "properties")
    values = {"host_kernels": report.host.kernels,
              "candidate_portable": str(report.host.candidate_portable).lower()}
    if report.host.warning:
        values["host_warning"] = report.host.warning
    for name, value in values.items():
        ET.SubElement(properties, "property", name=name, value=value)
