"""ptq and onnxruntime.quantization on a model above protobuf's 2 GB limit, end to end.

Builds a transformer-like stack (per layer: LayerNorm -> MatMul D x 4D -> Add -> Relu ->
MatMul 4D x D -> Add -> residual Add) with random weights in external data, > 3 GB by default,
then runs, each in its own process under /usr/bin/time (peak RSS, wall time):

    ptq calibrate | ptq quantize --calibration (static QDQ) | ptq quantize --dynamic | --weight-only int4
    onnxruntime quantize_static (QDQ, MinMax, per-channel) | onnxruntime quantize_dynamic
    ptq compare FP32 vs each of the four outputs (SQNR of the output)

and prints per step: wall time, peak RSS and its ratio to the model's size on disk, the
quantized MatMul count and the output SQNR. The model is written under --work (default
bench/.cache/scale, never committed) and every big file is deleted at the end unless --keep.
Memory: about 1.5x the model for ptq, more for onnxruntime; run it alone on a shared machine.

    python bench/scale.py                      # 25 layers, D=2048: 3.36 GB
    python bench/scale.py --layers 4 --dim 512 # a small smoke run
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
PTQ = [PYTHON, "-m", "ptq_cli"]


def build_model(path: Path, layers: int, dim: int, seq: int, seed: int = 0) -> int:
    """Write the model and PATH.data one tensor at a time (memory: one weight). Returns bytes on disk."""
    rng = np.random.default_rng(seed)
    data_path = path.with_name(path.name + ".data")
    inits, nodes, offset = [], [], 0
    with open(data_path, "wb") as f:
        def weight(name: str, array: np.ndarray) -> str:
            nonlocal offset
            raw = np.ascontiguousarray(array, np.float32).tobytes()
            f.write(raw)
            t = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape,
                                 data_location=TensorProto.EXTERNAL)
            for k, v in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(raw)))):
                t.external_data.add(key=k, value=v)
            inits.append(t)
            offset += len(raw)
            return name

        x = "x"
        for i in range(layers):
            g = weight(f"ln{i}.g", np.ones(dim, np.float32))
            b = weight(f"ln{i}.b", np.zeros(dim, np.float32))
            w1 = weight(f"l{i}.w1", rng.standard_normal((dim, 4 * dim), dtype=np.float32) / np.sqrt(dim))
            b1 = weight(f"l{i}.b1", rng.standard_normal(4 * dim, dtype=np.float32) * 0.1)
            w2 = weight(f"l{i}.w2", rng.standard_normal((4 * dim, dim), dtype=np.float32) / np.sqrt(4 * dim))
            b2 = weight(f"l{i}.b2", rng.standard_normal(dim, dtype=np.float32) * 0.1)
            nodes += [helper.make_node("LayerNormalization", [x, g, b], [f"n{i}"], name=f"ln{i}", axis=-1),
                      helper.make_node("MatMul", [f"n{i}", w1], [f"h{i}"], name=f"fc1_{i}"),
                      helper.make_node("Add", [f"h{i}", b1], [f"hb{i}"], name=f"bias1_{i}"),
                      helper.make_node("Relu", [f"hb{i}"], [f"r{i}"], name=f"relu{i}"),
                      helper.make_node("MatMul", [f"r{i}", w2], [f"o{i}"], name=f"fc2_{i}"),
                      helper.make_node("Add", [f"o{i}", b2], [f"ob{i}"], name=f"bias2_{i}"),
                      helper.make_node("Add", [x, f"ob{i}"], [f"x{i}"], name=f"residual{i}")]
            x = f"x{i}"
        nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(nodes, "scale", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path.stat().st_size + data_path.stat().st_size


def write_data(folder: Path, count: int, seq: int, dim: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.save(folder / f"{i:03d}.npy", rng.standard_normal((1, seq, dim), dtype=np.float32))


def timed(name: str, argv: list[str], log: Path) -> dict:
    """Run argv under /usr/bin/time -v; peak RSS (bytes) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    log.write_text(f"$ {' '.join(argv)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result = {"step": name, "ok": proc.returncode in (0, 1), "rc": proc.returncode, "wall": wall,
              "rss": int(rss.group(1)) * 1024 if rss else 0, "stdout": proc.stdout}
    if not result["ok"]:
        tail = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith("\t")][-3:]
        print(f"  {name} failed (exit {proc.returncode}): {' | '.join(tail)}", file=sys.stderr)
    return result


ORT_STATIC = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    class Reader(CalibrationDataReader):
        def __init__(self): self.files = iter(sorted(Path(sys.argv[3]).glob("*.npy")))
        def get_next(self):
            f = next(self.files, None)
            return None if f is None else {"x": np.load(f)}
    quantize_static(sys.argv[1], sys.argv[2], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, use_external_data_format=True)
""")
ORT_DYNAMIC = textwrap.dedent("""
    import sys
    from onnxruntime.quantization import quantize_dynamic
    quantize_dynamic(sys.argv[1], sys.argv[2], use_external_data_format=True)
