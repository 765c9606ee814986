"""The two attention models (MiniLM-L3 sentence embeddings, PP-OCRv4 text lines): ptq with
default flags beside onnxruntime.quantization static (quantize_static, QDQ, MinMax) and dynamic
(quantize_dynamic), in one run, on the same calibration files.

Reported per model and tool: the quality metrics of ../shared/realdata/README.md (see
sequence_eval.py), file size / FP32, and FP32 latency / INT8 latency (onnxruntime CPU,
2 threads, batch 1, interleaved rounds over the same evaluation samples; > 1 means faster).

    python bench/sequence.py                         # both models, every tool
    python bench/sequence.py --models ocr --eval-limit 100 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader  # noqa: E402

import sequence_eval as se  # noqa: E402
from common import log, session  # noqa: E402

TOOLS = ("ptq", "ort-static", "ort-dynamic")
OUT = Path(__file__).resolve().parent / ".cache" / "sequence"
RESULTS = Path(__file__).resolve().parent / "results"


class NpzReader(CalibrationDataReader):
    """Every .npz of a folder, one sample at a time (sequence lengths and line widths differ)."""

    def __init__(self, folder: Path):
        self._samples = se.samples(folder)
        self._it = iter(self._samples)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._samples)


def build(tool: str, model: se.SequenceModel, out: Path) -> float:
    """Quantize with `tool` into `out`; the seconds it took."""
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if tool == "ptq":
        ptq = Path(sys.executable).with_name("ptq")
        subprocess.run([str(ptq), "quantize", str(model.model_path), "--data", str(model.calib_dir), "-o", str(out),
                        "--force", "-q"], check=True)
    elif tool == "ort-static":
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        quantize_static(str(model.model_path), str(out), NpzReader(model.calib_dir), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=CalibrationMethod.MinMax)
    else:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(model.model_path), str(out), weight_type=QuantType.QInt8)
    return time.perf_counter() - start


def quality(name: str, path: Path, reference, limit: int | None) -> dict:
    m = se.minilm() if name == "minilm" else se.ocr()
    sess = session(path)
    if name == "minilm":
        emb = np.concatenate(se.run_outputs(sess, se.samples(m.eval_dir, limit), se.MINILM_OUTPUT))
        return emb if reference is None else se.minilm_metrics(reference, emb, se.minilm_pairs()[:len(emb) // 2])
    characters = se.ocr_characters(m.model_path)
    lines = [se.ctc_decode(p, characters) for p in se.run_outputs(sess, se.samples(m.eval_dir, limit), se.OCR_OUTPUT)]
    labels = se.ocr_labels()
    if limit is not None and limit < len(labels):
        labels = [labels[i] for i in (np.arange(limit) * len(labels)) // limit]
    return lines if reference is None else se.ocr_metrics(lines, labels, reference)


def latency(paths: list[Path], inputs: list[dict], rounds: int) -> list[float]:
    """Median seconds per pass over `inputs`, per model; rounds interleaved in rotating order."""
    sessions = [session(p) for p in paths]
    for s in sessions:
        for x in inputs[:3]:
            s.run(None, x)
    times = [[] for _ in paths]
    for r in range(rounds):
        for i in np.roll(np.arange(len(paths)), r):
            start = time.perf_counter()
            for x in inputs:
                sessions[i].run(None, x)
            times[i].append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times], [float(np.subtract(*np.percentile(t, [75, 25])) / np.median(t))
                                                  for t in times]


def run_model(name: str, args) -> dict:
    m = se.minilm() if name == "minilm" else se.ocr()
    if not m.model_path.is_file():
        log(f"{name}: {m.model_path} not found (bash ../shared/realdata/get_models.sh): skipped")
        return {}
    limit = None if name == "minilm" else args.eval_limit
    reference = quality(name, m.model_path, None, limit)
    rows = {"fp32": {"quality": quality(name, m.model_path, reference, limit), "size": m.model_path.stat().st_size}}
    paths = {"fp32": m.model_path}
    for tool in args.tools:
        out = OUT / f"{name}.{tool}.onnx"
        log(f"{name}: {tool} ...")
        try:
            seconds = build(tool, m, out)
        except Exception as exc:  # a quantizer's failure is a result
            rows[tool] = {"status": f"failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"}
            continue
        rows[tool] = {"quality": quality(name, out, reference, limit), "size": out.stat().st_size,
                      "quantize_seconds": seconds}
        paths[tool] = out
    timed = list(paths)
    medians, spreads = latency([paths[t] for t in timed], se.samples(m.eval_dir, args.latency_samples), args.rounds)
    for tool, median, spread in zip(timed, medians, spreads):
        rows[tool].update(latency_ms=median * 1000 / args.latency_samples, latency_iqr=spread,
                          speedup=medians[0] / median, size_ratio=rows[tool]["size"] / rows["fp32"]["size"])
    return rows


def render(name: str, rows: dict) -> str:
    keys = {"minilm": ("mean_cosine", "min_cosine", "top1_same_as_fp32", "top1"),
            "ocr": ("same_as_fp32", "exact", "exact_nospace", "chars")}[name]
    lines = [f"### {name}", "", "| tool | " + " | ".join(keys) + " | size / FP32 | FP32 / INT8 time | ms (IQR) |",
             "|---" * (len(keys) + 4) + "|"]
    for tool, row in rows.items():
        if "quality" not in row:
            lines.append(f"| {tool} | {row.get('status')} |")
            continue
        q = row["quality"]
        cells = [f"{q[k]:.4f}" if k.endswith("cosine") else f"{q[k]:.1f}" if k in q else "—" for k in keys]
        lines.append(f"| {tool} | " + " | ".join(cells) + f" | {row['size_ratio']:.2f}x | {row['speedup']:.2f}x | "
                     f"{row['latency_ms']:.1f} ({row['latency_iqr'] * 100:.0f} %) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,ocr")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--eval-limit", type=int, default=None, help="OCR lines (evenly spaced); default all 300")
    parser.add_argument("--latency-samples", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    args.tools = [t for t in args.tools.split(",") if t]
    logging.getLogger().setLevel(logging.ERROR)
    results = {}
    for name in args.models.split(","):
        results[name] = run_model(name, args)
        if results[name]:
            print(render(name, results[name]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sequence.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
