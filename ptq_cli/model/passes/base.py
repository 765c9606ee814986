"""The one contract every graph pass follows, and a sequence of passes.

A pass is called with a model and returns a PassResult: the model (the same object, changed in
place, or a new one), whether it changed, what it changed and why it left anything alone. The
caller copies the model once before a sequence (prepare does); passes never copy weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from ptq_cli.errors import ModelError, PtqError


@dataclass(frozen=True)
class PassResult:
    model: onnx.ModelProto
    modified: bool
    changes: tuple[str, ...] = ()  # one line per change, for the quantize summary and logs
    skipped: tuple[str, ...] = ()  # why something was left alone: the user sees these


class Pass:
    """A graph transformation. Subclasses set `name` and implement `__call__`."""

    name: str = "pass"

    def __call__(self, model: onnx.ModelProto) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class PassRecord:
    """What one pass of a sequence did."""

    name: str
    modified: bool
    changes: tuple[str, ...]
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class SequenceResult(PassResult):
    records: tuple[PassRecord, ...] = field(default=())


class PassError(ModelError):
    """A pass failed on a model: the message names the pass."""


class Sequential(Pass):
    """Run passes in order, each on the previous one's model. A failure names the pass."""

    name = "sequence"

    def __init__(self, passes: Sequence[Pass]) -> None:
        self.passes = tuple(passes)

    def __call__(self, model: onnx.ModelProto) -> SequenceResult:
        records = []
        for p in self.passes:
            try:
                result = p(model)
            except PtqError:
                raise  # already a message for the user
            except Exception as exc:
                raise PassError(f"graph pass {p.name!r} failed ({type(exc).__name__}: {exc}); "
                                "run with --debug for the traceback and please report it") from exc
            model = result.model
            records.append(PassRecord(p.name, result.modified, result.changes, result.skipped))
        return SequenceResult(model, any(r.modified for r in records),
                              tuple(c for r in records for c in r.changes),
                              tuple(s for r in records for s in r.skipped), tuple(records))
