"""onnxruntime CPU latency of FP32, ptq's default (latency-aware) model, ptq with every node
quantized, and onnxruntime.quantization's model, on every shared model.

2 intra-op threads (settable), batch 1, the same real evaluation samples for every model. Runs
are interleaved (one ~20 ms block per model per round, in rotating order, each after untimed
lead-in runs) so that the machine's drifting speed hits every model alike; the whole
measurement is repeated (--repeats, default 2) and each repeat reported. FP32 / INT8 is the
median over rounds of the ratio of block medians (> 1: INT8 is faster). "ptq fastest" names the
fastest ptq model. For ptq's default model: what onnxruntime made of it (explain.py) and the
nodes that are still slower in INT8 than in FP32 (onnxruntime's profiler, mapped back to the
float graph).

    python bench/latency.py                                 # every model; ~3 min on a quiet 2-core machine
    python bench/latency.py --models mobilenet,resnet8 --repeats 3
    python bench/latency.py --explain model.int8.onnx --profile
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
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import attention_models  # noqa: E402
import realdata  # noqa: E402
from common import NpyFolderReader, log, parse_list, session  # noqa: E402
from explain import LEVELS, explain, profile, render_profile  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT = realdata.CACHE / "latency"
BLOCK_SECONDS = 0.02
LEAD_SECONDS = 0.003


@dataclass(frozen=True)
class Subject:
    """A model to time: its file, calibration folder, timing feeds, and onnxruntime's reader."""

    name: str
    model_path: Path
    calib_dir: Path
    feeds: list[dict[str, np.ndarray]]
    ort_reader: object
    ort_per_channel: bool


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice to pre-process
    if args.explain:
        for path in args.explain:
            print(explain(path, args.level).render())
            if args.profile:
                print(render_profile(profile(path, threads=args.threads)))
        return 0
    names = parse_list(args.models, realdata.names() + attention_models.names(), "model")
    results = []
    for name in names:
        subject = _subject(name)
        if subject is None:
            log(f"{name}: model file absent, skipped (run ../shared/realdata/get_models.sh)")
            continue
        results.append(_one_model(subject, args))
    print(markdown(results))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": {"threads": args.threads, "seconds": args.seconds, "repeats": args.repeats,
                                            "onnxruntime": ort.__version__, "machine": platform.machine()},
                               "models": results}, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


