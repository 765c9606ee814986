"""The machine compare measures on: onnxruntime's integer kernels here, and whether they can show
what the candidate does elsewhere.

A candidate with full-range int8 weights (--target vnni) computes exactly on a host whose kernels
accumulate in 32 bits, and clips pair sums on x86 CPUs without VNNI (quantization/arithmetic/pairs.py):
its figures measured here say nothing about those CPUs, so a CI gate on this host would pass a
model that is worse where it ships.
"""

from __future__ import annotations

import onnx

from ptq_cli.comparison.report import HostReport
from ptq_cli.inspect.portability import portability
from ptq_cli.model.kernels import host_kernels


def hidden_saturation_warning(kernels: str) -> str:
    return (f"the candidate can saturate 16-bit pair sums on x86 CPUs without VNNI; this host ({kernels}) "
            "cannot show it: quantize with --target portable or gate on such a host")


def host_report(candidate: onnx.ModelProto) -> HostReport:
    """This host's kernel class, and a warning when it cannot show a saturation the candidate has."""
    kernels = host_kernels()
    portable = portability(candidate).portable
    hidden = not portable and not kernels.saturates
    return HostReport(kernels.value, portable, hidden_saturation_warning(kernels.value) if hidden else None)
