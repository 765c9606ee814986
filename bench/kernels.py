"""Top-1 of the INT8 models on this CPU and on an emulated AVX2 CPU (no VNNI), whose u8·s8
kernels add each pair of products in a saturating 16-bit lane (ptq_cli/quantization/arithmetic/pairs.py).

For each CNN of ../shared/realdata, from the same calibration files: ptq default (--target
portable: pair-bounded int8 weights), ptq --target vnni (full-range int8), ptq --target vnni
--reduce-range (7-bit weights), ptq --target vnni --weight-type uint8 (U8U8 kernel) and
onnxruntime's quantize_static QDQ (per-channel where the opset allows it, else per-tensor, as
latency.py does), beside FP32 as a control (float kernels differ between CPUs too). ptq runs
with its API defaults (MinMax, bias correction, --objective size: every node quantized).

Each model is evaluated natively and again by this script run under
`qemu-x86_64 -cpu Haswell,...` (`--evaluate`, exact integer arithmetic, ~10x slower), which
prints top-1 and the argmax of every image: agreement is the share of images whose native and
emulated predictions are equal. Evaluation uses 1 intra-op thread on both sides; latency is
timed natively (2 threads, batch 1, interleaved blocks as latency.py does).

    python bench/kernels.py                                  # all five CNNs, 500 evaluation images each
    python bench/kernels.py --models resnet8 --eval-limit 300
    python bench/kernels.py --no-emulation                   # native top-1 and latency only
    python bench/kernels.py --ort-granularities per-channel,per-tensor
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import realdata  # noqa: E402
from host import cpu_name  # noqa: E402
from common import GRANULARITIES, Outcome, Variant, build, check_loads, log, parse_list, pct, session  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT = realdata.CACHE / "kernels"
QEMU_CPU = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"  # AVX2 + FMA, no AVX-512, no VNNI
EVAL_THREADS = 1  # the same on both sides, so that only the kernels differ

# label -> (file name part, target, weight type, reduce_range)
PTQ_VARIANTS = {
    "ptq default (portable)": ("ptq-portable", "portable", "int8", False),
    "ptq --target vnni": ("ptq-vnni", "vnni", "int8", False),
    "ptq --target vnni --reduce-range": ("ptq-vnni-7bit", "vnni", "int8", True),
    "ptq --target vnni --weight-type uint8": ("ptq-vnni-u8", "vnni", "uint8", False),
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice to pre-process
    if args.evaluate:  # the child, usually under qemu: predictions on stdout as JSON
        print(json.dumps(_evaluate_all(args.models, args.evaluate, args.eval_limit)))
        return 0
    from ptq_cli.model.kernels import host_kernels

    models = parse_list(args.models, realdata.names(), "model")
    if not args.no_emulation and shutil.which(args.qemu) is None:
        raise SystemExit(f"{args.qemu} not found; install qemu-user or pass --no-emulation")
    started = time.perf_counter()
    settings = {"cpu": cpu_name(), "host_kernels": host_kernels().value, "eval_limit": args.eval_limit,
                "eval_threads": EVAL_THREADS, "latency_threads": args.threads, "latency_seconds": args.seconds,
                "emulation": None if args.no_emulation else f"{args.qemu} -cpu {args.qemu_cpu}",
                "onnxruntime": ort.__version__, "machine": platform.machine()}
    log(f"host: {settings['cpu']}, onnxruntime kernels: {settings['host_kernels']}")
    rows, emulated_kernels = [], {}
    for name in models:
        model_rows, kernels = _one_model(name, args)
        rows += model_rows
        emulated_kernels[name] = kernels
    settings["emulated_kernels"] = emulated_kernels
    settings["seconds"] = round(time.perf_counter() - started, 1)
    print(markdown(rows, settings))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    log(f"wrote {out} ({settings['seconds']} s)")
    return 0


def _one_model(name: str, args: argparse.Namespace) -> tuple[list[dict], str | None]:
    model = realdata.load(name, realdata.LoadOptions(eval_limit=args.eval_limit))
    log(f"{name}: {model.calib_count} calibration samples, {len(model.eval_y)} evaluation samples")
    variants = [("fp32", Outcome("ok", path=str(model.model_path)))]
    for label, (slug, target, weights, reduce_range) in PTQ_VARIANTS.items():
        variants.append((label, _ptq(model, OUT / f"{name}.{slug}.onnx", target, weights, reduce_range)))
    for gran in _ort_granularities(model, args.ort_granularities):
        variants.append((f"ort quantize_static {gran}", build(Variant("ort", gran), model, OUT)))
    for label, outcome in variants:
        if outcome.status != "ok":
            log(f"  {label}: {outcome.status}: {outcome.detail}")
    ok = [(label, o) for label, o in variants if o.status == "ok"]

    for label, outcome in ok:
        outcome.top1, outcome.extra["native_pred"] = evaluate(Path(outcome.path), model)
        log(f"  {label}: native {outcome.top1:.2f} %")
    kernels = None
    if not args.no_emulation:
        kernels = _emulate(name, ok, args)
    timings = _latency(model, [Path(o.path) for _, o in ok], args)
    for (label, outcome), ms in zip(ok, timings):
        outcome.extra["latency_ms"] = ms

    rows = []
    for label, o in variants:
        native, emulated = o.extra.pop("native_pred", None), o.extra.pop("emulated_pred", None)
        agreement = None if native is None or emulated is None else 100.0 * float(np.mean(native == emulated))
        rows.append({"model": name, "variant": label, "eval_samples": len(model.eval_y), "status": o.status,
                     "detail": o.detail, "path": o.path, "top1_native": o.top1,
                     "top1_emulated": o.extra.pop("top1_emulated", None), "agreement": agreement,
                     "latency_ms": o.extra.pop("latency_ms", None), "quantize_seconds": o.quantize_seconds,
                     "extra": o.extra})
    return rows, kernels


# --- building ----------------------------------------------------------------------------------

def _ptq(model: realdata.RealModel, out: Path, target: str, weights: str, reduce_range: bool) -> Outcome:
    """ptq through its Python API; a refusal (PtqError) is a result, reported in one line."""
    from ptq_cli.errors import PtqError
    from ptq_cli.quantization.api import quantize
    from ptq_cli.recipe import PerChannel, QType, Recipe, Target, TensorSpec

    OUT.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    try:
        recipe = Recipe(weights=TensorSpec(QType(weights), True, PerChannel(), reduce_range=reduce_range),
                        target=Target(target))
        result = quantize(str(model.model_path), str(out), data=str(model.calib_dir), recipe=recipe,
                          image=None, force=True, progress=False)
    except PtqError as exc:
        return Outcome("refused", detail=_first_line(exc))
    except Exception as exc:  # ptq's crash is a result of the benchmark, not its end
        log("".join(traceback.format_exception(exc, limit=-3)).rstrip())
        return Outcome("failed", detail=_first_line(exc))
    seconds = round(time.perf_counter() - start, 1)
    extra = {"quantized_nodes": len(result.quantized), "skipped_nodes": len(result.skipped),
             "notes": list(result.notes)}
    refused = check_loads(out)
    if refused is not None:
        return Outcome("invalid", path=str(out), detail=refused, quantize_seconds=seconds, extra=extra)
    return Outcome("ok", path=str(out), quantize_seconds=seconds, extra=extra)


def _ort_granularities(model: realdata.RealModel, asked: str) -> list[str]:
    """auto: per-channel where onnxruntime can write it (opset >= 13: per-axis DequantizeLinear)."""
    if asked != "auto":
        return parse_list(asked, GRANULARITIES, "granularity")
    opset = next(o.version for o in onnx.load(str(model.model_path), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx"))
    return ["per-channel" if opset >= 13 else "per-tensor"]


# --- evaluating --------------------------------------------------------------------------------

def evaluate(path: Path, model: realdata.RealModel) -> tuple[float, np.ndarray]:
    """Top-1 in % and the argmax of every evaluation sample."""
    sess = session(path, threads=EVAL_THREADS)
    name = sess.get_inputs()[0].name
    preds = [sess.run(None, {name: x})[0].reshape(len(y), -1).argmax(axis=1) for x, y in realdata.batches(model)]
    pred = np.concatenate(preds).astype(np.int64)
    return 100.0 * float(np.mean(pred == model.eval_y)), pred


def _evaluate_all(name: str, paths: list[str], eval_limit: int) -> dict:
    from ptq_cli.model.kernels import host_kernels

    model = realdata.load(name, realdata.LoadOptions(eval_limit=eval_limit))
    results = {}
    for path in paths:
        start = time.perf_counter()
        top1, pred = evaluate(Path(path), model)
        results[path] = {"top1": top1, "pred": pred.tolist(), "seconds": round(time.perf_counter() - start, 1)}
        log(f"    [{host_kernels().value}] {Path(path).name}: {top1:.2f} % ({results[path]['seconds']} s)")
    return {"host_kernels": host_kernels().value, "results": results}


def _emulate(name: str, ok: list[tuple[str, Outcome]], args: argparse.Namespace) -> str | None:
    """Run --evaluate under qemu; store emulated top-1 and predictions in each outcome's extra."""
    command = [args.qemu, "-cpu", args.qemu_cpu, sys.executable, str(Path(__file__).resolve()),
               "--models", name, "--eval-limit", str(args.eval_limit), "--evaluate", *[o.path for _, o in ok]]
    log(f"{name}: evaluating {len(ok)} models under {args.qemu} -cpu {args.qemu_cpu.split(',')[0]}")
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # the child's log goes to our stderr
    if done.returncode != 0:
        for _, o in ok:
            o.extra["emulation_error"] = f"exit {done.returncode}"
        return None
    report = json.loads(done.stdout)
    for _, o in ok:
        got = report["results"][o.path]
        o.extra["top1_emulated"], o.extra["emulated_pred"] = got["top1"], np.array(got["pred"])
        o.extra["emulated_eval_seconds"] = got["seconds"]
    log(f"{name}: emulation took {time.perf_counter() - start:.0f} s; kernels there: {report['host_kernels']}")
    return report["host_kernels"]


