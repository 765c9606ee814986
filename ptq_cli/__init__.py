"""ptq: post-training quantization of ONNX models.

Python API (the CLI is a thin layer over these):

    import ptq_cli
    result = ptq_cli.quantize("model.onnx", "model.int8.onnx", data="calib/")
    table = ptq_cli.calibrate("model.onnx", data="calib/", recipe=ptq_cli.Recipe())
    report = ptq_cli.compare("model.onnx", "model.int8.onnx", data="eval/")
"""

from importlib import import_module

__version__ = "0.1.0"

# Resolved lazily so that `ptq --version` and the error types import nothing heavy.
_PUBLIC = {
    "QuantizeResult": "ptq_cli.quantize.api",
    "CalibrationTable": "ptq_cli.calibrate.table",
    "CompareReport": "ptq_cli.compare.report",
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
    "Objective": "ptq_cli.quantize.latency.search",
    "IfSlower": "ptq_cli.quantize.latency.search",
}

__all__ = sorted(_PUBLIC) + ["__version__", "quantize", "calibrate", "compare"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ptq_cli' has no attribute {name!r}")


# The public functions share their names with the subpackages that hold them. Importing them
# here, once, binds the names to the functions: a later import of a submodule does not rebind
# an attribute of this package.
from ptq_cli.quantize.api import quantize  # noqa: E402
from ptq_cli.calibrate.api import calibrate  # noqa: E402
from ptq_cli.compare.api import compare  # noqa: E402
