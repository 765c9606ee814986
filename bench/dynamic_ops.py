"""--dynamic on a convolutional recognizer: what gets faster and what does not.

Times, on one model (default: PP-OCRv4's recognizer from ~/.cache/ptq-realdata), the FP32 model,
ptq --dynamic (MatMul/Gemm/LSTM only, the default), ptq --dynamic with Conv (ConvInteger) and
onnxruntime's quantize_dynamic (which rewrites every Conv too), in interleaved runs; prints the
median of each, its spread, the ratio to FP32, the file size, and how often the argmax over the
last axis agrees with FP32 on the timed inputs.

    python bench/dynamic_ops.py [--model PATH] [--shape 1,3,48,320] [--runs 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import ptq_cli
from ptq_cli.recipe import Recipe

DEFAULT_MODEL = Path.home() / ".cache" / "ptq-realdata" / "ch_PP-OCRv4_rec_infer.onnx"


def build(model: Path, out: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    paths = {"fp32": model, "ptq --dynamic": out / "ptq_dyn.onnx", "ptq --dynamic +Conv": out / "ptq_conv.onnx",
             "ort quantize_dynamic": out / "ort_dyn.onnx"}
    ptq_cli.quantize(model, paths["ptq --dynamic"], recipe=Recipe(dynamic=True), progress=False)
    ptq_cli.quantize(model, paths["ptq --dynamic +Conv"], progress=False,
                     recipe=Recipe(dynamic=True, dynamic_ops=("MatMul", "Gemm", "LSTM", "Conv")))
    try:
        quantize_dynamic(str(model), str(paths["ort quantize_dynamic"]), weight_type=QuantType.QInt8)
    except Exception as exc:  # it fails on some exports (weights in Constant nodes): say so, go on
        print(f"onnxruntime quantize_dynamic failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
        del paths["ort quantize_dynamic"]
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--shape", default="1,3,48,320")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"{args.model} not found: run `bash ../shared/realdata/get_models.sh` first")
    shape = tuple(int(d) for d in args.shape.split(","))
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build(args.model, Path(tmp))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        sessions = {k: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                    for k, p in paths.items()}
        name = sessions["fp32"].get_inputs()[0].name
        outputs = {k: s.run(None, {name: x})[0] for k, s in sessions.items()}  # also warms up
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.runs):
            for k, s in sessions.items():
                start = time.perf_counter()
                s.run(None, {name: x})
                times[k].append((time.perf_counter() - start) * 1000)
        fp32 = statistics.median(times["fp32"])
        print(f"{args.model.name}, input {shape}, {args.threads} threads, {args.runs} interleaved runs")
        print(f"{'model':22s} {'median ms':>10s} {'min-max ms':>16s} {'vs FP32':>8s} {'MB':>6s} {'argmax agree':>13s}")
        for k, t in times.items():
            agree = float(np.mean(outputs[k].argmax(-1) == outputs["fp32"].argmax(-1))) * 100
            print(f"{k:22s} {statistics.median(t):10.2f} {min(t):7.2f}-{max(t):<8.2f} "
                  f"{statistics.median(t) / fp32:7.2f}x {paths[k].stat().st_size / 1e6:6.2f} {agree:12.1f}%")


if __name__ == "__main__":
    main()
