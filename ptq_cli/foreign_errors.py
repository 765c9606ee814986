"""The one place that turns what other libraries raise into a PtqError with one clear line.

ptq's own code raises PtqErrors where it knows what went wrong. Everything else that escapes a
command — an OSError from a file it reads, an onnxruntime or onnx exception, a MemoryError,
numpy's complaints — comes through `as_ptq_error`, which names the file, op or tensor that
failed and says what to do. The command line calls it; library users may too.
"""

from __future__ import annotations

import re

from ptq_cli.errors import EngineError, ModelError, PtqError
from ptq_cli.files import describe_os_error

_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_BAD_TYPE = re.compile(r"Type '(tensor\([^)]*\))' of input parameter \(([^)]*)\) of operator \((\w+)\) "
                       r"in node \(([^)]*)\) is invalid")


def as_ptq_error(exc: BaseException) -> PtqError:
    """A PtqError for `exc` (itself when it already is one)."""
    if isinstance(exc, PtqError):
        return exc
    if isinstance(exc, MemoryError):
        return PtqError("out of memory; use a smaller --batch-size or --max-samples, or a machine with more memory")
    if isinstance(exc, RecursionError):
        return ModelError("the model is nested too deeply to process (recursion limit reached)")
    if isinstance(exc, OSError):
        name = exc.filename if exc.filename is not None else "a file"
        return PtqError(describe_os_error(exc, f"cannot access {name}"))
    if is_onnxruntime_error(exc):
        return ModelError(onnxruntime_message(exc, "the model"))
    if type(exc).__module__.startswith("onnx"):
        return ModelError(f"onnx cannot process the model: {first_line(exc)}")
    if type(exc).__module__.startswith("distributed"):  # KilledWorker, a lost scheduler, ...
        return EngineError(f"the Dask cluster failed ({type(exc).__name__}: {first_line(exc)}); a worker "
                           "that died more than --retries times, or a lost scheduler: see the workers' logs")
    if isinstance(exc, UnicodeError):
        return PtqError(f"a text file is not valid UTF-8 ({first_line(exc)}); save it as UTF-8")
    return PtqError(f"internal error ({type(exc).__name__}: {first_line(exc)}); "
                    "rerun with `ptq --debug ...` and report the traceback")


def is_onnxruntime_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("onnxruntime")


def onnxruntime_message(exc: BaseException, what: str, action: str = "run") -> str:
    """One line for an onnxruntime failure on `what` ("the reference model", "the quantized
    model", ...): the op and node it names, and what to do about it."""
    text = _ORT_PREFIX.sub("", first_line(exc))
    missing = _NO_KERNEL.search(text)
    if missing:
        op, version, node = missing.groups()
        return (f"onnxruntime cannot {action} {what}: it has no kernel for {op} (opset {version}) with the "
                f"types of node {node!r}; export the model with ops and types onnxruntime supports "
                "(https://onnxruntime.ai/docs/reference/operators)")
    bad_type = _BAD_TYPE.search(text)
    if bad_type:
        dtype, tensor, op, node = bad_type.groups()
        return (f"onnxruntime cannot {action} {what}: its {op} kernel does not take {dtype} "
                f"(tensor {tensor!r} of node {node!r})")
    return f"onnxruntime cannot {action} {what}: {text}"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
