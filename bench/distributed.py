"""What running ptq on a Dask cluster costs and gives, on this machine.

    python bench/distributed.py                       # the full run (quiet machine: ~15 min)
    python bench/distributed.py --images 2000 --runs 2   # a quick check of the script

Prints: a LocalCluster's start and stop time; the per-task overhead (100 no-op tasks through
the executor ptq uses); `calibrate` end to end on MobileNetV1-0.25 over the 1,000 ImageNet
images of ../shared/realdata repeated to --images (symlinks to one decoded .npy per image, in
bench/.cache/), in one process and on --workers workers (onnxruntime 1 thread each, median of
--runs); and, from the measured per-sample and per-task times, an estimate for 16 workers on
100,000 images. On 2 cores, 2 workers measure the overhead, not a speedup.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Python puts this script's folder first on sys.path, where this very file would shadow Dask's
# `distributed` package: take it off and load bench/realdata.py by its path instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
sys.path.insert(0, str(BENCH.parent))


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


realdata = _load_bench("realdata")  # the decoding of ../shared/realdata's README preprocessing
cpu_name = _load_bench("host").cpu_name

MODEL = realdata.REALDATA / "imagenet" / "mobilenet_v1_0.25_224.onnx"


def decoded_images() -> Path:
    """One [1, 3, 224, 224] .npy per ImageNet sample image (decoded once, cached)."""
    files = sorted((realdata.REALDATA / "imagenet" / "images").glob("*.JPEG"))
    return realdata._calibration_folder(realdata.CACHE / "distributed" / "imagenet_1000", files,
                                        realdata._imagenet_tf)


def repeated(images: int) -> Path:
    """A folder of `images` symlinks cycling over the 1,000 decoded images."""
    source = decoded_images()
    originals = sorted(source.glob("*.npy"))
    folder = realdata.CACHE / "distributed" / f"repeated_{images}"
    if not folder.is_dir():
        tmp = folder.with_name(folder.name + ".tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for i in range(images):
            link = tmp / f"{i:06d}.npy"
            if not link.exists():
                link.symlink_to(originals[i % len(originals)])
        os.replace(tmp, folder)
    return folder


def noop(x: int) -> int:
    return x


def median_seconds(run, runs: int) -> tuple[float, list[float], object]:
    """(median seconds, every run's seconds, the last run's result)."""
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from ptq_cli.calibration.api import calibrate
    from ptq_cli.engine import EngineSpec, open_engine

    data = repeated(args.images)
    print(f"# ptq on Dask: {cpu_name()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"model {MODEL.name}, {args.images} images (the 1,000 repeated), median of {args.runs} runs")

    started = time.perf_counter()
    engine = open_engine(EngineSpec("dask", address="local", workers=args.workers, threads=1))
    start_s = time.perf_counter() - started
    try:
        executor = engine.executor
        executor.submit(noop, 0).result()  # warm the connection
        started = time.perf_counter()
        futures = [executor.submit(noop, i) for i in range(100)]
        assert [f.result() for f in futures] == list(range(100))
        per_task = (time.perf_counter() - started) / 100
        print(f"LocalCluster start ({args.workers} workers): {start_s:.2f} s")
        print(f"per-task overhead (100 no-op tasks, submitted together): {per_task * 1e3:.2f} ms")

        single, single_runs, table_a = median_seconds(
            lambda: calibrate(MODEL, data, progress=False, threads=1), args.runs)
        parts = 2 * args.workers
        on_cluster, cluster_runs, table_b = median_seconds(
            lambda: calibrate(MODEL, data, progress=False, engine=engine, parts=parts), args.runs)
        same = table_a.to_dict() == table_b.to_dict()
    finally:
        started = time.perf_counter()
        engine.close()
        stop_s = time.perf_counter() - started
    print(f"LocalCluster stop: {stop_s:.2f} s")
    per_sample = single / args.images
    print(f"calibrate, one process (1 onnxruntime thread): {single:.2f} s median "
          f"({per_sample * 1e3:.2f} ms/image; runs {', '.join(f'{t:.2f}' for t in single_runs)})")
    print(f"calibrate, {args.workers} workers x 1 thread, {parts} parts: {on_cluster:.2f} s median "
          f"(runs {', '.join(f'{t:.2f}' for t in cluster_runs)}); "
          f"speed-up {single / on_cluster:.2f}x; same table: {same}")
    # On the cluster, each worker spends per_part = on_cluster / (parts / workers) per part.
    per_part = on_cluster * args.workers / parts
    overhead_per_part = max(0.0, per_part - per_sample * args.images / parts)
    target_images, target_workers = 100_000, 16
    target_parts = 2 * target_workers
    estimate = start_s + (target_images / target_workers) * per_sample + 2 * overhead_per_part + stop_s
    print(f"measured per part: {per_part:.2f} s, of which {overhead_per_part:.2f} s beyond the images' "
          "own time (session, model, scheduling, fold)")
    print(f"estimate, {target_workers} workers x 1 thread on {target_images:,} images ({target_parts} parts): "
          f"{estimate:.0f} s = start {start_s:.1f} + {target_images // target_workers} images x "
          f"{per_sample * 1e3:.2f} ms + 2 parts x {overhead_per_part:.2f} s overhead + stop {stop_s:.1f} "
          f"(against {target_images * per_sample:.0f} s in one process; assumes the workers' cores are as "
          "fast as this one and the files are as quick to read)")


if __name__ == "__main__":
    main()
