"""`inspect_file`: load a quantized model (and optionally its calibration table) and read it."""

from __future__ import annotations

import os
from pathlib import Path

from ptq_cli.calibration.table import CalibrationTable
from ptq_cli.errors import UsageError
from ptq_cli.inspect.read import inspect_model
from ptq_cli.inspect.report import InspectReport
from ptq_cli.model.io import load_model


def inspect_file(model: str | os.PathLike, calibration: str | os.PathLike | None = None) -> InspectReport:
    """The report of `model`; with `calibration` (the table it was quantized from), the wasted
    fraction of every activation is computed from its calibrated range."""
    path = Path(model)
    loaded = load_model(path)
    ranges = None
    if calibration is not None:
        table = CalibrationTable.load(calibration)
        source = {p.key: p.value for p in loaded.metadata_props}.get("ptq.source_sha256")
        if source:
            table.check_model(source)  # a table of another model would give meaningless figures
        ranges = dict(table.ranges)
    report = inspect_model(loaded, ranges, name=path.name)
    if not report.tensors:
        raise UsageError(f"{path} has no quantized tensors (no QuantizeLinear, QLinear* or "
                         "DynamicQuantizeLinear); quantize it first with `ptq quantize`")
    return report
