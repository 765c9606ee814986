"""`ptq quantize`: flags -> Recipe -> ptq_cli.quantize() -> summary."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from ptq_cli.cli.reporting import echo_json, reported_errors
from ptq_cli.cli.budget_options import budget_from_options, budget_options, drift_lines, pop_budget_options
from ptq_cli.cli.data_options import data_options, image_preprocess_from_options, pop_data_options
from ptq_cli.cli.engine_options import engine_options, engine_spec_from_options, pop_engine_options
from ptq_cli.engine import open_engine
from ptq_cli.files import check_output
from ptq_cli.model.kernels import host_kernels
from ptq_cli.quantization.placement.latency.search import IfSlower, Objective
from ptq_cli.recipe import (ExcludedConvInput, DEFAULT_DYNAMIC_OPS, CalibMethod, CalibrationSpec, Format, PerChannel, PerTensor, QType,
                            Recipe, Rounding, Target, TensorSpec, WeightCodebook, WeightOnly, load_recipe)

_QTYPES = [q.value for q in QType]


@click.command("quantize")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the INT8 model [default: MODEL.int8.onnx beside MODEL].")
@data_options(required=False)
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="TABLE",
              help="A table from `ptq calibrate` (used instead of --data; no data is read again).")
@click.option("--method", type=click.Choice([m.value for m in CalibMethod]), default="minmax", show_default=True,
              help="How activation ranges are chosen from the calibration statistics.")
@click.option("--percentile", type=float, default=99.999, show_default=True, help="For --method percentile.")
@click.option("--bins", type=int, default=2048, show_default=True, help="Histogram bins (entropy/percentile/mse).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="Calibration batch size (models whose batch is fixed at 1 always get 1).")
@click.option("--max-samples", type=click.IntRange(min=1), help="Use at most N calibration samples.")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="One weight scale per output channel, or one per tensor.")
@click.option("--weight-type", type=click.Choice(_QTYPES), default="int8", show_default=True)
@click.option("--activation-type", type=click.Choice(_QTYPES), default="uint8", show_default=True)
@click.option("--symmetric-activations", is_flag=True, help="Zero-point at the middle of the activation range.")
@click.option("--asymmetric-weights", is_flag=True, help="Weights with a zero-point (default: symmetric).")
@click.option("--target", type=click.Choice(["portable", "vnni", "host"]), default="portable", show_default=True,
              help="The CPUs the model must be exact on. portable: every x86-64 and ARM CPU (int8 weights "
                   "whose pairs cannot saturate the 16-bit sums of x86 CPUs without VNNI: AVX2, most AMD EPYC "
                   "before Zen 4, older Intel); vnni: full-range weights, exact only where integer kernels "
                   "accumulate in 32 bits (x86 with VNNI or AMX, ARM); host: probe this machine's "
                   "onnxruntime once and choose (recorded in the output's metadata).")
@click.option("--reduce-range", is_flag=True,
              help="7-bit weights (the older cure for CPUs without VNNI; --target portable keeps 8 bits).")
@click.option("--power-of-two", is_flag=True, help="Round every scale up to a power of two (integer-only hardware).")
@click.option("--bias-correction/--no-bias-correction", default=True, show_default=True,
              help="Subtract the mean shift weight rounding adds to each Conv/Gemm output, (W_q - W)·E[x], "
                   "measured on the calibration data. Free at inference.")
@click.option("--equalize", is_flag=True,
              help="Cross-layer equalization of Conv -> Relu/ReLU6 -> Conv pairs before quantizing, so "
                   "per-tensor weight scales fit every channel (one extra calibration pass).")
@click.option("--rounding", type=click.Choice([r.value for r in Rounding]), default="nearest", show_default=True,
              help="How weights become integers: nearest (round half to even), gptq (error feedback "
                   "through the input Gram matrix), stochastic (unbiased random rounding, see --seed).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of every random choice (stochastic rounding): the same seed, the same bytes.")
@click.option("--weight-codebook", type=click.IntRange(1, 8), metavar="BITS",
              help="Cluster each weight (per output channel, or --per-tensor) to 2^BITS float centroids "
                   "by k-means; the file stores indices + codebook and runs in float. --data (optional) "
                   "weights the clustering by each layer's input energy.")
@click.option("--weight-only", type=click.Choice(["int4", "int8"]),
              help="Block-wise weights of MatMul and Gather tables only, activations float (no data needed with "
                   "--rounding nearest): com.microsoft.MatMulNBits / GatherBlockQuantized, or with --format qdq "
                   "block-wise DequantizeLinear (opset 21).")
@click.option("--block-size", type=click.Choice(["16", "32", "64", "128", "256"]), default="32", show_default=True,
              help="Weights per scale along the input axis, with --weight-only.")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=0, show_default=True,
              help="MatMulNBits' compute type with --weight-only: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 "
                   "(activations quantized per block at run time: faster, less exact).")
@click.option("--format", "fmt", type=click.Choice([f.value for f in Format]), default="qdq", show_default=True,
              help="qdq: Quantize/DequantizeLinear pairs around float ops; qoperator: QLinearConv, ... ops.")
@click.option("--data-free", is_flag=True,
              help="Static quantization without data: ranges from BatchNormalization statistics where the "
                   "model has them, else from synthetic inputs (images drawn as 'dead leaves' and preprocessed "
                   "as --preset/--scale/--mean/--std declare; raw 0..255 when undeclared). --seed, --max-samples.")
@click.option("--dynamic", is_flag=True,
              help="Weights now, activation ranges at run time (no data needed; best for MatMul-heavy models).")
@click.option("--dynamic-ops", metavar="OPS", default=",".join(DEFAULT_DYNAMIC_OPS), show_default=True,
              help="Op types --dynamic rewrites, comma-separated, of MatMul, Gemm, Conv, LSTM (ConvInteger is "
                   "slower than float Conv in onnxruntime, so Conv is left out by default).")
@click.option("--exclude", multiple=True, metavar="NODE_OR_OP",
              help="Leave a node (by name) or every node of an op type in float (an Add/Mul/Sigmoid/pool that "
                   "then reads only float nodes stays float with it). Repeatable.")
@click.option("--objective", type=click.Choice([o.value for o in Objective]), default="size", show_default=True,
              help="size: quantize every node that can be and time nothing: the same bytes from every run "
                   "on every machine; speed: time placements on this machine (float stem/prefix, integer "
                   "region after it) and write the fastest (if none beats FP32, see --if-slower), which "
                   "depends on this machine and its load; accuracy: of those placements, the one with most "
                   "nodes in float that still beats FP32. Static quantization only.")
@click.option("--excluded-conv-input", type=click.Choice([e.value for e in ExcludedConvInput]), default="float",
              show_default=True,
              help="What a Conv left in float reads when its producer is integer: the float tensor (exact; "
                   "the producer runs float too) or a per-channel DequantizeLinear (the producer keeps its "
                   "integer kernel). --objective speed times both when --exclude names nodes.")
@click.option("--if-slower", type=click.Choice([i.value for i in IfSlower]), default="int8", show_default=True,
              help="With --objective speed, when no INT8 placement beats FP32 here: int8 (write the fastest "
                   "INT8 model and warn: it may be for a smaller file or another machine), fail (exit 1, "
                   "nothing written: a gate for CI on the deployment machine) or float (write the float model).")
@click.option("--recipe", "recipe_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A recipe JSON (as recorded in an output's metadata); flags are then ignored and nothing "
                   "is timed: the recorded placement is reproduced byte for byte.")
@budget_options
@engine_options
@click.option("-f", "--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary on stderr.")
@click.pass_context
def quantize_command(ctx: click.Context, model: Path, output: Path | None, calibration: Path | None,
                     recipe_file: Path | None, force: bool, as_json: bool, quiet: bool, batch_size: int,
                     max_samples: int | None, objective: str, if_slower: str, data_free: bool, target: str,
                     **flags) -> None:
    """Quantize MODEL to INT8 and write OUTPUT.

    Static quantization needs activation ranges: from --data DIR (calibrated now) or from
    --calibration TABLE (made earlier by `ptq calibrate`). --dynamic needs neither.

    \b
    Examples:
      ptq quantize model.onnx --data calib/
      ptq quantize model.onnx --data images/ --preset imagenet-tf --method percentile
      ptq quantize model.onnx --calibration model.calib.json --per-tensor -o out.onnx
      ptq quantize model.onnx --dynamic
      ptq quantize model.onnx --data calib/ --eval-data eval/ --min-cosine 0.99

    The drift against FP32 is measured on up to 100 calibration samples (or --eval-data) and must meet
    a budget (default: mean cosine >= 0.97 and top-1 agreement >= 0.9 on every output that has
    them; embeddings cosine >= 0.99; per-step scores 0.996 of the steps and 0.95 of the sequences
    decoded as FP32's); the most sensitive nodes go back to float until it does. Exit 3, nothing written,
    when it cannot be met (unless --best-effort).
    """
    # --help start-up: quantization costs ~110 ms
    from ptq_cli.quantization.api import default_output, quantize

    data_opts = pop_data_options(flags)
    budget_opts = pop_budget_options(flags)
    engine_opts = pop_engine_options(flags)
    with reported_errors(ctx):
        engine_spec, parts = engine_spec_from_options(**engine_opts)
        if parts is not None:
            raise click.UsageError("--parts splits a calibration's data (ptq calibrate); the search hands its "
                                   "samples out by itself")
        probed = None
        if target == "host" and recipe_file is None:
            probed = host_kernels()
        recipe = _recipe(recipe_file, **flags, target=None if recipe_file else _target(target, probed),
                         fmt_given=ctx.get_parameter_source("fmt").name != "DEFAULT")
        output = output or default_output(model, recipe)
        # Every file the command reads, flags included, is an input the output must not replace.
        check_output(output, force=force, protect=(model, data_opts.get("data"), data_opts.get("labels"),
                                                   calibration, recipe_file, budget_opts["eval_data"]))
        run = dict(data=data_opts.get("data"),
                   calibration=calibration, recipe=recipe, image=image_preprocess_from_options(**data_opts),
                   force=force, progress=not quiet, batch_size=batch_size, max_samples=max_samples,
                   objective=Objective.SIZE if recipe_file else Objective(objective),
                   if_slower=IfSlower(if_slower),
                   eval_data=budget_opts["eval_data"], labels=data_opts.get("labels"),
                   budget=budget_from_options(**budget_opts), data_free=data_free, probed_host=probed)
        if engine_spec is None:
            result = quantize(model, output, **run)
        else:
            with open_engine(engine_spec) as engine:
                result = quantize(model, output, engine=engine, **run)
    if as_json:
        echo_json(result.to_dict(), indent=2)
    if not quiet:
        click.echo(_summary(result), err=True)


def _target(asked: str, probed) -> Target:
    """portable / vnni as asked; host as the probe found this machine's kernels."""
    if asked == "host":
        return Target.PORTABLE if probed.saturates else Target.VNNI
    return Target(asked)


def _recipe(recipe_file: Path | None, *, method, percentile, bins, per_channel, weight_type, activation_type,
            symmetric_activations, asymmetric_weights, reduce_range, power_of_two, fmt, dynamic, exclude,
            bias_correction, equalize, rounding, seed, weight_codebook, dynamic_ops, weight_only, block_size,
            accuracy_level, excluded_conv_input, target: Target | None, fmt_given: bool = False) -> Recipe:
    if recipe_file is not None:
        return load_recipe(recipe_file)
    weights = TensorSpec(QType(weight_type), symmetric=not asymmetric_weights,
                         granularity=PerChannel() if per_channel else PerTensor(),
                         reduce_range=reduce_range, power_of_two=power_of_two)
    activations = TensorSpec(QType(activation_type), symmetric=symmetric_activations, granularity=PerTensor(),
                             power_of_two=power_of_two)
    blocks = None
    if weight_only is not None:
        blocks = WeightOnly(QType(weight_only), int(block_size), symmetric=not asymmetric_weights,
                            qdq=fmt_given and fmt == "qdq", accuracy_level=accuracy_level)
    return Recipe(weights=weights, activations=activations, format=Format(fmt), dynamic=dynamic, weight_only=blocks,
                  exclude=tuple(exclude), bias_correction=bias_correction, equalize=equalize,
                  rounding=Rounding(rounding), seed=seed,
                  weight_codebook=None if weight_codebook is None else WeightCodebook(
                      weight_codebook, PerChannel() if per_channel else PerTensor()),
                  dynamic_ops=tuple(op.strip() for op in dynamic_ops.split(",") if op.strip()),
                  excluded_conv_input=ExcludedConvInput(excluded_conv_input), target=target,
                  calibration=CalibrationSpec(method=CalibMethod(method), percentile=percentile, bins=bins))


def _summary(result) -> str:
    if result.float_written:
        return "\n".join([f"wrote {result.output}: the float model, unchanged"] + _latency_lines(result))
    lines = [f"wrote {result.output}" if result.output else "no output written",
             f"  quantized {len(result.quantized)} nodes"
             + (f" ({len(result.fused)} Relu/Clip folded into their producer)" if result.fused else ""),
             f"  size {result.size_before / 1e6:.2f} MB -> {result.size_after / 1e6:.2f} MB"]
    lines += [f"  note: {note}" for note in result.notes]
    if result.range_sources:
        counts = Counter(result.range_sources.values())
        lines.append("  activation ranges: " + ", ".join(f"{n} from {origin}" for origin, n in counts.most_common()))
        from_bn = sorted(t for t, origin in result.range_sources.items() if origin.startswith("BatchNorm"))
        if from_bn:
            lines.append(f"    from BatchNormalization: {', '.join(from_bn[:4])}{' ...' if len(from_bn) > 4 else ''}")
    if result.latency is not None:
        lines += _latency_lines(result)
    if result.skipped:
        reasons = Counter((s.op_type, s.reason) for s in result.skipped)
        lines.append(f"  left in float: {len(result.skipped)} nodes")
        ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
        for (op_type, reason), count in ranked[:_REASON_LINES]:
            lines.append(f"    {count:4d} x {op_type}: {reason}")
        if len(ranked) > _REASON_LINES:  # a transformer names each normalization, GELU, ... by its tensor
            rest = sum(count for _, count in ranked[_REASON_LINES:])
            lines.append(f"    ... {rest} more nodes for {len(ranked) - _REASON_LINES} more reasons (--json lists every node)")
    for reason in getattr(result, "prepare_skipped", ()):
        lines.append(f"  warning: {reason}")
    lines += drift_lines(result)
    return "\n".join(lines)


_REASON_LINES = 25


def _latency_lines(result) -> list[str]:
    decision = result.latency
    fallback = set(result.drift.fallback) if result.drift else set()
    prefix = [name for name in decision.chosen.float_nodes if name not in fallback]  # the fallback's are listed apart
    lines = [f"  latency here ({decision.timed_on}; {len(decision.trials)} placements timed, interleaved medians): "
             f"FP32 {decision.fp32.median_ms:.3f} ms, INT8 {decision.chosen.timing.median_ms:.3f} ms, "
             f"{decision.speedup:.2f}x (median of the per-round ratios)"]
    if prefix:
        lines.append(f"  kept in float for speed (faster in FP32 here, in the recipe's exclude): {len(prefix)} nodes, "
                     f"{', '.join(prefix[:3])}{' ...' if len(prefix) > 3 else ''}")
    if result.float_written:
        lines.append("  INT8 does not pay on this machine: the float model was written (--if-slower float)")
    elif not decision.pays:
        lines.append(f"  warning: INT8 is slower than FP32 on this machine ({decision.speedup:.2f}x); written "
                     "anyway for its size (--if-slower fail refuses, --if-slower float writes the float model)")
    return lines
