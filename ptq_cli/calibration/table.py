"""The calibration table: per-tensor statistics and chosen ranges, as versioned JSON.

    {"format": "ptq-calibration", "version": 1, "tool": "ptq 0.1.0",
     "model_sha256": "...", "data": "image folder calib/ (100 files)", "samples": 100,
     "shard": [0, 4] | null, "calibration": {CalibrationSpec},
     "tensors": {name: {"min", "max", "count", "range": [lo, hi],
                        "histogram"?: {"bins", "width_exponent", "origin_bin", "width", "counts", ...},
                        "moving_average"?: {...}, "per_channel"?: {...}}}}

The statistics are enough to recompute any method (`with_method`) and to merge shards (`merge`).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from ptq_cli import __version__
from ptq_cli.calibration.gram import Gram
from ptq_cli.calibration.methods import Range, compute_range
from ptq_cli.calibration.schema import check_range, validate_table
from ptq_cli.calibration.stats import TensorStats
from ptq_cli.errors import CalibrationError, UsageError
from ptq_cli.files import write_text
from ptq_cli.model.external import fits_in_protobuf, is_external, structure_copy, tensor_bytes
from ptq_cli.model.io import sha256_file
from ptq_cli.recipe import CalibMethod, CalibrationSpec

FORMAT = "ptq-calibration"
VERSION = 1


def model_sha256(model: str | os.PathLike | onnx.ModelProto) -> str:
    """The sha256 a table records: of the file and of the external data files it names (in
    the order it names them) for a path; of the serialized graph and every tensor's data for a
    proto. A table is refused once the weights in a .data file change."""
    if isinstance(model, onnx.ModelProto):
        return _proto_sha256(model)
    path = Path(model)
    files = _external_files(path)
    if not files:
        return sha256_file(path)  # a model without external data: the file's own sha256, as before
    digest = hashlib.sha256(bytes.fromhex(sha256_file(path)))
    for location in files:
        digest.update(location.encode() + b"\0" + bytes.fromhex(sha256_file(path.parent / location)))
    return digest.hexdigest()


def _external_files(path: Path) -> list[str]:
    try:
        structure = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model: load_model reports that
        return []
    locations = (next((e.value for e in t.external_data if e.key == "location"), "")
                 for t in structure.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    return [loc for loc in dict.fromkeys(locations) if loc and (path.parent / loc).is_file()]


def _proto_sha256(model: onnx.ModelProto) -> str:
    if fits_in_protobuf(model) and not any(is_external(t) for t in model.graph.initializer):
        return hashlib.sha256(model.SerializeToString()).hexdigest()
    digest = hashlib.sha256(structure_copy(model).SerializeToString(deterministic=True))
    for tensor in model.graph.initializer:
        header = onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        digest.update(header.SerializeToString(deterministic=True))
        data = tensor_bytes(tensor)
        for start in range(0, len(data), 1 << 26):
            digest.update(memoryview(data)[start:start + (1 << 26)])
    return digest.hexdigest()


@dataclass(frozen=True)
class CalibrationTable:
    """Ranges and statistics of a model's activations, for one model (by sha256)."""

    model_sha256: str
    spec: CalibrationSpec
    stats: Mapping[str, TensorStats]
    ranges: Mapping[str, Range]
    data: str = ""
    samples: int = 0
    shard: tuple[int, int] | None = None
    tool: str = field(default=f"ptq {__version__}")
    # Σ x·xᵀ of the weighted layers' inputs, for GPTQ rounding (calibration/gram.py); keyed by gram_key
    grams: Mapping[str, Gram] = field(default_factory=dict)

    @classmethod
    def build(cls, model_sha256: str, spec: CalibrationSpec, stats: Mapping[str, TensorStats], *,
              data: str = "", samples: int = 0, shard: tuple[int, int] | None = None,
              grams: Mapping[str, Gram] | None = None) -> "CalibrationTable":
        """A table whose ranges are computed from `stats` with `spec`'s method."""
        kept = {name: s for name, s in stats.items() if not s.minmax.empty}
        ranges = {name: _range(spec, name, s) for name, s in kept.items()}
        return cls(model_sha256, spec, kept, ranges, data, samples, shard,
                   grams={k: g for k, g in (grams or {}).items() if g.total is not None})

    # --- queries ----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self.ranges)

    def __contains__(self, name: object) -> bool:
        return name in self.ranges

    def range(self, name: str) -> Range:
        """The chosen range of `name` for the table's method."""
        try:
            return self.ranges[name]
        except KeyError:
            raise CalibrationError(f"tensor {name!r} is not in the calibration table; recalibrate "
                                   "with ptq calibrate (the table may be for another version of "
                                   "the model)") from None

    def channel_mean(self, name: str):
        """Per-channel mean (axis 1) of a Conv/Gemm input, or None when it was not collected."""
        stats = self.stats.get(name)
        return None if stats is None or stats.mean is None else stats.mean.mean

    def check_model(self, sha256: str) -> None:
        if sha256 != self.model_sha256:
            raise CalibrationError(f"table was made for another model (sha {self.model_sha256[:12]}..., "
                                   f"this model is {sha256[:12]}...); recalibrate with ptq calibrate")

    def with_method(self, spec: CalibrationSpec) -> "CalibrationTable":
        """The same statistics with ranges recomputed for `spec` (no data is read again)."""
        stats = {name: _rebinned(name, s, spec.bins) for name, s in self.stats.items()}
        collected = replace(spec, bins=min(spec.bins, self.spec.bins),
                            moving_average=self.spec.moving_average)
        return CalibrationTable.build(self.model_sha256, collected, stats, data=self.data,
                                      samples=self.samples, shard=self.shard, grams=self.grams)

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        tensors = {}
        for name, stats in self.stats.items():
            entry = stats.to_dict()
            entry["range"] = list(self.ranges[name])
            tensors[name] = entry
        out = {"format": FORMAT, "version": VERSION, "tool": self.tool,
               "model_sha256": self.model_sha256, "data": self.data, "samples": self.samples,
               "shard": list(self.shard) if self.shard else None,
               "calibration": spec_to_dict(self.spec), "tensors": tensors}
        if self.grams:
            out["grams"] = {key: gram.to_dict() for key, gram in self.grams.items()}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "calibration table") -> "CalibrationTable":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CalibrationError(f"{where} is not a ptq calibration table (no \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise CalibrationError(f"{where} has version {data.get('version')!r}; this ptq reads "
                                   f"version {VERSION}: recalibrate with ptq calibrate")
        validate_table(data, where)
        try:
            spec = spec_from_dict(data["calibration"], f"{where}: calibration")
            stats = {n: TensorStats.from_dict(t) for n, t in data["tensors"].items()}
            ranges = {n: (float(t["range"][0]), float(t["range"][1])) for n, t in data["tensors"].items()}
            shard = tuple(data["shard"]) if data.get("shard") else None
            grams = {k: Gram.from_dict(g) for k, g in (data.get("grams") or {}).items()}
            return cls(str(data["model_sha256"]), spec, stats, ranges, str(data.get("data", "")),
                       int(data.get("samples", 0)), shard, str(data.get("tool", "")), grams)
        except (KeyError, TypeError, ValueError, IndexError, binascii.Error) as exc:
            raise CalibrationError(f"{where} is damaged ({type(exc).__name__}: {exc}); "
                                   "recalibrate with ptq calibrate") from None

    def save(self, path: str | os.PathLike, *, force: bool = False,
             protect: tuple[str | os.PathLike | None, ...] = ()) -> Path:
        """Write atomically through the one write path; an existing file needs force."""
        text = json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False) + "\n"
        return write_text(path, text, force=force, protect=protect)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CalibrationTable":
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"calibration table not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CalibrationError(f"{path} is not valid JSON ({exc}); recalibrate with ptq calibrate") from None
        return cls.from_dict(data, str(path))


