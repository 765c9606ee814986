"""What every command prints when it ends: one line and the documented exit code for an error,
strict JSON for --json. Apart from __init__.py (the root command), which imports every command
module, so that the commands can import these without importing their own package back."""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager

import click

from ptq_cli.foreign_errors import as_ptq_error


@contextmanager
def reported_errors(ctx: click.Context):
    """Turn any error into one line on stderr and its exit code (a traceback with --debug):
    PtqErrors as they are, everything else through ptq_cli.foreign_errors."""
    try:
        yield
    except KeyboardInterrupt:
        interrupted()
    except Exception as exc:
        if isinstance(exc, click.ClickException) or (ctx.find_root().obj or {}).get("debug"):
            raise
        error = as_ptq_error(exc)
        fail(str(error), error.exit_code)


def echo_json(data, **dumps) -> None:
    """Print `data` as strict JSON on stdout: NaN and infinities (an unknown scale, an exact
    output's SQNR) become null, numpy scalars plain numbers, so every JSON parser reads it."""
    click.echo(json.dumps(_plain(data), allow_nan=False, **dumps))


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()  # a numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def fail(message: str, code: int) -> None:
    click.echo(f"ptq: error: {message}", err=True)
    sys.exit(code)


def interrupted() -> None:
    click.echo("ptq: interrupted; no output was written", err=True)
    sys.exit(130)
