"""The errors ptq raises. Each message names the thing that went wrong and what to do next.

The CLI maps them to exit codes through each class's `exit_code`: a usage error exits 2, every
other failure exits 3. Exit 1 means a threshold was missed: `ptq compare`'s, or the speed
objective's `--if-slower fail` (SlowerThanFloat, quantization/placement/latency/search.py). The
table of every code is docs/exit-codes.md.
"""


class PtqError(Exception):
    """Base of every error ptq reports to the user as one line."""

    exit_code = 3


class UsageError(PtqError):
    """The command line or the API call asks for something inconsistent."""

    exit_code = 2


class OutputExistsError(UsageError):
    """The output path exists and --force was not given."""


class ModelError(PtqError):
    """The model cannot be read, is invalid, or uses something ptq cannot handle."""


class DataError(PtqError):
    """The calibration/evaluation data is missing, malformed, or does not match the model."""


class CalibrationError(PtqError):
    """Calibration failed (NaN/Inf in an activation, a table for another model, ...)."""


class EngineError(PtqError):
    """The cluster that was asked for cannot be reached or started (--engine dask)."""