def merge(tables: Sequence[CalibrationTable]) -> CalibrationTable:
    """One table equal to a single run over the union of the shards' samples.

    min/max are exact; histograms are exact too (see observers.Histogram); an EMA is averaged.
    """
    if not tables:
        raise UsageError("give at least one calibration table to merge")
    _refuse_repeats(tables)
    first = tables[0]
    for other in tables[1:]:
        if other.model_sha256 != first.model_sha256:
            raise CalibrationError(f"cannot merge tables of different models (sha {first.model_sha256[:12]}... "
                                   f"and {other.model_sha256[:12]}...); calibrate every shard on the same model")
        if other.spec != first.spec:
            raise CalibrationError("cannot merge tables made with different calibration settings "
                                   f"({spec_to_dict(first.spec)} vs {spec_to_dict(other.spec)}); use the same flags for every shard")
        if set(other.grams) != set(first.grams):
            raise CalibrationError("cannot merge tables with and without second-order statistics (--gram); "
                                   "use the same flags for every shard")
    stats: dict[str, TensorStats] = {}
    for table in tables:
        for name, s in table.stats.items():
            try:
                if name in stats:
                    stats[name].merge(s)
                else:
                    stats[name] = s.copy()
            except (ValueError, IndexError, TypeError, ArithmeticError) as exc:  # not from a calibration run
                raise CalibrationError(f"tensor {name!r}: its statistics do not merge ({exc}); a table was "
                                       "edited or damaged: recalibrate it with ptq calibrate") from None
    grams = {key: Gram() for key in first.grams}
    for table in tables:
        for key, gram in table.grams.items():
            grams[key].merge(gram)
    data = "; ".join(dict.fromkeys(t.data for t in tables))
    return CalibrationTable.build(first.model_sha256, first.spec, stats, data=data,
                                  samples=sum(t.samples for t in tables), grams=grams)


