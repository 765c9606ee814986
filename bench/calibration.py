"""Calibration cost: ptq vs onnxruntime's calibrators vs a plain FP32 inference pass.

    python3 bench/calibration.py [--samples 100 400 1000] [--out bench/results/calibration.json]

MobileNetV1-0.25 on the ImageNet sample images of ../shared/realdata (preprocessed once with
ptq's imagenet-tf preset into a temporary folder of one .npy per image, repeated as needed).
Every measurement runs in its own subprocess, which reports its own peak RSS
(VmHWM of /proc/self/status) and the wall time of the calibration call (imports and
process start excluded). All runs feed batch 1 and read one .npy at a time; the plain pass and
onnxruntime's calibrators use onnxruntime's default CPU threads, ptq its own setting (one
onnxruntime thread on 2 cores), and a plain pass with 1 thread is measured too, as the fairer
baseline for ptq. With --repeat R every job runs once per round for R rounds (the machine may be
shared) and the median of each figure is reported. onnxruntime's histogram calibrators are skipped at a sample count whose
projected memory (linear from the previous count) exceeds 35 % of the available RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "imagenet"
MODEL = REALDATA / "mobilenet_v1_0.25_224.onnx"
IMAGES = REALDATA / "images"
PTQ_METHODS = ("minmax", "entropy", "percentile", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")


# --- children: one measurement each -------------------------------------------------------------
def _files(folder: Path, n: int) -> list[Path]:
    return sorted(folder.glob("*.npy"))[:n]


def child_plain(folder: Path, n: int, threads: int = 0) -> None:
    import onnxruntime as ort

    started = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default (one per core)
    session = ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for path in _files(folder, n):
        session.run(None, {name: np.load(path)})
    _report(time.perf_counter() - started)


def child_ptq(folder: Path, n: int, method: str) -> None:
    from ptq_cli.calibration import calibrate
    from ptq_cli.recipe import CalibMethod, CalibrationSpec

    started = time.perf_counter()
    table = calibrate(MODEL, folder, spec=CalibrationSpec(method=CalibMethod(method)),
                      max_samples=n, progress=False)
    assert table.samples == n
    _report(time.perf_counter() - started)


def child_ort(folder: Path, n: int, method: str) -> None:
    from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.paths = iter(_files(folder, n))

        def get_next(self):
            path = next(self.paths, None)
            return None if path is None else {"input": np.load(path)}

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        calibrator = create_calibrator(MODEL, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, method))
        calibrator.collect_data(Reader())
        calibrator.compute_data()
        _report(time.perf_counter() - started)


def _report(seconds: float) -> None:
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    # VmHWM starts afresh at exec; ru_maxrss does not (Linux keeps the forking parent's peak
    # across execve), so it would report the parent's memory for a small child.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- parent -------------------------------------------------------------------------------------
def prepare_cache(folder: Path, count: int) -> None:
    """Decode and preprocess the images once; repeat them when more samples are asked for."""
    sys.path.insert(0, str(REPO))
    from ptq_cli.data import open_dataset
    from ptq_cli.data.images import ImagePreprocess
    from ptq_cli.model.io import input_specs, load_model

    dataset = open_dataset(IMAGES, input_specs(load_model(MODEL)),
                           image=ImagePreprocess.preset("imagenet-tf"))
    written = 0
    while written < count:
        for sample in dataset:
            if written == count:
                break
            np.save(folder / f"{written:05d}.npy", sample.feeds["input"])
            written += 1


def median_of(runs: list[dict]) -> dict:
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    out = {key: float(np.median([r[key] for r in good])) for key in ("seconds", "peak_rss_mb")}
    if len(runs) > 1:
        out["runs"] = good
    return out


def _measure_once(kind: str, folder: Path, n: int, method: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, __file__, "--child", kind, "--folder", str(folder), "--n", str(n)]
    if method:
        cmd += ["--method", method]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def run_all(counts: list[int], folder: Path, repeat: int = 1) -> dict:
    """Every job once per round, `repeat` rounds, so that a busy spell of a shared machine hits
    all jobs of a round alike; then the median of each figure over the rounds."""
    results: dict[str, dict[int, dict]] = {}
    for n in counts:
        jobs = [("plain", "", "fp32 inference"), ("plain", "1", "fp32 inference 1 thread")]
        jobs += [("ptq", m, f"ptq {m}") for m in PTQ_METHODS]
        jobs += [("ort", m, f"onnxruntime {m}") for m in ORT_METHODS]
        runs: dict[str, list[dict]] = {label: [] for _, _, label in jobs}
        skips = {label: _projected_skip(results.get(label, {}), n) if kind == "ort" else None
                 for kind, _, label in jobs}
        for _ in range(repeat):
            for kind, method, label in jobs:
                if not skips[label]:
                    runs[label].append(_measure_once(kind, folder, n, method))
                    print(f"  {label:<24} n={n:<5} {_cell(runs[label][-1])}", file=sys.stderr, flush=True)
        for _, _, label in jobs:
            results.setdefault(label, {})[n] = {"skipped": skips[label]} if skips[label] else median_of(runs[label])
    return results


def _projected_skip(previous: dict[int, dict], n: int) -> str | None:
    done = [(k, v["peak_rss_mb"]) for k, v in previous.items() if "peak_rss_mb" in v]
    if not done:
        return None
    k, rss = max(done)
    projected = rss * n / k
    if projected > 0.35 * available_mb():  # the machine is shared: never risk an OOM kill
        return f"skipped: projected {projected / 1024:.1f} GB > 35% of available RAM"
    return None


def _cell(row: dict) -> str:
    if "skipped" in row:
        return "skipped"
    if "error" in row:
        return "error"
    return f"{row['peak_rss_mb']:7.0f} MB {row['seconds']:7.2f} s"


def ratios(results: dict, counts: list[int]) -> dict:
    def get(label: str, n: int, key: str):
        return results.get(label, {}).get(n, {}).get(key)

    out: dict[str, dict] = {}
    lo, hi = min(counts), max(counts)
    for m in PTQ_METHODS:
        label = f"ptq {m}"
        a, b = get(label, lo, "peak_rss_mb"), get(label, hi, "peak_rss_mb")
        out[f"{label}: RSS growth {lo}->{hi}"] = None if not a or not b else b / a - 1
        for n in counts:
            rss, base = get(label, n, "peak_rss_mb"), get("fp32 inference", n, "peak_rss_mb")
            out[f"{label}: RSS / inference @{n}"] = rss / base if rss and base else None
    for n in counts:
        base = get("fp32 inference", n, "seconds")
        mm = get("ptq minmax", n, "seconds")
        out[f"ptq minmax: time / inference @{n}"] = mm / base if mm and base else None
        one = get("fp32 inference 1 thread", n, "seconds")
        out[f"ptq minmax: time / inference (1 thread) @{n}"] = mm / one if mm and one else None
        for ort_m in ("Entropy", "Percentile"):
            theirs = get(f"onnxruntime {ort_m}", n, "seconds")
            for m in ("entropy", "percentile", "mse"):
                ours = get(f"ptq {m}", n, "seconds")
                out[f"onnxruntime {ort_m} / ptq {m} time @{n}"] = theirs / ours if theirs and ours else None
    return out


def render(results: dict, counts: list[int], table_ratios: dict) -> str:
    head = "| run | " + " | ".join(f"{n} samples: peak RSS, wall" for n in counts) + " |"
    lines = [head, "|" + "---|" * (len(counts) + 1)]
    for label, rows in results.items():
        cells = []
        for n in counts:
            row = rows.get(n, {})
            cells.append(row.get("skipped") or row.get("error") or
                         f"{row['peak_rss_mb']:.0f} MB, {row['seconds']:.2f} s")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, value in table_ratios.items():
        if value is not None:
            shown = f"{value:+.1%}" if "growth" in key else f"{value:.2f}x"
            lines.append(f"- {key}: {shown}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 400, 1000])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "calibration.json")
    parser.add_argument("--repeat", type=int, default=1,
                        help="Run every measurement this many times and report medians.")
    parser.add_argument("--cache", type=Path,
                        help="Keep the preprocessed .npy files in this folder (reused when complete).")
    parser.add_argument("--child", choices=["plain", "ptq", "ort"])
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--n", type=int)
    parser.add_argument("--method", default="")
    args = parser.parse_args()
    if args.child:
        {"plain": lambda: child_plain(args.folder, args.n, int(args.method or 0)),
         "ptq": lambda: child_ptq(args.folder, args.n, args.method),
         "ort": lambda: child_ort(args.folder, args.n, args.method)}[args.child]()
        return
    if not MODEL.is_file():
        sys.exit(f"skipped: {MODEL} is absent (see ../shared/realdata/README.md)")
    with tempfile.TemporaryDirectory(prefix="ptq-bench-calib-") as tmp:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if len(list(folder.glob("*.npy"))) < max(args.samples):
            print(f"preprocessing {max(args.samples)} images into {folder} ...", file=sys.stderr, flush=True)
            prepare_cache(folder, max(args.samples))
        results = run_all(sorted(args.samples), folder, args.repeat)
    counts = sorted(args.samples)
    table_ratios = ratios(results, counts)
    print(render(results, counts, table_ratios))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(MODEL), "cpus": os.cpu_count(), "samples": counts,
                                    "repeat": args.repeat,
                                    "results": results, "ratios": table_ratios}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