def _subject(name: str) -> Subject | None:
    if name in attention_models.names():
        model = attention_models.load(name)
        if model is None:
            return None
        return Subject(name, model.model_path, model.calib_dir, model.eval_feeds(),
                       attention_models.NpzFolderReader(model.calib_dir), False)
    model = realdata.load(name, realdata.LoadOptions(eval_limit=64))
    feeds = [{model.input_name: np.ascontiguousarray(model.eval_x[i:i + 1])} for i in range(8)]
    # onnxruntime's quantizer writes per-axis DequantizeLinear into opset < 13 models, which it then refuses.
    opset = next(o.version for o in onnx.load(str(model.model_path), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx"))
    return Subject(name, model.model_path, model.calib_dir, feeds,
                   NpyFolderReader(model.calib_dir, model.input_name), opset >= 13)


def _one_model(subject: Subject, args: argparse.Namespace) -> dict:
    candidates: list[tuple[str, Path]] = [("fp32", subject.model_path)]
    notes: dict[str, object] = {}
    built = _build_all(subject, notes)
    candidates += built
    repeats = []
    for r in range(args.repeats):
        log(f"{subject.name}: timing {len(candidates)} models for ~{args.seconds:.0f} s (repeat {r + 1})")
        timings = measure([c[1] for c in candidates], subject.feeds, args.threads, args.seconds)
        repeats.append([{"label": label, "median_ms": float(np.median(t.runs)) * 1e3,
                         "iqr_ms": float(np.subtract(*np.percentile(t.runs, [75, 25]))) * 1e3,
                         "fp32_over_this": float(np.median(timings[0].blocks / t.blocks))}
                        for (label, _), t in zip(candidates, timings)])
    rows = _merge(repeats)
    ptq_rows = [r for r in rows if r["label"].startswith("ptq")]
    if ptq_rows:
        notes["ptq fastest"] = max(ptq_rows, key=lambda r: r["fp32_over_this"])["label"]
    default = dict(built).get("ptq default")
    if default is not None:
        notes["optimized"] = explain(default, "all").summary()
        notes["slow nodes"] = slow_nodes(subject, default, args.threads)
    return {"model": subject.name, "rows": rows, "notes": notes}


def _build_all(subject: Subject, notes: dict) -> list[tuple[str, Path]]:
    """ptq default (latency-aware), ptq with every node quantized, onnxruntime's static QDQ."""
    from ptq_cli.calibration.api import calibrate
    from ptq_cli.quantization.api import quantize
    from ptq_cli.quantization.placement.latency import IfSlower, Objective

    OUT.mkdir(parents=True, exist_ok=True)
    table = calibrate(str(subject.model_path), str(subject.calib_dir), progress=False)
    built = []
    for label, objective in (("ptq default", Objective.SPEED), ("ptq size", Objective.SIZE)):
        out = OUT / f"{subject.name}.{label.replace(' ', '-')}.onnx"
        start = time.perf_counter()
        # The default is timed on real samples, as `ptq quantize --data` does (a table alone gives
        # synthetic inputs, with free dimensions at 1: no way to time a text or OCR model).
        source = dict(data=str(subject.calib_dir)) if objective is Objective.SPEED else dict(calibration=table)
        result = quantize(str(subject.model_path), str(out), objective=objective, if_slower=IfSlower.INT8,
                          force=True, progress=False, **source)
        notes[f"{label} seconds"] = round(time.perf_counter() - start, 1)
        if result.latency is not None:
            notes["ptq default decision"] = {k: v for k, v in result.latency.to_dict().items() if k != "trials"}
        built.append((label, out))
    out = OUT / f"{subject.name}.ort.onnx"
    try:
        _ort_static(subject, out)
        built.append(("onnxruntime", out))
    except Exception as exc:  # its failure is a result of the benchmark
        notes["onnxruntime"] = f"failed: {str(exc).splitlines()[0][:120]}"
    return built


def _ort_static(subject: Subject, out: Path) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    subject.ort_reader.rewind()
    quantize_static(str(subject.model_path), str(out), subject.ort_reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=subject.ort_per_channel)
    session(out, threads=1)  # refuses an invalid model here, not in the middle of the timing


def slow_nodes(subject: Subject, int8_path: Path, threads: int, top: int = 6) -> list[dict]:
    """The float graph's compute nodes that take longest in the INT8 model, with their FP32 time."""
    from ptq_cli.model.prepare import prepare
    from ptq_cli.quantization.placement.latency.cost import node_costs
    from ptq_cli.quantization.placement.latency.machine import OnnxruntimeMachine

    prepared = prepare(onnx.load(str(subject.model_path)))
    machine = OnnxruntimeMachine(threads=threads)
    fp32 = node_costs(machine.profile(prepared.SerializeToString(), subject.feeds), prepared)
    int8 = node_costs(machine.profile(Path(int8_path).read_bytes(), subject.feeds), prepared)
    ops = {n.name: n.op_type for n in prepared.graph.node}
    worst = sorted(int8, key=lambda n: -int8[n])[:top]
    return [{"node": n, "op": ops.get(n, "?"), "int8_us": round(int8[n], 1), "fp32_us": round(fp32.get(n, 0.0), 1)}
            for n in worst]


def _merge(repeats: list[list[dict]]) -> list[dict]:
    rows = []
    for k, first in enumerate(repeats[0]):
        each = [rep[k] for rep in repeats]
        rows.append({"label": first["label"], "median_ms": float(np.median([e["median_ms"] for e in each])),
                     "iqr_ms": float(np.median([e["iqr_ms"] for e in each])),
                     "fp32_over_this": float(np.median([e["fp32_over_this"] for e in each])),
                     "fp32_over_this_each": [round(e["fp32_over_this"], 2) for e in each]})
    return rows


@dataclass
class Timing:
    runs: np.ndarray  # seconds of every timed run
    blocks: np.ndarray  # median seconds of each interleaved block, one per round


def measure(paths: list[Path], inputs: list[dict[str, np.ndarray]], threads: int, seconds: float) -> list[Timing]:
    """Time each model in interleaved blocks; every block starts with untimed lead-in runs.

    The lead-in lets the previous session's spinning intra-op threads go idle: without it a
    small model timed right after another one pays for their spinning (measured here: 0.18 ms
    alone, 0.30 ms interleaved run by run). Blocks are short (~20 ms) so that the machine's
    drifting speed hits every model alike; ratios are taken per round and then their median.
    """
    sessions = [session(p, threads=threads) for p in paths]
    sizes = []
    for s in sessions:  # warm-up, and how many runs fill a block
        start, runs = time.perf_counter(), 0
        while time.perf_counter() - start < 0.3 or runs < 10:
            s.run(None, inputs[runs % len(inputs)])
            runs += 1
        per_run = (time.perf_counter() - start) / runs
        sizes.append((max(2, int(LEAD_SECONDS / per_run)), max(3, int(BLOCK_SECONDS / per_run))))
    runs_of: list[list[float]] = [[] for _ in sessions]
    blocks_of: list[list[float]] = [[] for _ in sessions]
    deadline, round_no = time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline or round_no < 10:
        for k in np.roll(np.arange(len(sessions)), round_no):  # rotate: no model always goes first
            s, (lead, size) = sessions[k], sizes[k]
            first = round_no * size  # every round goes on through the inputs (text and OCR lengths vary)
            for r in range(lead):
                s.run(None, inputs[(first + r) % len(inputs)])
            block = []
            for r in range(size):
                t0 = time.perf_counter()
                s.run(None, inputs[(first + r) % len(inputs)])
                block.append(time.perf_counter() - t0)
            runs_of[k] += block
            blocks_of[k].append(float(np.median(block)))
        round_no += 1
    return [Timing(np.array(r), np.array(b)) for r, b in zip(runs_of, blocks_of)]


def markdown(results: list[dict]) -> str:
    lines = ["| model | variant | median ms | IQR ms | FP32 / this (each repeat) |", "|---|---|---|---|---|"]
    for res in results:
        for r in res["rows"]:
            each = ", ".join(f"{x:.2f}" for x in r["fp32_over_this_each"])
            lines.append(f"| {res['model']} | {r['label']} | {r['median_ms']:.3f} | {r['iqr_ms']:.3f} | "
                         f"{r['fp32_over_this']:.2f}× ({each}) |")
    for res in results:
        notes = res["notes"]
        lines.append(f"\n{res['model']}: ptq fastest = {notes.get('ptq fastest')}; "
                     f"ptq default decision {json.dumps(notes.get('ptq default decision'))}; "
                     f"optimized graph: {notes.get('optimized')}")
        for n in notes.get("slow nodes", []):
            lines.append(f"  slowest in INT8: {n['op']} {n['node'][:70]}: {n['int8_us']} µs (FP32 {n['fp32_us']} µs)")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    everything = realdata.names() + attention_models.names()
    p.add_argument("--models", default=",".join(everything), help=f"comma-separated from {', '.join(everything)}")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per model and repeat (default 10)")
    p.add_argument("--repeats", type=int, default=2, help="whole interleaved measurements per model (default 2)")
    p.add_argument("--json", default=str(RESULTS / "latency.json"), help="where to write the results")
    p.add_argument("--explain", nargs="+", metavar="MODEL.onnx",
                   help="print what onnxruntime's optimizer made of these models, and exit")
    p.add_argument("--level", choices=sorted(LEVELS), default="all", help="optimization level for --explain")
    p.add_argument("--profile", action="store_true",
                   help="with --explain: also time each op type with onnxruntime's profiler")
    return p


if __name__ == "__main__":
    sys.exit(main())
