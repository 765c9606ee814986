"""Calibration: streaming observers, range methods, the onnxruntime collector and the table.

    table = calibrate("model.onnx", "calib/", spec=CalibrationSpec(method=CalibMethod.ENTROPY))
    table.save("model.calib.json")
    lo, hi = CalibrationTable.load("model.calib.json").range("conv1_out")
"""

from ptq_cli.calibration.api import calibrate
from ptq_cli.calibration.table import CalibrationTable, merge, model_sha256

__all__ = ["CalibrationTable", "calibrate", "merge", "model_sha256"]
