"""`ptq inspect`: the quantization parameters of a quantized model (QDQ, QOperator or dynamic)."""

from ptq_cli.inspect.api import inspect_file
from ptq_cli.inspect.portability import Portability
from ptq_cli.inspect.read import inspect_model
from ptq_cli.inspect.report import InspectReport, RequantInfo, TensorInfo

__all__ = ["InspectReport", "Portability", "RequantInfo", "TensorInfo", "inspect_file", "inspect_model"]
