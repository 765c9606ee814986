"""`ptq inspect MODEL`: scales, zero points, wasted range and requantization multipliers."""

from __future__ import annotations

from pathlib import Path

import click

from ptq_cli.cli.reporting import echo_json, reported_errors


@click.command("inspect")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="TABLE",
              help="The calibration table MODEL was quantized from: wasted fractions of activations are then "
                   "computed from their calibrated ranges (otherwise only where the graph bounds them).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.pass_context
def inspect_command(ctx: click.Context, model: Path, calibration: Path | None, as_json: bool) -> None:
    """Show each quantized tensor of MODEL (QDQ, QOperator or dynamic): type, scale, zero point,
    granularity, and the fraction of its integer range that its float range wastes; for
    integer ops the requantization multiplier M as a fixed-point M0 and shift; and for integer
    matrix ops the worst 16-bit pair sum of their int8 weights: whether the model is exact on x86
    CPUs without VNNI (portable) or can saturate there.

    \b
    Examples:
      ptq inspect model.int8.onnx
      ptq inspect model.int8.onnx --calibration model.calib.json --json
    """
    # --help start-up: ptq_cli.inspect costs ~22 ms
    from ptq_cli.inspect import inspect_file

    with reported_errors(ctx):
        report = inspect_file(model, calibration)
    echo_json(report.to_dict(), indent=2) if as_json else click.echo(report.render())
