"""How long `ptq quantize` (default flags) takes beside onnxruntime's `quantize_static`, on the
same model and the same calibration files, and where ptq's time goes.

    python bench/quantize_time.py                                 # 5 CNNs, MiniLM-L3, PP-OCRv4; 3 rounds
    python bench/quantize_time.py --models ocr,minilm --rounds 5
    python bench/quantize_time.py --model path/to/model.onnx --data calib/   # a model of your own

Both tools run as fresh processes (start-up and imports count for both), interleaved: each
round runs every (model, tool) pair once, in an order rotated per round, so that load from
other jobs on a shared machine falls on both alike. Reported per model: the median seconds of
each tool with the spread (min-max) over the rounds, the ratio of the medians, and ptq's own
split of its median run (the "seconds" of `ptq quantize --json`: calibration, reference run,
first candidate, ranking, trials, ...). onnxruntime: QDQ, MinMax, uint8 activations, int8
per-channel weights, as bench/accuracy.py and bench/sequence.py call it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402
from host import cpu_name  # noqa: E402
import sequence_eval as se  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SEQUENCE_MODELS = {"minilm": se.minilm, "ocr": se.ocr}

# onnxruntime's quantize_static on every .npy / .npz file of a folder, one sample at a time.
_ORT = r"""
import sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
model, folder, out = sys.argv[1:4]
names = [i.name for i in ort.InferenceSession(model, providers=["CPUExecutionProvider"]).get_inputs()]
def read(path):
    if path.suffix == ".npy":
        return {names[0]: np.load(path)}
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}
class Reader(CalibrationDataReader):
    def __init__(self):
        self.files = iter(sorted(p for p in Path(folder).iterdir() if p.suffix in (".npy", ".npz")))
    def get_next(self):
        path = next(self.files, None)
        return None if path is None else read(path)
quantize_static(model, out, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax)
"""


@dataclass(frozen=True)
class Case:
    name: str
    model: Path
    data: Path


def cases(names: list[str]) -> list[Case]:
    found = []
    for name in names:
        if name in SEQUENCE_MODELS:
            model = SEQUENCE_MODELS[name]()
            if not model.model_path.exists():
                print(f"skipping {name}: {model.model_path} is missing (bash ../shared/realdata/get_models.sh)",
                      file=sys.stderr)
                continue
            found.append(Case(name, model.model_path, model.calib_dir))
        else:
            model = realdata.load(name)
            found.append(Case(name, model.model_path, model.calib_dir))
    return found


def run_ptq(case: Case, out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ptq_cli", "quantize", str(case.model), "--data", str(case.data),
                           "-o", str(out), "--force", "-q", "--json"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"ptq failed on {case.name}: {done.stderr.strip().splitlines()[-1:]}")
    return seconds, json.loads(done.stdout).get("seconds", {})


def run_ort(case: Case, out: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _ORT, str(case.model), str(case.data), str(out)],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"onnxruntime failed on {case.name}: {done.stderr.strip().splitlines()[-1:]}")
    return seconds


def split(seconds: dict) -> str:
    """ptq's phases, largest first, and its trials summed."""
    phases = dict(seconds.get("phases", {}))
    trials = seconds.get("trials", [])
    shown = [f"{name} {value:.1f}" for name, value in sorted(phases.items(), key=lambda kv: -kv[1]) if value >= 0.05]
    if trials:
        samples = sum(t["samples"] for t in trials)
        shown.append(f"({len(trials)} trials: build {sum(t['build'] for t in trials):.1f}, session "
                     f"{sum(t['session'] for t in trials):.1f}, evaluate {sum(t['evaluate'] for t in trials):.1f}; "
                     f"{samples} samples)")
    return ", ".join(shown)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join([*realdata.names(), *SEQUENCE_MODELS]))
    parser.add_argument("--model", type=Path, help="a model of your own (with --data)")
    parser.add_argument("--data", type=Path, help="its calibration folder (.npy / .npz, one sample per file)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS / "quantize_time.json")
    args = parser.parse_args(argv)
    todo = [Case(args.model.stem, args.model, args.data)] if args.model else cases(args.models.split(","))
    runs = {case.name: {"ptq": [], "ort": [], "split": []} for case in todo}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            pairs = [(case, tool) for case in todo for tool in ("ptq", "ort")]
            shift = round_ % len(pairs)
            for case, tool in pairs[shift:] + pairs[:shift]:
                out = Path(tmp) / f"{case.name}.{tool}.onnx"
                if tool == "ptq":
                    seconds, phases = run_ptq(case, out)
                    runs[case.name]["split"].append((seconds, phases))
                else:
                    seconds = run_ort(case, out)
                runs[case.name][tool].append(seconds)
                print(f"round {round_ + 1}/{args.rounds} {case.name:18s} {tool:4s} {seconds:7.1f} s", file=sys.stderr,
                      flush=True)
    cpu = cpu_name()
    print(f"\n{cpu}, {os.cpu_count()} cores; medians of {args.rounds} interleaved rounds (min-max)\n")
    print("| model | ptq default | onnxruntime quantize_static | ratio | ptq's median run |")
    print("|---|---|---|---|---|")
    table = []
    for case in todo:
        r = runs[case.name]
        ptq, ort_ = statistics.median(r["ptq"]), statistics.median(r["ort"])
        median_run = sorted(r["split"], key=lambda sp: sp[0])[len(r["split"]) // 2][1]
        print(f"| {case.name} | {ptq:.1f} s ({min(r['ptq']):.1f}-{max(r['ptq']):.1f}) | {ort_:.1f} s "
              f"({min(r['ort']):.1f}-{max(r['ort']):.1f}) | {ptq / ort_:.2f}x | {split(median_run)} |")
        table.append({"model": case.name, "ptq": r["ptq"], "ort": r["ort"], "ratio": ptq / ort_,
                      "ptq_seconds": median_run})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu": cpu, "rounds": args.rounds, "models": table}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
