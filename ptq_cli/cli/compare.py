"""`ptq compare REFERENCE CANDIDATE --data DIR`: measure drift, render reports, gate CI by exit code."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import click

from ptq_cli.cli.reporting import echo_json, reported_errors
from ptq_cli.cli.data_options import data_options, image_preprocess_from_options, pop_data_options
from ptq_cli.cli.engine_options import engine_options, engine_spec_from_options, pop_engine_options
from ptq_cli.engine import open_engine
from ptq_cli.files import check_distinct, check_output

_FILE = click.Path(dir_okay=False, writable=True, path_type=Path)


@click.command("compare")
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@data_options
@click.option("--per-layer", is_flag=True,
              help="Match every reference activation to its dequantized counterpart in a QDQ "
                   "candidate and report the SQNR per tensor, worst first; then measure each quantized "
                   "node alone (only its quantization on) and print an --exclude line for the worst.")
@click.option("--per-layer-samples", type=click.IntRange(min=1), default=32, show_default=True, metavar="N",
              help="Samples (the first N) for the per-node sensitivity runs of --per-layer.")
@click.option("--latency", is_flag=True,
              help="Also time both models (median and p10/p90 after warm-up, interleaved runs).")
@click.option("--min-sqnr", type=float, metavar="DB", help="Fail (exit 1) if any output's SQNR is below DB.")
@click.option("--max-top1-drop", type=click.FloatRange(min=0), metavar="PT",
              help="Fail (exit 1) if top-1 drops by more than PT percentage points: accuracy against "
                   "labels when given, else agreement with the reference.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), metavar="C",
              help="Fail (exit 1) if any output's mean cosine similarity is below C.")
@click.option("--min-agreement", type=click.FloatRange(0, 1), metavar="F",
              help="Fail (exit 1) if any output's top-1 agreement with REFERENCE (per step for [N, T, C] "
                   "scores, exact for integer outputs) is below F (a fraction).")
@click.option("--min-sequence-agreement", type=click.FloatRange(0, 1), metavar="F",
              help="Fail (exit 1) if, on any [N, T, C] step-scores output (a CTC head), the share of samples "
                   "decoded (greedy CTC: best class per step, repeats merged, blank dropped) as REFERENCE "
                   "decodes them is below F.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as JSON on stdout (schema in ptq_cli/comparison/report.py); "
                   "the table then goes to stderr.")
@click.option("--markdown", type=_FILE, metavar="FILE", help="Write a Markdown summary to FILE.")
@click.option("--junit", type=_FILE, metavar="FILE", help="Write JUnit XML, one test case per threshold.")
@click.option("--html", type=_FILE, metavar="FILE",
              help="Write a self-contained HTML report (per-layer SQNR chart, error histograms).")
@click.option("--max-samples", type=click.IntRange(min=1), metavar="N", help="Use at most N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Samples per run (models with a batch fixed at 1 are fed one at a time).")
@engine_options
@click.option("-f", "--force", is_flag=True, help="Replace report files (--markdown, --junit, --html) that exist.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
def compare_command(ctx: click.Context, reference: Path, candidate: Path, **kwargs) -> None:
    """Measure how far CANDIDATE, such as the INT8 model, drifted from REFERENCE.

    \b
    Reports SQNR, cosine, max/mean abs error and RMSE per output, top-1/top-5 agreement for
    classifiers, and accuracy with labels. Report files (--markdown, --junit, --html) are never
    written over an input, and replace an existing file only with --force. With
    GITHUB_STEP_SUMMARY set, the Markdown summary is appended there. Every report names this
    host's integer kernels (exact 32-bit, or saturating 16-bit pairs: x86 without VNNI) and warns
    when CANDIDATE can saturate on CPUs without VNNI but this host cannot show it.

    \b
    With --engine dask the output figures are measured on the cluster's workers (the same
    figures as one process); --latency still times this machine, on the first batches it reads
    itself, and --per-layer is not available (it runs in one process).

    Exit codes: 0 ok, 1 a threshold was missed, 2 usage error, 3 failure.
    """
    # --help start-up: ptq_cli.comparison (onnxruntime, tqdm, the drift measures) costs ~80 ms.
    from ptq_cli.comparison.html import render_html
    from ptq_cli.comparison.junit import render_junit
    from ptq_cli.comparison.render import render_markdown, render_text
    from ptq_cli.comparison.report_files import append_step_summary, write_report

    with reported_errors(ctx):
        data = pop_data_options(kwargs)
        engine_spec, parts = engine_spec_from_options(**pop_engine_options(kwargs))
        if engine_spec is not None and kwargs["per_layer"]:
            raise click.UsageError("--per-layer runs in one process; drop --engine dask for it")
        inputs = (reference, candidate, data["data"], data.get("labels"))
        reports = [kwargs[option] for option in ("markdown", "junit", "html")]
        check_distinct(reports)
        for path in reports:  # before the long measurement, so that a refusal costs nothing
            if path is not None:
                check_output(path, force=kwargs["force"], protect=inputs)
        with ExitStack() as stack:
            engine = None
            if engine_spec is not None:
                engine = stack.enter_context(open_engine(engine_spec))
            report = _compare(reference, candidate, data, kwargs, engine, parts)
        markdown = render_markdown(report)
        for option, render in (("markdown", lambda: markdown), ("junit", lambda: render_junit(report)),
                               ("html", lambda: render_html(report))):
            if kwargs[option] is not None:
                write_report(kwargs[option], render(), force=kwargs["force"], protect=inputs)
        summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if summary:
            append_step_summary(summary, markdown, protect=inputs)
    if kwargs["as_json"]:
        echo_json(report.to_dict(), indent=2)
        click.echo(render_text(report), err=True, nl=False)
    else:
        click.echo(render_text(report), nl=False)
    if report.host is not None and report.host.warning:
        click.echo(f"ptq: warning: {report.host.warning}", err=True)
    for failure in report.failures:
        click.echo(f"ptq: threshold missed: {failure}", err=True)
    ctx.exit(report.exit_code)


def _compare(reference: Path, candidate: Path, data: dict, kwargs: dict, engine, parts):
    """compare() with the command's flags; `engine` None runs it in this process."""
    # --help start-up: ~80 ms, as above
    from ptq_cli.comparison import Thresholds, compare

    return compare(
        reference, candidate, data["data"], labels=data.get("labels"),
        image=image_preprocess_from_options(**data), per_layer=kwargs["per_layer"],
        per_layer_samples=kwargs["per_layer_samples"],
        latency=kwargs["latency"], max_samples=kwargs["max_samples"], batch_size=kwargs["batch_size"],
        thresholds=Thresholds(kwargs["min_sqnr"], kwargs["max_top1_drop"], kwargs["min_cosine"],
                              kwargs["min_agreement"], kwargs["min_sequence_agreement"]),
        progress=not kwargs["quiet"], engine=engine, parts=parts)
