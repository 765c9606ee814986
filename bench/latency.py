"""onnxruntime CPU latency of FP32 vs ptq INT8 vs onnxruntime INT8 on the same inputs.

2 intra-op threads (settable), batch 1, the same real evaluation samples for every model. After
a warm-up, runs are interleaved (one ~20 ms block per model per round, in rotating order, each
after a few untimed lead-in runs) so that the machine's drifting speed hits every model alike.
Reported: median and IQR of single runs per model in ms, and FP32 / INT8 as the median over
rounds of the ratio of block medians (> 1 means the INT8 model is faster). Each INT8 model also gets a one-line summary of what
onnxruntime's optimizer made of it (see explain.py; `--explain` prints the full story).

    python bench/latency.py                               # all five models, per-channel + per-tensor, QDQ
    python bench/latency.py --models mobilenet --formats qdq,qoperator --extra mobilenet=/tmp/m.int8.onnx
    python bench/latency.py --explain bench/.cache/models/resnet8.ort.per-tensor.minmax.qdq.onnx
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

import realdata  # noqa: E402
from common import (FORMATS, GRANULARITIES, TOOLS, Outcome, Variant, build, check_loads, log,  # noqa: E402
                    parse_list, ptq_available, session)
from explain import LEVELS, explain, profile, render_profile  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BLOCK_SECONDS = 0.02
LEAD_SECONDS = 0.003


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice to pre-process
    if args.explain:
        if args.save and len(args.explain) > 1:
            raise SystemExit("--save takes one --explain model at a time")
        for path in args.explain:
            print(explain(path, args.level, args.save).render())
            if args.profile:
                print(render_profile(profile(path, threads=args.threads)))
        return 0
    models = parse_list(args.models, realdata.names(), "model")
    extras = _extras(args.extra)
    tools = parse_list(args.tools, TOOLS, "tool")
    if "ptq" in tools and (why := ptq_available()) is not None:
        log(f"ptq skipped: {why}")
        tools = [t for t in tools if t != "ptq"]
    variants = [Variant(t, g, "minmax", f) for f in parse_list(args.formats, FORMATS, "format")
                for g in parse_list(args.granularities, GRANULARITIES, "granularity") for t in tools]
    results = [_one_model(name, variants, extras.get(name, []), args) for name in models]
    print(markdown(results))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {"threads": args.threads, "seconds_per_model": args.seconds,
                                            "onnxruntime": ort.__version__, "machine": platform.machine(),
                                            "processor": platform.processor()},
                               "models": results}, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


def _one_model(name: str, variants: list[Variant], extras: list[Path], args: argparse.Namespace) -> dict:
    model = realdata.load(name, realdata.LoadOptions(calib_count=args.calib_count, eval_limit=64))
    candidates: list[tuple[str, Path]] = [("fp32", model.model_path)]
    skipped: dict[str, str] = {}
    out_dir = realdata.CACHE / "models"
    for v in variants:
        path = out_dir / v.file_name(name)
        if args.reuse and path.is_file():
            refused = check_loads(path)
            outcome = Outcome("ok") if refused is None else Outcome("invalid", detail=refused)
        else:
            outcome = build(v, model, out_dir)
        if outcome.status != "ok":
            skipped[v.label] = f"{outcome.status}: {outcome.detail}"
            continue
        candidates.append((v.label, path))
    candidates += [(f"extra {p.name}", p) for p in extras]
    inputs = [np.ascontiguousarray(model.eval_x[i:i + 1]) for i in range(8)]
    log(f"{name}: timing {len(candidates)} models for ~{args.seconds:.0f} s")
    timings = measure([c[1] for c in candidates], inputs, args.threads, args.seconds)
    rows = []
    for (label, path), t in zip(candidates, timings):
        q1, med, q3 = (float(v) for v in np.percentile(t.runs, [25, 50, 75]))
        row = {"label": label, "path": str(path), "median_ms": med * 1e3, "iqr_ms": (q3 - q1) * 1e3,
               "runs": len(t.runs), "fp32_over_this": float(np.median(timings[0].blocks / t.blocks))}
        if label != "fp32":
            row["optimized"] = explain(path, "all").summary()
        rows.append(row)
    return {"model": name, "rows": rows, "skipped": skipped}


@dataclass
class Timing:
    runs: np.ndarray  # seconds of every timed run
    blocks: np.ndarray  # median seconds of each interleaved block, one per round


def measure(paths: list[Path], inputs: list[np.ndarray], threads: int, seconds: float) -> list[Timing]:
    """Time each model in interleaved blocks; every block starts with untimed lead-in runs.

    The lead-in lets the previous session's spinning intra-op threads go idle: without it a
    small model timed right after another one pays for their spinning (measured here: 0.18 ms
    alone, 0.30 ms interleaved run by run). Blocks are short (~20 ms) so that the machine's
    drifting speed (a VM: the same FP32 model took 0.5 ms and 0.9 ms minutes apart) hits every
    model alike; ratios are taken per round and then their median.
    """
    sessions = [session(p, threads=threads) for p in paths]
    names = [s.get_inputs()[0].name for s in sessions]
    sizes = []
    for s, n in zip(sessions, names):  # warm-up, and how many runs fill a block
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < 0.3 or runs < 10:
            s.run(None, {n: inputs[runs % len(inputs)]})
            runs += 1
        per_run = (time.perf_counter() - start) / runs
        sizes.append((max(2, int(LEAD_SECONDS / per_run)), max(3, int(BLOCK_SECONDS / per_run))))
    runs_of: list[list[float]] = [[] for _ in sessions]
    blocks_of: list[list[float]] = [[] for _ in sessions]
    deadline, round_no = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline or round_no < 10:
        for k in np.roll(np.arange(len(sessions)), round_no):  # rotate: no model always goes first
            s, feed_name, (lead, size) = sessions[k], names[k], sizes[k]
            for r in range(lead):
                s.run(None, {feed_name: inputs[r % len(inputs)]})
            block = []
            for r in range(size):
                t0 = time.perf_counter()
                s.run(None, {feed_name: inputs[r % len(inputs)]})
                block.append(time.perf_counter() - t0)
            runs_of[k] += block
            blocks_of[k].append(float(np.median(block)))
        round_no += 1
    return [Timing(np.array(r), np.array(b)) for r, b in zip(runs_of, blocks_of)]


def markdown(results: list[dict]) -> str:
    lines = ["| model | variant | median ms | IQR ms | FP32 / this | optimized graph |", "|---|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            lines.append(f"| {res['model']} | {r['label']} | {r['median_ms']:.3f} | {r['iqr_ms']:.3f} | "
                         f"{r['fp32_over_this']:.2f}× | {r.get('optimized', '')} |")
        for label, why in res["skipped"].items():
            lines.append(f"| {res['model']} | {label} | — | — | — | {why[:80]} |")
    return "\n".join(lines)


def _extras(items: list[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in realdata.names() or not Path(path).is_file():
            raise SystemExit(f"--extra wants MODEL=PATH with MODEL in {', '.join(realdata.names())} "
                             f"and an existing file, got {item!r}")
        out.setdefault(name, []).append(Path(path))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(realdata.names()), help="comma-separated; default: all five")
    p.add_argument("--granularities", default=",".join(GRANULARITIES), help="weights: per-channel,per-tensor")
    p.add_argument("--formats", default="qdq", help="qdq,qoperator")
    p.add_argument("--tools", default=",".join(TOOLS), help="ptq,ort")
    p.add_argument("--extra", action="append", default=[], metavar="MODEL=PATH",
                   help="also time this model file on MODEL's inputs (repeatable)")
    p.add_argument("--reuse", action="store_true", help="reuse INT8 models already in bench/.cache/models")
    p.add_argument("--calib-count", type=int, default=None, help="calibration samples; default: the README's split")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per real model (default 10)")
    p.add_argument("--json", default=str(RESULTS / "latency.json"), help="where to write the results")
    p.add_argument("--explain", nargs="+", metavar="MODEL.onnx",
                   help="print what onnxruntime's optimizer made of these models, and exit")
    p.add_argument("--level", choices=sorted(LEVELS), default="all", help="optimization level for --explain")
    p.add_argument("--profile", action="store_true",
                   help="with --explain: also time each op type with onnxruntime's profiler")
    p.add_argument("--save", default=None, help="with --explain (one model): where to save the optimized graph")
    return p


if __name__ == "__main__":
    sys.exit(main())
