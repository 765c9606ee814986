"""The two attention models on this CPU and on an emulated AVX2 CPU (no VNNI): does the INT8
model answer the same? (kernels.py does this for the CNNs.)

For MiniLM-L3 and PP-OCRv4 rec: ptq's default output (built by bench/sequence.py, or here) and
`--target vnni` (full-range weights), evaluated natively and by this script run under
`qemu-x86_64 -cpu Haswell,...` (`--evaluate`). Reported per model: the quality metrics against
FP32 on each side (sequence_eval.py), and how often the two sides agree (MiniLM: the share of
texts whose embeddings have cosine >= 0.9999 between the sides, and the retrieval top-1
matches; OCR: lines decoded identically).

    python bench/sequence_kernels.py                       # both models (OCR: 100 evenly spaced lines)
    python bench/sequence_kernels.py --models minilm --ocr-lines 300
    python bench/sequence_kernels.py --models ocr --default-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import sequence_eval as se  # noqa: E402
from common import log, session  # noqa: E402

OUT = Path(__file__).resolve().parent / ".cache" / "sequence_kernels"
RESULTS = Path(__file__).resolve().parent / "results"
QEMU_CPU = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm"
VARIANTS = {"ptq default (portable)": [], "ptq --target vnni": ["--target", "vnni"]}


def outputs(name: str, path: Path, limit: int | None) -> np.ndarray | list[str]:
    """MiniLM: the sentence embeddings of every eval text; OCR: the decoded lines."""
    m = se.minilm() if name == "minilm" else se.ocr()
    sess = session(path, threads=1)
    if name == "minilm":
        return np.concatenate(se.run_outputs(sess, se.samples(m.eval_dir), se.MINILM_OUTPUT))
    characters = se.ocr_characters(m.model_path)
    return [se.ctc_decode(p, characters) for p in se.run_outputs(sess, se.samples(m.eval_dir, limit), se.OCR_OUTPUT)]


def quality(name: str, reference, candidate, limit: int | None) -> dict:
    if name == "minilm":
        return se.minilm_metrics(reference, candidate, se.minilm_pairs()[:len(candidate) // 2])
    labels = se.ocr_labels()
    if limit is not None and limit < len(labels):
        labels = [labels[i] for i in (np.arange(limit) * len(labels)) // limit]
    return se.ocr_metrics(candidate, labels, reference)


def agreement(name: str, native, emulated) -> float:
    if name == "minilm":
        cos = (native * emulated).sum(1) / (np.linalg.norm(native, axis=1) * np.linalg.norm(emulated, axis=1))
        return float(np.mean(cos >= 0.9999) * 100)
    return float(np.mean([a == b for a, b in zip(native, emulated)]) * 100)


def _emulated(name: str, paths: list[Path], limit: int | None) -> list:
    with tempfile.TemporaryDirectory() as tmp:
        dump = Path(tmp) / "out.json"
        cmd = ["qemu-x86_64", "-cpu", QEMU_CPU, sys.executable, __file__, "--evaluate", name, "--dump", str(dump),
               "--ocr-lines", str(limit or 0), *map(str, paths)]
        subprocess.run(cmd, check=True)
        raw = json.loads(dump.read_text())
    return [np.asarray(r) if name == "minilm" else r for r in raw]


def run_model(name: str, limit: int | None, variants: dict[str, list[str]]) -> list[dict]:
    m = se.minilm() if name == "minilm" else se.ocr()
    OUT.mkdir(parents=True, exist_ok=True)
    paths = [m.model_path]
    for label, flags in variants.items():
        out = OUT / f"{name}.{'-'.join(flags) or 'default'}.onnx"
        if not out.exists():
            log(f"{name}: quantizing, {label} ...")
            subprocess.run([sys.executable, "-m", "ptq_cli", "quantize", str(m.model_path), "--data", str(m.calib_dir),
                            "-o", str(out), "--force", "-q", *flags], check=True)
        paths.append(out)
    native = [outputs(name, p, limit) for p in paths]
    log(f"{name}: evaluating {len(paths)} models under qemu-x86_64 -cpu Haswell ...")
    start = time.perf_counter()
    emulated = _emulated(name, paths, limit)
    log(f"{name}: emulated in {time.perf_counter() - start:.0f} s")
    rows = []
    for label, n, e in zip(["fp32", *variants], native, emulated):
        rows.append({"model": name, "variant": label, "native": quality(name, native[0], n, limit),
                     "emulated": quality(name, emulated[0], e, limit), "agreement": agreement(name, n, e)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,ocr")
    parser.add_argument("--ocr-lines", type=int, default=100, help="evenly spaced eval lines (0: all 300)")
    parser.add_argument("--default-only", action="store_true", help="ptq's default output only (no --target vnni)")
    parser.add_argument("--evaluate", help=argparse.SUPPRESS)
    parser.add_argument("--dump", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limit = args.ocr_lines or None
    if args.evaluate:  # the emulated side: outputs of each model, as JSON
        raw = [outputs(args.evaluate, Path(p), limit) for p in args.paths]
        Path(args.dump).write_text(json.dumps([r.tolist() if isinstance(r, np.ndarray) else r for r in raw]))
        return 0
    variants = dict(list(VARIANTS.items())[:1]) if args.default_only else VARIANTS
    rows = [row for name in args.models.split(",") for row in run_model(name, limit, variants)]
    print("| model | variant | native vs FP32 | emulated AVX2 vs FP32 (emulated) | native = emulated |")
    print("|---|---|---|---|---|")
    for r in rows:
        show = {k: round(v, 4) for k, v in r["native"].items() if isinstance(v, float)}
        shown = {k: round(v, 4) for k, v in r["emulated"].items() if isinstance(v, float)}
        print(f"| {r['model']} | {r['variant']} | {show} | {shown} | {r['agreement']:.1f} % |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sequence_kernels.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
