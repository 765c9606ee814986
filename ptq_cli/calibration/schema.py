"""Strict validation of a calibration table's JSON before anything reads it, and the range
sanity check every range passes wherever it enters (tables, merges, fresh calibration).

A hand-edited table fails here with the key, what was expected and what was found, instead of
deep inside numpy; a range that would give a model of garbage (inverted, NaN, or so large that
scales overflow float32) is refused with the tensor's name.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from ptq_cli.errors import CalibrationError

# Activations beyond this are not a range a float32 model computes with: scales and the int32
# bias scale S_x·S_w would overflow float32 (max 3.4e38) or lose every bit of precision.
RANGE_LIMIT = 1e30

Check = Callable[[Any, str], None]


def check_range(name: str, lo: float, hi: float, where: str = "") -> None:
    """Refuse a range that cannot give a working quantized tensor."""
    at = f"{where}: " if where else ""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise CalibrationError(f"{at}tensor {name!r} has a range that is not finite ({lo}, {hi}); "
                               "recalibrate with ptq calibrate")
    if lo > hi:
        raise CalibrationError(f"{at}tensor {name!r} has an inverted range (min {lo} > max {hi}); "
                               "recalibrate with ptq calibrate")
    if max(abs(lo), abs(hi)) > RANGE_LIMIT:
        raise CalibrationError(f"{at}tensor {name!r} has a range of {max(abs(lo), abs(hi)):.3g}, beyond "
                               f"{RANGE_LIMIT:.0e}: its scale would overflow float32; check the data and "
                               "the model, and recalibrate")


def validate_table(data: Any, where: str) -> None:
    """Raise CalibrationError naming the first key that does not fit the table format."""
    try:
        _validate(data)
    except CalibrationError as exc:
        raise CalibrationError(f"{where}: {exc}") from None


def _validate(data: Any) -> None:
    obj(data, "", required={"format": string, "version": integer(), "model_sha256": string,
                               "calibration": _calibration, "tensors": dict_of(_tensor)},
        optional={"tool": string, "data": string, "samples": integer(0), "shard": nullable(_shard),
                  "grams": dict_of(_gram)})
    for name, entry in data["tensors"].items():
        check_range(name, float(entry["min"]), float(entry["max"]), f"key tensors.{name} (min/max)")
        lo, hi = entry["range"]
        check_range(name, float(lo), float(hi), f"key tensors.{name}.range")
        if "histogram" in entry:
            _check_histogram_geometry(name, entry["histogram"], entry)


def _check_histogram_geometry(name: str, hist: dict, entry: dict) -> None:
    """The histogram must cover the tensor's min/max on its grid, as one collected by ptq does."""
    where = f"key tensors.{name}.histogram"
    counts, exp, origin = hist["counts"], hist["width_exponent"], hist["origin_bin"]
    problem = None
    if hist.get("min", entry["min"]) != entry["min"] or hist.get("max", entry["max"]) != entry["max"]:
        problem = "has a min/max other than the tensor's"
    elif len(counts) > hist["bins"]:
        problem = f"holds {len(counts)} counts for {hist['bins']} bins"
    elif exp is None:
        if entry["min"] != 0 or entry["max"] != 0:
            problem = "has no bin width although the tensor is not all zeros"
    elif not -1100 < exp < 1100:
        problem = f"has a bin width of 2**{exp}"
    else:
        width = math.ldexp(1.0, exp)
        low, high = origin * width, (origin + len(counts)) * width
        if not counts or entry["min"] < low or entry["max"] > high:
            problem = f"covers [{low:g}, {high:g}], not the tensor's [{entry['min']:g}, {entry['max']:g}]"
    if problem:
        raise CalibrationError(f"{where} {problem}: it was edited or damaged; recalibrate with ptq calibrate")


# --- the building blocks -------------------------------------------------------------------
def obj(value: Any, where: str, required: dict[str, Check], optional: dict[str, Check] | None = None) -> None:
    optional = optional or {}
    if not isinstance(value, dict):
        raise _expected(where, "an object", value)
    missing = sorted(set(required) - set(value))
    inside = f" in {where}" if where else ""
    if missing:
        raise CalibrationError(f"missing key(s) {missing}{inside}; fix the table or recalibrate with ptq calibrate")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise CalibrationError(f"unknown key(s) {unknown}{inside}; allowed: {sorted({**required, **optional})}")
    for key, check in {**required, **optional}.items():
        if key in value:
            check(value[key], f"{where}.{key}" if where else key)


def string(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise _expected(where, "a string", value)


def number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _expected(where, "a finite number", value)


def integer(minimum: int | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise _expected(where, "an integer" + (f" >= {minimum}" if minimum is not None else ""), value)
    return check


def nullable(inner: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if value is not None:
            inner(value, where)
    return check


def list_of(inner: Check, length: int | None = None) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise _expected(where, "a list" + (f" of {length}" if length is not None else ""), value)
        for i, item in enumerate(value):
            inner(item, f"{where}[{i}]")
    return check


def dict_of(inner: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _expected(where, "an object (name -> entry)", value)
        for key, item in value.items():
            inner(item, f"{where}.{key}")
    return check


def _expected(where: str, what: str, got: Any) -> CalibrationError:
    shown = repr(got)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return CalibrationError(f"key {where or '(top level)'} must be {what}, got {type(got).__name__} {shown}; "
                            "fix the table or recalibrate with ptq calibrate")


# --- the table's parts ---------------------------------------------------------------------
def _calibration(value: Any, where: str) -> None:
    obj(value, where, required={}, optional={"method": string, "percentile": number, "bins": integer(16),
                                             "moving_average": nullable(number)})


def _shard(value: Any, where: str) -> None:
    list_of(integer(0), 2)(value, where)
    if value[0] >= value[1]:
        raise CalibrationError(f"key {where} must be [K, N] with K < N, got {value}")


def _tensor(value: Any, where: str) -> None:
    obj(value, where, required={"min": number, "max": number, "count": integer(0), "range": list_of(number, 2)},
        optional={"histogram": _histogram, "moving_average": _moving_average,
                  "per_channel": _per_channel, "channel_mean": _channel_mean})


def _histogram(value: Any, where: str) -> None:
    obj(value, where, required={"bins": integer(2), "width_exponent": nullable(integer()), "origin_bin": integer(),
                                "counts": list_of(integer(0))},
        optional={"width": number, "min": number, "max": number})


def _moving_average(value: Any, where: str) -> None:
    obj(value, where, required={"constant": number, "min": number, "max": number, "batches": integer(0)})


def _per_channel(value: Any, where: str) -> None:
    obj(value, where, required={"axis": integer()},
        optional={"min": nullable(list_of(number)), "max": nullable(list_of(number))})


def _channel_mean(value: Any, where: str) -> None:
    obj(value, where, required={"count": integer(0)}, optional={"sum": nullable(list_of(number))})


def _gram(value: Any, where: str) -> None:
    obj(value, where, required={"shape": list_of(integer(0)), "batches": integer(0), "float64_base64": string})
