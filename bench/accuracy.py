"""Top-1 of FP32 vs ptq INT8 vs onnxruntime.quantization INT8 on the real models, side by side.

Both quantizers get the same settings (weights int8 symmetric, activations uint8 asymmetric,
per-channel or per-tensor weights, the same calibration method) and the same calibration
files, in one run; each INT8 model is checked to load in onnxruntime ("invalid" otherwise)
and evaluated on the disjoint evaluation split.

    python bench/accuracy.py                                # all models, MinMax, QDQ, both granularities
    python bench/accuracy.py --models mobilenet --eval-limit 300
    python bench/accuracy.py --methods minmax,entropy,percentile,mse --formats qdq,qoperator
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402

import realdata  # noqa: E402
from common import (FORMATS, GRANULARITIES, METHODS, TOOL_TITLES, TOOLS, Outcome, Variant, build, log,  # noqa: E402
                    parse_list, pct, ptq_available, top1)

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice to pre-process
    models = parse_list(args.models, realdata.names(), "model")
    methods = parse_list(args.methods, METHODS, "method")
    granularities = parse_list(args.granularities, GRANULARITIES, "granularity")
    formats = parse_list(args.formats, FORMATS, "format")
    tools = parse_list(args.tools, TOOLS, "tool")
    if "ptq" in tools and (why := ptq_available()) is not None:
        log(f"ptq skipped: {why}")
        tools = [t for t in tools if t != "ptq"]
    options = realdata.LoadOptions(calib_count=args.calib_count, eval_limit=args.eval_limit)
    started = time.perf_counter()
    rows = []
    for name in models:
        rows.extend(_one_model(name, options, tools, methods, granularities, formats))
    report = {
        "settings": {"calib_count": args.calib_count, "eval_limit": args.eval_limit, "tools": tools,
                     "methods": methods, "granularities": granularities, "formats": formats,
                     "onnxruntime": ort.__version__, "machine": platform.machine(),
                     "seconds": round(time.perf_counter() - started, 1)},
        "rows": rows,
    }
    print(markdown(rows))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} ({report['settings']['seconds']} s)")
    return 0


def _one_model(name: str, options: realdata.LoadOptions, tools: list[str], methods: list[str],
               granularities: list[str], formats: list[str]) -> list[dict]:
    log(f"{name}: preparing data")
    model = realdata.load(name, options)
    fp32 = top1(model.model_path, model)
    log(f"{name}: FP32 {fp32:.2f} % on {len(model.eval_y)} samples ({model.reference}); "
        f"{model.calib_count} calibration samples")
    out_dir = options.cache / "models"
    rows = []
    for fmt in formats:
        for method in methods:
            for gran in granularities:
                row = {"model": name, "format": fmt, "granularity": gran, "method": method,
                       "calib_samples": model.calib_count, "eval_samples": len(model.eval_y), "fp32": fp32}
                for tool in TOOLS:
                    row[tool] = asdict(_evaluate(Variant(tool, gran, method, fmt), model, out_dir)) \
                        if tool in tools else asdict(Outcome("n/a", detail="not run"))
                rows.append(row)
    return rows


def _evaluate(variant: Variant, model: realdata.RealModel, out_dir: Path) -> Outcome:
    outcome = build(variant, model, out_dir)
    if outcome.status == "ok":
        start = time.perf_counter()
        outcome.top1 = top1(Path(outcome.path), model)
        outcome.extra["eval_seconds"] = round(time.perf_counter() - start, 1)
    shown = f"{outcome.top1:.2f} %" if outcome.top1 is not None else f"{outcome.status} {outcome.detail}"
    log(f"  {variant.label}: {shown}")
    return outcome


def markdown(rows: list[dict]) -> str:
    titles = [TOOL_TITLES[t] for t in TOOLS]
    lines = ["| model | format | weights | method | FP32 | " + " | ".join(titles) + " | "
             + " | ".join(f"{t} drop" for t in titles) + " |",
             "|" + "---|" * (5 + 2 * len(TOOLS))]
    for r in rows:
        cells = [r["model"], r["format"], r["granularity"], r["method"], pct(r["fp32"])]
        cells += [_score(r[t]) for t in TOOLS] + [_drop(r["fp32"], r[t]) for t in TOOLS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _score(outcome: dict) -> str:
    return pct(outcome["top1"]) if outcome["status"] == "ok" else outcome["status"]


def _drop(fp32: float, outcome: dict) -> str:
    return f"{fp32 - outcome['top1']:+.2f}" if outcome["status"] == "ok" else "—"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(realdata.names()), help="comma-separated; default: all five")
    p.add_argument("--methods", default="minmax", help=f"calibration methods, comma-separated: {', '.join(METHODS)}")
    p.add_argument("--granularities", default=",".join(GRANULARITIES), help="weights: per-channel,per-tensor")
    p.add_argument("--formats", default="qdq", help="qdq,qoperator")
    p.add_argument("--tools", default=",".join(TOOLS), help=",".join(TOOLS))
    p.add_argument("--calib-count", type=int, default=None,
                   help="calibration samples (evenly spaced subset); default: the README's split")
    p.add_argument("--eval-limit", type=int, default=None,
                   help="evaluate on N evenly spaced samples of the evaluation split; default: all")
    p.add_argument("--json", default=str(RESULTS / "accuracy.json"), help="where to write the results")
    return p


if __name__ == "__main__":
    sys.exit(main())
