"""The `ptq` command line. Only this package imports click.

Each command lives in its own module and only translates flags into typed objects (Recipe,
ImagePreprocess, ...) and calls the library; `reported_errors` (reporting.py) maps PtqError to
one line on stderr and the documented exit code (0 ok, 1 threshold missed, 2 usage error, 3 failure).
"""

from __future__ import annotations

import sys

import click

from ptq_cli import __version__
from ptq_cli.cli.calibrate import calibrate_command
from ptq_cli.cli.compare import compare_command
from ptq_cli.cli.inspect import inspect_command
from ptq_cli.cli.quantize import quantize_command
from ptq_cli.cli.reporting import fail, interrupted
from ptq_cli.foreign_errors import as_ptq_error


class _PtqGroup(click.Group):
    """The root command: whatever escapes a command ends as one line on stderr and the
    documented exit code (a traceback only with --debug), click's usage errors included."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "ptq"
            fail(f"{exc.format_message()} (see `{command} --help`)", 2)
        except click.ClickException as exc:
            fail(exc.format_message(), 3)
        except (click.Abort, KeyboardInterrupt):
            interrupted()
        except Exception as exc:
            if "--debug" in argv:
                raise
            error = as_ptq_error(exc)
            fail(str(error), error.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_PtqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


# Commands register here, one module each, so `ptq --help` lists them all.
for _command in (quantize_command, calibrate_command, compare_command, inspect_command):
    main.add_command(_command)
