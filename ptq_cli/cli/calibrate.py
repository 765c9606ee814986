"""`ptq calibrate MODEL --data DIR ...` and `ptq calibrate merge A.json B.json ... -o TABLE.json`.

A click Group cannot take a positional MODEL before its sub-command (`ptq calibrate merge ...`
would parse "merge" as the model), so `calibrate` is a plain command whose class routes a
literal first word `merge` to the merge command. Both keep their own --help. A model file
really named `merge` is reached as `./merge`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from ptq_cli.cli.reporting import echo_json, reported_errors
from ptq_cli.cli.data_options import data_options, dataset_from_options, pop_data_options
from ptq_cli.cli.engine_options import engine_options, engine_spec_from_options, pop_engine_options
from ptq_cli.engine import open_engine
from ptq_cli.model.io import check_writable
from ptq_cli.recipe import CalibMethod, CalibrationSpec


class ShardType(click.ParamType):
    """K/N: every N-th sample from offset K (0 <= K < N)."""

    name = "K/N"

    def convert(self, value: Any, param, ctx) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        parts = str(value).split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not a shard; write K/N such as 0/4", param, ctx)
        if not 0 <= index < count:
            self.fail(f"shard {value} needs 0 <= K < N", param, ctx)
        return index, count


class _CalibrateCommand(click.Command):
    """Routes `ptq calibrate merge ...` to `merge_command` (see the module docstring)."""

    def make_context(self, info_name, args, parent=None, **extra):
        if args[:1] == ["merge"]:
            return merge_command.make_context(f"{info_name} merge", list(args[1:]), parent=parent, **extra)
        return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context):
        if ctx.command is not self:
            return ctx.command.invoke(ctx)
        return super().invoke(ctx)


@click.command("calibrate", cls=_CalibrateCommand, epilog=(
    "Shards: run `ptq calibrate MODEL --data DIR --shard K/N` for K = 0..N-1 (anywhere), then "
    "`ptq calibrate merge model.calib.shard-*.json -o model.calib.json` gives the table of one "
    "run over all the data. See `ptq calibrate merge --help`. On a Dask cluster: --engine dask "
    "(--address URL, or local); the table is the one this process writes, byte for byte "
    "(not with --moving-average, which has no exact merge). See docs/distributed.md."))
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_options
@click.option("--method", type=click.Choice([m.value for m in CalibMethod]), default="minmax",
              show_default=True, help="How each activation's range is chosen from the statistics.")
@click.option("--percentile", type=click.FloatRange(0, 100, min_open=True), default=99.999,
              show_default=True, help="Central percentage of values kept by --method percentile.")
@click.option("--bins", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Maximum histogram bins (between N/2 and N are used).")
@click.option("--moving-average", type=click.FloatRange(0, 1, min_open=True), metavar="C",
              help="Use an exponential moving average of per-batch min/max (constant C) for minmax.")
@click.option("--keep-histograms", is_flag=True,
              help="Collect histograms with --method minmax too, so a later "
                   "`ptq quantize --calibration TABLE --method ...` can switch method.")
@click.option("--gram", is_flag=True,
              help="Also sum x·xᵀ of every MatMul/Gemm/Conv weight's input (for quantize --rounding gptq).")
@click.option("--max-samples", type=click.IntRange(min=1), help="Use at most N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rows per inference run (a model whose batch is fixed at 1 is fed one at a time).")
@click.option("--shard", type=ShardType(), help="Calibrate every N-th sample from offset K.")
@engine_options
@click.option("--provider", default="CPUExecutionProvider", show_default=True,
              help="onnxruntime execution provider.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Table path [default: MODEL.calib.json, MODEL.calib.shard-K-of-N.json with --shard].")
@click.option("-f", "--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary on stderr.")
@click.pass_context
def calibrate_command(ctx: click.Context, model: Path, **kwargs: Any) -> None:
    """Measure the activation ranges of MODEL over --data and write a calibration table (JSON).

    The table holds, per tensor, min/max (and histograms for entropy/percentile/mse), the chosen
    range, the model's sha256 and the data description; `ptq quantize --calibration TABLE` uses it
    without reading data again. Memory does not grow with the number of samples.
    """
    with reported_errors(ctx):
        # --help start-up: calibration costs ~60 ms
        from ptq_cli.calibration.api import calibrate

        data_opts = pop_data_options(kwargs)
        engine_spec, parts = engine_spec_from_options(**pop_engine_options(kwargs))
        spec = CalibrationSpec(method=CalibMethod(kwargs["method"]), percentile=kwargs["percentile"],
                               bins=kwargs["bins"], moving_average=kwargs["moving_average"])
        output = kwargs["output"] or default_output(model, kwargs["shard"])
        inputs = (model, data_opts.get("data"), data_opts.get("labels"))
        check_writable(output, force=kwargs["force"], protect=inputs)
        dataset = dataset_from_options(model, **data_opts)
        started = time.perf_counter()
        options = dict(spec=spec, batch_size=kwargs["batch_size"], max_samples=kwargs["max_samples"],
                       shard=kwargs["shard"], provider=kwargs["provider"],
                       histograms=kwargs["keep_histograms"] or None, grams=kwargs["gram"],
                       progress=not kwargs["quiet"])
        if engine_spec is None:
            table = calibrate(model, dataset, **options)
        else:
            with open_engine(engine_spec) as engine:
                table = calibrate(model, dataset, engine=engine, parts=parts, **options)
        table.save(output, force=kwargs["force"], protect=inputs)
        seconds = time.perf_counter() - started
        if not kwargs["quiet"]:
                click.echo(f"ptq: calibrated {len(table.names)} tensors on {table.samples} samples "
                       f"({spec.method.value}) in {seconds:.1f} s -> {output}", err=True)
        if kwargs["as_json"]:
            echo_json(_summary(table, output, seconds, model))


@click.command("merge")
@click.argument("tables", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The merged table.")
@click.option("-f", "--force", is_flag=True, help="Replace an existing output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.pass_context
def merge_command(ctx: click.Context, tables: tuple[Path, ...], output: Path, force: bool,
                  as_json: bool) -> None:
    """Merge calibration tables of shards (same model, same flags) into one.

    The result equals one run over all the shards' samples: min/max bit for bit, histograms
    exactly (they share a power-of-two grid). Tables of different models are refused.
    """
    with reported_errors(ctx):
        # --help start-up: as calibrate above
        from ptq_cli.calibration.table import CalibrationTable, merge

        check_writable(output, force=force, protect=tables)
        started = time.perf_counter()
        table = merge([CalibrationTable.load(p) for p in tables])
        table.save(output, force=force, protect=tables)
        seconds = time.perf_counter() - started
        click.echo(f"ptq: merged {len(tables)} tables ({table.samples} samples, "
                   f"{len(table.names)} tensors) -> {output}", err=True)
        if as_json:
            echo_json(_summary(table, output, seconds, None))


def default_output(model: Path, shard: tuple[int, int] | None) -> Path:
    stem = model.name[:-5] if model.name.lower().endswith(".onnx") else model.name
    suffix = f".calib.shard-{shard[0]}-of-{shard[1]}.json" if shard else ".calib.json"
    return model.with_name(stem + suffix)


def _summary(table, output: Path, seconds: float, model: Path | None) -> dict[str, Any]:
    return {"output": str(output), "model": None if model is None else str(model),
            "model_sha256": table.model_sha256, "method": table.spec.method.value,
            "samples": table.samples, "shard": list(table.shard) if table.shard else None,
            "data": table.data, "tensors": len(table.names), "seconds": round(seconds, 3),
            "ranges": {name: list(r) for name, r in table.ranges.items()}}
