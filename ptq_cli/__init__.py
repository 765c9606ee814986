"""ptq: post-training quantization of ONNX models.

Python API (the CLI is a thin layer over these):

    import ptq_cli
    result = ptq_cli.quantize("model.onnx", "model.int8.onnx", data="calib/")
    table = ptq_cli.calibrate("model.onnx", data="calib/", recipe=ptq_cli.Recipe())
    report = ptq_cli.compare("model.onnx", "model.int8.onnx", data="eval/")
"""

import sys
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
    "Objective": "ptq_cli.quantize.placement.latency.search",
    "IfSlower": "ptq_cli.quantize.placement.latency.search",
}

__all__ = sorted(_PUBLIC) + ["__version__", "quantize", "calibrate", "compare"]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ptq_cli' has no attribute {name!r}")


# The public functions share their names with the subpackages that hold them
# (`ptq_cli.quantize` is the function, `ptq_cli.quantize.api` its module). They are resolved on
# first use, like the names above, so that `ptq` starts without importing onnx (a Ctrl-C while
# the tool is still starting is then caught by the command line). Importing a submodule makes
# Python bind the subpackage to the package's attribute: the setter below ignores that, so the
# name keeps meaning the function.
_FUNCTIONS = {"quantize": "ptq_cli.quantize.api", "calibrate": "ptq_cli.calibrate.api",
              "compare": "ptq_cli.compare.api"}


class _Package(sys.modules[__name__].__class__):
    def __getattribute__(self, name: str):
        if name in _FUNCTIONS:
            return getattr(import_module(_FUNCTIONS[name]), name)
        return super().__getattribute__(name)

    def __setattr__(self, name: str, value) -> None:
        if name in _FUNCTIONS:
            return  # the import system binding the subpackage of the same name
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