""")
MATMULS = textwrap.dedent("""
    import sys, onnx
    m = onnx.load(sys.argv[1], load_external_data=False)
    producer = {o: n.op_type for n in m.graph.node for o in n.output}
    integer = ("MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul", "MatMulIntegerToFloat", "MatMulNBits")
    print(sum(1 for n in m.graph.node if n.op_type in integer or (n.op_type == "MatMul" and
              producer.get(n.input[1]) == "DequantizeLinear")))
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=25)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--calib", type=int, default=8)
    parser.add_argument("--eval", type=int, default=4)
    parser.add_argument("--work", type=Path, default=REPO / "bench" / ".cache" / "scale")
    parser.add_argument("--keep", action="store_true", help="keep the models afterwards")
    parser.add_argument("--skip-ort", action="store_true")
    args = parser.parse_args()

    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    model = work / "model.onnx"
    t = time.perf_counter()
    size = build_model(model, args.layers, args.dim, args.seq)
    print(f"model: {args.layers} layers, D={args.dim}, {2 * args.layers} MatMuls, {size / 1e9:.2f} GB on disk "
          f"(built in {time.perf_counter() - t:.0f} s)", file=sys.stderr)
    write_data(work / "calib", args.calib, args.seq, args.dim, 1)
    write_data(work / "eval", args.eval, args.seq, args.dim, 2)
    logs = work / "logs"
    logs.mkdir()
    table = work / "model.calib.json"
    outputs = {"ptq static": work / "ptq_static.onnx", "ptq dynamic": work / "ptq_dynamic.onnx",
               "ptq int4": work / "ptq_int4.onnx",
               "ort static": work / "ort_static.onnx", "ort dynamic": work / "ort_dynamic.onnx"}
    steps = [
        ("ptq calibrate", PTQ + ["calibrate", str(model), "--data", str(work / "calib"), "-o", str(table), "--quiet"]),
        ("ptq quantize static", PTQ + ["quantize", str(model), "--calibration", str(table), "--objective", "size",
                                       "-o", str(outputs["ptq static"]), "--quiet"]),
        ("ptq quantize --dynamic", PTQ + ["quantize", str(model), "--dynamic", "--objective", "size",
                                          "-o", str(outputs["ptq dynamic"]), "--quiet"]),
        ("ptq quantize --weight-only int4", PTQ + ["quantize", str(model), "--weight-only", "int4", "--objective",
                                                   "size", "-o", str(outputs["ptq int4"]), "--quiet"]),
    ]
    if not args.skip_ort:
        steps += [("ort quantize_static", [PYTHON, "-c", ORT_STATIC, str(model), str(outputs["ort static"]),
                                           str(work / "calib")]),
                  ("ort quantize_dynamic", [PYTHON, "-c", ORT_DYNAMIC, str(model), str(outputs["ort dynamic"])])]
    results = []
    for name, argv in steps:
        print(f"running {name} ...", file=sys.stderr)
        results.append(timed(name, argv, logs / f"{name.replace(' ', '_')}.log"))
    for label, path in outputs.items():
        if not path.exists():
            continue
        print(f"running ptq compare ({label}) ...", file=sys.stderr)
        r = timed(f"ptq compare {label}", PTQ + ["compare", str(model), str(path), "--data", str(work / "eval"),
                                                  "--json"], logs / f"compare_{label.replace(' ', '_')}.log")
        r["sqnr"] = _sqnr(r["stdout"])
        counts = subprocess.run([PYTHON, "-c", MATMULS, str(path)], capture_output=True, text=True).stdout.split()
        r["matmuls"] = f"{counts[0] if counts else '?'}/{2 * args.layers}"
        r["on_disk"] = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        results.append(r)
    _report(results, size)


def _sqnr(stdout: str):
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    found = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key.lower().startswith("sqnr") and isinstance(value, (int, float)):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(report)
    return found[0] if found else None


def _report(results: list[dict], size: int) -> None:
    print(f"\n{'step':32s} {'wall s':>8s} {'peak RSS GB':>12s} {'RSS/model':>10s} {'ok':>4s}  extra")
    for r in results:
        extra = ""
        if "sqnr" in r:
            extra = (f"SQNR {r['sqnr']:.1f} dB" if r["sqnr"] is not None else "SQNR ?") + \
                    f", quantized MatMuls {r['matmuls']}, output {r['on_disk'] / 1e9:.2f} GB"
        print(f"{r['step']:32s} {r['wall']:8.1f} {r['rss'] / 1e9:12.2f} {r['rss'] / size:10.2f} "
              f"{'yes' if r['ok'] else 'NO':>4s}  {extra}")
    print(f"\nmodel on disk: {size / 1e9:.2f} GB; target: peak RSS <= 1.5x the model "
          f"({1.5 * size / 1e9:.2f} GB), every MatMul quantized, time no worse than onnxruntime's")


if __name__ == "__main__":
    main()
