"""The same file from every run? `ptq quantize` run again and again on one model, with a
CPU-bound process beside it, with default flags (nothing timed) and with `--objective speed`
(placements timed on this machine): how many distinct files each writes.

    python bench/determinism.py                              # MobileNetV1-0.25, 5 runs each
    python bench/determinism.py --models mobilenet,resnet8 --runs 3
    python bench/determinism.py --no-load                    # without the process beside

Prints one row per model and flags: runs, distinct sha256 of the outputs, wall time (median),
and for the timed runs the float prefix each chose; writes bench/results/determinism.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import onnx  # noqa: E402

import realdata  # noqa: E402
from common import log, parse_list  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OUT = Path(__file__).resolve().parent / ".cache" / "determinism"
VARIANTS = {"default": [], "speed": ["--objective", "speed"]}


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _run(model: realdata.RealModel, flags: list[str], out: Path) -> tuple[str, float, int]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ptq_cli", "quantize", str(model.model_path), "--data",
                    str(model.calib_dir), "-o", str(out), "--force", "-q", *flags], check=True)
    seconds = time.perf_counter() - start
    recipe = json.loads({p.key: p.value for p in onnx.load(str(out), load_external_data=False)
                         .metadata_props}["ptq.recipe"])
    return hashlib.sha256(out.read_bytes()).hexdigest(), seconds, len(recipe["exclude"])


def _cpu() -> str:
    from ptq_cli.model.kernels import host_kernels

    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    return f"{names[0] if names else platform.machine()} ({len(names) or '?'} cores), kernels {host_kernels().value}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenet")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-load", action="store_true", help="no CPU-bound process beside the runs")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    stop = multiprocessing.Event()
    burner = None if args.no_load else multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
    if burner:
        burner.start()
    rows = []
    try:
        for name in parse_list(args.models, realdata.names(), "model"):
            model = realdata.load(name, realdata.LoadOptions(eval_limit=1))
            results = {v: [] for v in VARIANTS}
            for i in range(args.runs):  # interleaved, so that both meet the same load
                for variant, flags in VARIANTS.items():
                    results[variant].append(_run(model, flags, OUT / f"{name}.{variant}.{i}.onnx"))
                    log(f"{name} {variant} run {i + 1}: {results[variant][-1][0][:12]}")
            for variant, runs in results.items():
                seconds = sorted(s for _, s, _ in runs)
                rows.append({"model": name, "variant": variant, "runs": len(runs),
                             "distinct_files": len({h for h, _, _ in runs}),
                             "median_seconds": seconds[len(seconds) // 2],
                             "float_nodes_per_run": [n for _, _, n in runs]})
    finally:
        stop.set()
        if burner:
            burner.join()
    print(f"host: {_cpu()}, load beside: {'none' if args.no_load else '1 CPU-bound process'}")
    print("| model | flags | runs | distinct files | median s | float nodes chosen per run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['runs']} | {r['distinct_files']} | {r['median_seconds']:.1f} "
              f"| {r['float_nodes_per_run']} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "determinism.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
