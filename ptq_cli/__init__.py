"""ptq: post-training quantization of ONNX models.

Python API (the CLI is a thin layer over these):

    import ptq_cli
    result = ptq_cli.quantize("model.onnx", "model.int8.onnx", data="calib/")
    table = ptq_cli.calibrate("model.onnx", data="calib/", recipe=ptq_cli.Recipe())
    report = ptq_cli.compare("model.onnx", "model.int8.onnx", data="eval/")
"""

from importlib import import_module

__version__ = "0.1.0"

# Resolved on first use (module __getattr__), so that `import ptq_cli` imports no stage, and
# the command line imports each command's library only when it runs (a Ctrl-C while the tool is
# still starting is then caught by the command line). The functions are
# named after the commands, their stages live in quantization/, calibration/ and comparison/: no
# subpackage has a public name, so importing one never rebinds it (tests/test_layering.py).
_PUBLIC = {
    "quantize": "ptq_cli.quantization.api",
    "calibrate": "ptq_cli.calibration.api",
    "compare": "ptq_cli.comparison.api",
    "QuantizeResult": "ptq_cli.quantization.api",
    "CalibrationTable": "ptq_cli.calibration.table",
    "CompareReport": "ptq_cli.comparison.report",
    "Recipe": "ptq_cli.recipe",
    "TensorSpec": "ptq_cli.recipe",
    "QType": "ptq_cli.recipe",
    "Format": "ptq_cli.recipe",
    "CalibMethod": "ptq_cli.recipe",
    "CalibrationSpec": "ptq_cli.recipe",
    "PerTensor": "ptq_cli.recipe",
    "PerChannel": "ptq_cli.recipe",
    "Rounding": "ptq_cli.recipe",
    "ImagePreprocess": "ptq_cli.data.images",
    "open_dataset": "ptq_cli.data",
    "PtqError": "ptq_cli.errors",
    "Objective": "ptq_cli.quantization.placement.latency.search",
    "IfSlower": "ptq_cli.quantization.placement.latency.search",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ptq_cli' has no attribute {name!r}")