def _latency(model: realdata.RealModel, paths: list[Path], args: argparse.Namespace) -> list[float]:
    """Median ms of each model's interleaved block medians (latency.py's measure)."""
    from latency import measure

    feeds = [{model.input_name: np.ascontiguousarray(model.eval_x[i:i + 1])} for i in range(8)]
    log(f"{model.name}: timing {len(paths)} models for ~{args.seconds:.0f} s")
    return [float(np.median(t.blocks)) * 1e3 for t in measure(paths, feeds, args.threads, args.seconds)]


# --- reporting ---------------------------------------------------------------------------------

def markdown(rows: list[dict], settings: dict) -> str:
    lines = [f"CPU: {settings['cpu']}; onnxruntime {settings['onnxruntime']} kernels here: "
             f"{settings['host_kernels']}; emulated ({settings['emulation']}): "
             f"{', '.join(sorted({str(k) for k in settings.get('emulated_kernels', {}).values()}))}",
             "",
             "| model | variant | top-1 native | top-1 emulated AVX2 | native/emulated agreement | latency ms native |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['model']} | {r['variant']} | {r['status']}: {r['detail']} | — | — | — |")
            continue
        latency = "—" if r["latency_ms"] is None else f"{r['latency_ms']:.3f}"
        lines.append(f"| {r['model']} | {r['variant']} | {pct(r['top1_native'])} | {pct(r['top1_emulated'])} | "
                     f"{pct(r['agreement'])} | {latency} |")
    return "\n".join(lines)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(realdata.names()), help="comma-separated; default: all five")
    p.add_argument("--eval-limit", type=int, default=500,
                   help="evaluate on N evenly spaced samples of the evaluation split (default 500)")
    p.add_argument("--ort-granularities", default="auto",
                   help="onnxruntime's weights: auto (per-channel where the opset allows, else per-tensor) "
                        "or per-channel,per-tensor")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for the latency (default 2)")
    p.add_argument("--seconds", type=float, default=4.0, help="timed seconds per model for the latency (default 4)")
    p.add_argument("--qemu", default="qemu-x86_64", help="the user-mode emulator")
    p.add_argument("--qemu-cpu", default=QEMU_CPU, help=f"the emulated CPU (default {QEMU_CPU})")
    p.add_argument("--no-emulation", action="store_true", help="native top-1 and latency only")
    p.add_argument("--json", default=str(RESULTS / "kernels.json"), help="where to write the results")
    p.add_argument("--evaluate", nargs="+", metavar="MODEL.onnx",
                   help="(the emulated child) evaluate these INT8 models of the one --models model and print "
                        "top-1 and predictions as JSON")
    return p


if __name__ == "__main__":
    sys.exit(main())
