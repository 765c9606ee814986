"""The `ptq` command line. Only this package imports click.

Each command lives in its own module and only translates flags into typed objects (Recipe,
ImagePreprocess, ...) and calls the library; `run_command` maps PtqError to one line on stderr
and the documented exit code (0 ok, 1 threshold missed, 2 usage error, 3 failure).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click

from ptq_cli import __version__
from ptq_cli.errors import PtqError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="ptq")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Post-training INT8 quantization of ONNX models.

    \b
    Typical flow:
      ptq calibrate model.onnx --data calib/ -o model.calib.json
      ptq quantize  model.onnx --calibration model.calib.json   # or --data calib/
      ptq compare   model.onnx model.int8.onnx --data eval/ --min-sqnr 20

    Exit codes: 0 ok, 1 a `compare` threshold was missed, 2 usage error, 3 failure.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


@contextmanager
def reported_errors(ctx: click.Context):
    """Turn a PtqError into one line on stderr and its exit code (a traceback with --debug)."""
    try:
        yield
    except PtqError as exc:
        if ctx.find_root().obj and ctx.find_root().obj.get("debug"):
            raise
        click.echo(f"ptq: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("ptq: interrupted; no output was written", err=True)
        sys.exit(130)


def _register() -> None:
    # Commands register here, one module each, so `ptq --help` lists them all.
    from ptq_cli.cli.calibrate import calibrate_command
    from ptq_cli.cli.compare import compare_command
    from ptq_cli.cli.inspect import inspect_command
    from ptq_cli.cli.quantize import quantize_command

    for command in (quantize_command, calibrate_command, compare_command, inspect_command):
        main.add_command(command)


_register()
