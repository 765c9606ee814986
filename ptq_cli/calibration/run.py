"""How one calibration runs, as one value: written once, handed from `calibrate()` to the run in
this process and, per part, to an engine's workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from ptq_cli.recipe import CalibrationSpec


@dataclass(frozen=True)
class CalibrationRun:
    """Every option of `calibrate()` that says how to run it, as opposed to what it runs on (the
    model, the data and the image preprocessing that opens it). calibrate() builds it from its
    keywords, which it documents; the in-process run and each engine task take it whole, so an
    option is added in one place rather than in every signature along the way. Frozen and made
    of plain values, so it pickles to Dask's workers as it is."""

    spec: CalibrationSpec = field(default_factory=CalibrationSpec)
    batch_size: int = 1
    max_samples: int | None = None
    shard: tuple[int, int] | None = None
    provider: str = "CPUExecutionProvider"
    tensors: tuple[str, ...] | None = None  # a tuple, not the caller's list: the value stays frozen
    progress: bool = True
    histograms: bool | None = None
    channel_axis: int | None = None
    overlap: bool | None = None
    grams: bool = False
    model_sha: str | None = None
    prepared: bool = False
    threads: int = 0
