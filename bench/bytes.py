"""The bytes ptq writes for the shared models: one sha256 per (model, flags), to prove that a
change which should not alter any output (a restructuring, a faster search) alters none.

    python bench/bytes.py -o /tmp/after.json                  # hash everything (~10-20 min)
    python bench/bytes.py --check bench/bytes.json            # exit 1 on any difference
    python bench/bytes.py --models mobilenet,ocr --flags default,qoperator

Each run calls `ptq quantize` as a user would (a subprocess, `--objective size`: the default,
which times nothing), on the calibration folders bench/realdata.py and bench/sequence_eval.py
build; the output of a run that fails is recorded as "failed: <its last line>".

bench/bytes.json holds the hashes of main at e0bf618 (2026-12-07, after the exactness-without-VNNI
issue changed the default weights, before issue 21's restructuring), on AMD EPYC (VNNI) with
onnxruntime 1.32.0: what a change that should not alter any output is checked against. One
entry is not e0bf618's: "ocr default", whose file changed from run to run there (the fallback's
ranking raced on a shared model, fixed in drift/switches.py); it holds the race-free file,
which two runs after the fix wrote and which most racy runs wrote too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402
import sequence_eval as se  # noqa: E402

FLAGS = {
    "default": [],
    "qoperator": ["--format", "qoperator"],
    "dynamic": ["--dynamic"],
    "int4": ["--weight-only", "int4"],
    "codebook4": ["--weight-codebook", "4"],
    "equalize": ["--equalize"],
}
SEQUENCE_MODELS = {"minilm": se.minilm, "ocr": se.ocr}


def model_and_data(name: str) -> tuple[Path, Path]:
    if name in SEQUENCE_MODELS:
        model = SEQUENCE_MODELS[name]()
        if not model.model_path.exists():
            raise SystemExit(f"{model.model_path} is missing: run bash ../shared/realdata/get_models.sh")
        return model.model_path, model.calib_dir
    model = realdata.load(name)
    return model.model_path, model.calib_dir


def digest(model: Path, data: Path, flags: list[str]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.onnx"
        run = subprocess.run([sys.executable, "-m", "ptq_cli", "quantize", str(model), "--data", str(data),
                              "-o", str(out), "-q", *flags], capture_output=True, text=True)
        if run.returncode != 0:
            lines = (run.stderr.strip() or "no message").splitlines()
            return f"failed ({run.returncode}): {_without_seconds(lines[-1])}"
        return hashlib.sha256(out.read_bytes()).hexdigest()


def _without_seconds(message: str) -> str:
    """A refusal's message without the seconds it took ("in 116 s"), which differ from run to run."""
    return re.sub(r"\bin \d+(\.\d+)? s\b", "in N s", message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join([*realdata.names(), *SEQUENCE_MODELS]))
    parser.add_argument("--flags", default=",".join(FLAGS))
    parser.add_argument("-o", "--output", type=Path, help="write the hashes here (JSON)")
    parser.add_argument("--check", type=Path, help="compare with these hashes; exit 1 on a difference")
    args = parser.parse_args(argv)
    expected = json.loads(args.check.read_text()) if args.check else {}
    hashes, differ = {}, []
    for name in args.models.split(","):
        model, data = model_and_data(name)
        for flag in args.flags.split(","):
            key = f"{name} {flag}"
            hashes[key] = digest(model, data, FLAGS[flag])
            same = "" if key not in expected else ("  same" if expected[key] == hashes[key] else "  DIFFERS")
            if same == "  DIFFERS":
                differ.append(key)
            print(f"{key:28s} {hashes[key]}{same}", flush=True)
    if args.output:
        args.output.write_text(json.dumps(hashes, indent=1) + "\n")
    if differ:
        print(f"{len(differ)} output(s) differ: {', '.join(differ)}", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
