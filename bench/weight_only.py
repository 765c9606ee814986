"""Weight-only 4-bit quantization of MiniLM-L3: ptq beside onnxruntime's MatMulNBitsQuantizer.

Both tools get the same model, block size and (for GPTQ) calibration texts, in one run:

    python bench/weight_only.py                         # block 32, every variant
    python bench/weight_only.py --block-size 128 --eval-limit 200 --latency-texts 40

Per variant: file size / FP32, mean and minimum cosine of the sentence embedding (output `461`)
to FP32 over the evaluation texts, retrieval top-1 (synopsis -> its own package's description
among the 300, ../shared/realdata/README.md) and the share of synopses whose top-1 match is the
same as FP32's, quantize time, and latency / FP32 (median per text over interleaved rounds, one
onnxruntime thread each). onnxruntime's GPTQ needs torch (and neural-compressor); where they are
missing that variant is reported as not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"
TEXT = REALDATA / "text" / "minilm"
MODEL = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ptq-realdata" / "paraphrase-MiniLM-L3-v2.onnx"
OUTPUT = "461"
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    if not MODEL.is_file() or not TEXT.is_dir():
        print(f"MiniLM or its texts are missing ({MODEL}, {TEXT}): run bash ../shared/realdata/get_models.sh",
              file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    texts = _texts(args.eval_limit)
    reference = _embeddings(MODEL, texts)
    rows = []
    for name, build in _variants(args.block_size, args.only):
        path = work / f"minilm.{name.replace(' ', '_')}.onnx"
        started = time.perf_counter()
        status = build(path)
        seconds = time.perf_counter() - started
        if status is not None:
            rows.append({"variant": name, "status": status})
            print(f"{name}: {status}", file=sys.stderr, flush=True)
            continue
        row = {"variant": name, "status": "ok", "quantize_s": round(seconds, 1),
               "size_ratio": path.stat().st_size / MODEL.stat().st_size}
        row.update(_quality(_embeddings(path, texts), reference, texts))
        rows.append(row)
        print(f"{name}: {row}", file=sys.stderr, flush=True)
    _latency(rows, work, texts, args.latency_texts, args.rounds)
    print(_table(rows, args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"weight_only_b{args.block_size}.json").write_text(json.dumps(rows, indent=2))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--eval-limit", type=int, default=None, help="first N synopses and their descriptions")
    p.add_argument("--latency-texts", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated substrings of the variants to run")
    p.add_argument("--work", default="/tmp/ptq-bench-weight-only")
    return p


# --- the variants ---------------------------------------------------------------------------

def _variants(block: int, only: str):
    from ptq_cli.quantization.api import quantize
    from ptq_cli.recipe import QType, Recipe, Rounding, WeightOnly

    def ptq(rounding: Rounding, symmetric: bool = True, qdq: bool = False):
        def build(path: Path):
            recipe = Recipe(weight_only=WeightOnly(QType.INT4, block, symmetric=symmetric, qdq=qdq), rounding=rounding)
            data = TEXT / "calib" if rounding is Rounding.GPTQ else None
            quantize(MODEL, path, data=data, recipe=recipe, force=True, progress=False)
        return build

    def ort_rtn(symmetric: bool, gather: bool):
        def build(path: Path):
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            ops = ("MatMul", "Gather") if gather else ("MatMul",)
            quantizer = MatMulNBitsQuantizer(onnx.load(str(MODEL)), bits=4, block_size=block, is_symmetric=symmetric,
                                             op_types_to_quantize=ops)
            quantizer.process()
            onnx.save(quantizer.model.model, str(path))
        return build

    def ort_gptq(path: Path):
        missing = [m for m in ("torch", "neural_compressor") if importlib.util.find_spec(m) is None]
        if missing:
            return f"not run: onnxruntime's GPTQ needs {' and '.join(missing)}, not installed here"
        return "not run: not wired (torch present)"

    variants = [
        ("ptq nearest sym", ptq(Rounding.NEAREST)),
        ("ptq gptq sym", ptq(Rounding.GPTQ)),
        ("ptq gptq asym", ptq(Rounding.GPTQ, symmetric=False)),
        ("ptq gptq sym qdq", ptq(Rounding.GPTQ, qdq=True)),
        ("ort rtn asym (default, MatMul)", ort_rtn(False, False)),
        ("ort rtn sym (MatMul)", ort_rtn(True, False)),
        ("ort rtn asym (MatMul+Gather)", ort_rtn(False, True)),
        ("ort gptq", ort_gptq),
    ]
    wanted = [w for w in only.split(",") if w]
    return [(n, b) for n, b in variants if not wanted or any(w in n for w in wanted)]


# --- measuring ------------------------------------------------------------------------------

def _texts(limit: int | None) -> dict:
    pairs = [line.split()[:2] for line in (TEXT / "eval_pairs.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    pairs = pairs[:limit] if limit else pairs
    files = [p[0] for p in pairs] + [p[1] for p in pairs]
    return {"pairs": len(pairs), "feeds": [dict(np.load(TEXT / "eval" / f)) for f in files]}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _embeddings(path: Path, texts: dict) -> np.ndarray:
    sess = _session(path)
    return np.concatenate([sess.run([OUTPUT], feed)[0] for feed in texts["feeds"]])


def _quality(emb: np.ndarray, ref: np.ndarray, texts: dict) -> dict:
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    n = texts["pairs"]
    best, best_ref = _retrieval(emb, n), _retrieval(ref, n)
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "top1": float(np.mean(best == np.arange(n))), "top1_fp32": float(np.mean(best_ref == np.arange(n))),
            "same_top1_as_fp32": float(np.mean(best == best_ref))}


def _retrieval(emb: np.ndarray, n: int) -> np.ndarray:
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return np.argmax(unit[:n] @ unit[n:].T, axis=1)


def _latency(rows: list[dict], work: Path, texts: dict, count: int, rounds: int) -> None:
    """Median per-text time of each model / FP32's, rounds interleaved (the machine is shared)."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or count <= 0:
        return
    feeds = texts["feeds"][:count // 2] + texts["feeds"][texts["pairs"]:texts["pairs"] + count - count // 2]
    paths = {"fp32": MODEL} | {r["variant"]: work / f"minilm.{r['variant'].replace(' ', '_')}.onnx" for r in ok}
    sessions = {k: _session(p) for k, p in paths.items()}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for key, sess in sessions.items():
            for feed in feeds:
                started = time.perf_counter()
                sess.run([OUTPUT], feed)
                times[key].append(time.perf_counter() - started)
    base = float(np.median(times["fp32"]))
    for row in ok:
        row["latency_ratio"] = float(np.median(times[row["variant"]])) / base
        row["latency_ms"] = 1e3 * float(np.median(times[row["variant"]]))
    rows.append({"variant": "fp32", "status": "ok", "latency_ms": 1e3 * base})


def _table(rows: list[dict], args) -> str:
    lines = [f"MiniLM-L3, 4-bit weights, block {args.block_size} (onnxruntime {ort.__version__}; "
             f"{len(_texts(args.eval_limit)['feeds'])} texts; load {os.getloadavg()[0]:.1f})", "",
             "| variant | size / FP32 | mean cos | min cos | retrieval top-1 | same top-1 as FP32 | quantize s | latency / FP32 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["variant"] == "fp32":
            continue
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['status']} | | | | | | |")
            continue
        lines.append(f"| {r['variant']} | {r['size_ratio']:.3f} | {r['cos_mean']:.4f} | {r['cos_min']:.4f} | "
                     f"{100 * r['top1']:.1f} % (FP32 {100 * r['top1_fp32']:.1f} %) | {100 * r['same_top1_as_fp32']:.1f} % | "
                     f"{r['quantize_s']:.1f} | {r.get('latency_ratio', float('nan')):.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