def _refuse_repeats(tables: Sequence[CalibrationTable]) -> None:
    """A shard given twice would count its samples twice: refuse it (and identical tables)."""
    seen_shards: dict[tuple[int, int], int] = {}
    seen_content: dict[str, int] = {}
    for i, table in enumerate(tables):
        if table.shard is not None:
            if table.shard in seen_shards:
                raise CalibrationError(f"shard {table.shard[0]}/{table.shard[1]} is given twice (tables "
                                       f"{seen_shards[table.shard] + 1} and {i + 1}); its samples would count "
                                       "twice: give each shard once")
            seen_shards[table.shard] = i
        digest = hashlib.sha256(json.dumps(table.to_dict(), sort_keys=True).encode()).hexdigest()
        if digest in seen_content:
            raise CalibrationError(f"tables {seen_content[digest] + 1} and {i + 1} are the same table; its "
                                   "samples would count twice: give each table once")
        seen_content[digest] = i
    splits = {t.shard[1] for t in tables if t.shard is not None}
    if len(splits) > 1:
        raise CalibrationError(f"the shards come from different splits (N = {sorted(splits)}); their samples "
                               "overlap: merge the shards of one --shard K/N run")


def spec_to_dict(spec: CalibrationSpec) -> dict[str, Any]:
    return {"method": spec.method.value, "percentile": spec.percentile, "bins": spec.bins,
            "moving_average": spec.moving_average}


def spec_from_dict(data: Any, where: str) -> CalibrationSpec:
    if not isinstance(data, dict) or not set(data) <= {"method", "percentile", "bins", "moving_average"}:
        raise CalibrationError(f"{where} must hold method, percentile, bins, moving_average; got {data!r}")
    try:
        method = CalibMethod(data.get("method", "minmax"))
    except ValueError:
        raise CalibrationError(f"{where}: unknown method {data.get('method')!r}") from None
    try:
        return CalibrationSpec(method=method, percentile=float(data.get("percentile", 99.999)),
                               bins=int(data.get("bins", 2048)), moving_average=data.get("moving_average"))
    except (UsageError, ValueError, TypeError) as exc:  # a hand-edited value: name where it is
        raise CalibrationError(f"{where}: {exc}") from None


def _range(spec: CalibrationSpec, name: str, stats: TensorStats) -> Range:
    mn, mx = stats.min_max
    try:
        lo, hi = compute_range(spec, mn, mx, stats.histogram)
    except CalibrationError as exc:
        raise CalibrationError(f"tensor {name!r}: {exc}") from None
    except (ValueError, IndexError, ArithmeticError) as exc:  # statistics no calibration run produces
        raise CalibrationError(f"tensor {name!r}: its statistics are inconsistent ({exc}); the table was "
                               "edited or damaged: recalibrate with ptq calibrate") from None
    check_range(name, lo, hi)  # every range passes here: fresh calibration, merges, --method switches
    return lo, hi


def _rebinned(name: str, stats: TensorStats, bins: int) -> TensorStats:
    if stats.histogram is None or bins >= stats.histogram.bins:
        return stats
    try:
        coarse = stats.histogram.coarsened(bins)
    except (ValueError, IndexError, ArithmeticError) as exc:  # a histogram no calibration run produces
        raise CalibrationError(f"tensor {name!r}: its histogram is inconsistent ({exc}); the table was edited "
                               "or damaged: recalibrate with ptq calibrate") from None
    return TensorStats(stats.minmax, coarse, stats.ema, stats.channels, stats.mean)
