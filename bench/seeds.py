"""The three seed quantizers of issue 14 beside what ptq already does, on the real models.

    python bench/seeds.py stochastic [--models ...] [--seeds 0,1,2]   # nearest vs stochastic rounding
    python bench/seeds.py datafree   [--models ...]                   # real data vs data-free vs noise
    python bench/seeds.py codebook   [--models ...] [--bits 4]        # codebook vs uniform weights

Each prints a Markdown table (top-1 %, drop from FP32, file size, quantize time) and writes
bench/results/seeds-<what>.json. Run under `nice -n 5` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import realdata  # noqa: E402
from common import log, parse_list, top1  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _quantize(model: realdata.RealModel, out: Path, recipe, **kwargs) -> tuple[float, int]:
    from ptq_cli.quantization.api import quantize
    from ptq_cli.quantization.placement.budget import MEASURE_ONLY

    kwargs.setdefault("data", str(model.calib_dir))
    kwargs.setdefault("budget", MEASURE_ONLY)  # measure what each method gives, no fallback to float
    start = time.perf_counter()
    quantize(str(model.model_path), str(out), recipe=recipe, force=True, progress=False, **kwargs)
    return time.perf_counter() - start, out.stat().st_size


def _subjects(args):
    """(name, loaded model, FP32 top-1) of every model the run asks for."""
    for name in parse_list(args.models, realdata.names(), "model"):
        model = realdata.load(name, _options(args))
        yield name, model, top1(model.model_path, model)


def _row(name: str, label: str, fp32: float, model, out: Path, seconds: float, size: int) -> dict:
    score = top1(out, model)
    log(f"  {name} {label}: {score:.2f} % ({size / 1e6:.2f} MB, {seconds:.1f} s)")
    return {"model": name, "variant": label, "fp32": fp32, "top1": score, "drop": fp32 - score,
            "bytes": size, "fp32_bytes": model.model_path.stat().st_size, "seconds": round(seconds, 2)}


# --- stochastic rounding ------------------------------------------------------------------------

def stochastic(args) -> list[dict]:
    from ptq_cli.recipe import PerChannel, PerTensor, QType, Recipe, Rounding, TensorSpec

    rows = []
    for name, model, fp32 in _subjects(args):
        out_dir = _out_dir(args)
        for gran, granularity in (("per-channel", PerChannel()), ("per-tensor", PerTensor())):
            for bc in (True, False):
                base = Recipe(weights=TensorSpec(QType.INT8, True, granularity), bias_correction=bc)
                suffix = f"{gran}{'' if bc else ', no bias corr.'}"
                out = out_dir / f"{name}.nearest.onnx"
                rows.append(_row(name, f"nearest, {suffix}", fp32, model, out, *_quantize(model, out, base)))
                if bc:  # GPTQ (the rounding issue), which needs the Gram matrices of the data
                    out = out_dir / f"{name}.gptq.onnx"
                    rows.append(_row(name, f"gptq, {suffix}", fp32, model, out,
                                     *_quantize(model, out, base.with_(rounding=Rounding.GPTQ))))
                for seed in [int(s) for s in args.seeds.split(",")]:
                    recipe = base.with_(rounding=Rounding.STOCHASTIC, seed=seed)
                    out = out_dir / f"{name}.stochastic.onnx"
                    rows.append(_row(name, f"stochastic seed {seed}, {suffix}", fp32, model, out,
                                     *_quantize(model, out, recipe)))
    return rows


# --- data-free ranges -----------------------------------------------------------------------------

# The preprocessing each model's README declares (what a user states with --preset/--scale/...).
DECLARED = {
    "mobilenet": dict(preset="imagenet-tf", resize=None),  # images drawn at 224: no resize/crop
    "resnet8": dict(preset="raw"), "resnet_large": dict(preset="raw"), "mnist_cntk": dict(preset="raw"),
    "cnn_mnist_pytorch": dict(scale=1 / 255, mean=(0.1307,), std=(0.3081,)),
}


def _declared(name: str):
    from dataclasses import replace

    from ptq_cli.data.images import ImagePreprocess

    opts = dict(DECLARED[name])
    base = ImagePreprocess.preset(opts.pop("preset")) if "preset" in opts else ImagePreprocess()
    if "resize" in opts:
        opts["crop"] = None
    return replace(base, **opts)


def datafree(args) -> list[dict]:
    from ptq_cli.recipe import Recipe

    rows = []
    for name, model, fp32 in _subjects(args):
        out = _out_dir(args) / f"{name}.datafree.onnx"
        for bc in (True, False):
            recipe = Recipe(bias_correction=bc)
            tag = "" if bc else ", no bias corr."
            variants = [(f"static, real calibration data ({model.calib_count}){tag}", dict()),
                        (f"data-free (BN stats / dead-leaves images, declared preprocessing){tag}",
                         dict(data=None, data_free=True, image=_declared(name))),
                        (f"calibration on N(0,1) noise (32){tag}", dict(data=str(_noise(model, "normal")))),
                        (f"calibration on uniform pixel noise, declared preprocessing (32){tag}",
                         dict(data=str(_noise(model, "pixels", _declared(name)))))]
            for label, kwargs in variants:
                rows.append(_row(name, label, fp32, model, out, *_quantize(model, out, recipe, **kwargs)))
    return rows


def _noise(model: realdata.RealModel, kind: str, preprocess=None, count: int = 32) -> Path:
    """A folder of `count` noise samples shaped like the calibration samples."""
    import numpy as np

    folder = realdata.CACHE / "noise" / f"{model.name}-{kind}"
    if folder.is_dir() and len(list(folder.glob("*.npy"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shape = np.load(next(iter(sorted(model.calib_dir.glob("*.npy"))))).shape
    rng = np.random.default_rng(0)
    for i in range(count):
        if kind == "normal":
            x = rng.standard_normal(shape)
        else:  # white noise pixels 0..255, then the model's preprocessing
            pixels = rng.integers(0, 256, shape).astype(np.float32)
            mean = np.asarray(preprocess.mean, np.float32).reshape(1, -1, 1, 1)
            std = np.asarray(preprocess.std, np.float32).reshape(1, -1, 1, 1)
            x = (pixels * np.float32(preprocess.scale) - mean) / std
        np.save(folder / f"{i:04d}.npy", x.astype(np.float32))
    return folder


# --- codebook weights ---------------------------------------------------------------------------

def codebook(args) -> list[dict]:
    from ptq_cli.recipe import PerChannel, PerTensor, Recipe, WeightCodebook

    rows = []
    for name, model, fp32 in _subjects(args):
        out_dir = _out_dir(args)
        for gran, granularity in (("per-channel", PerChannel()), ("per-tensor", PerTensor())):
            out = out_dir / f"{name}.uniform.onnx"
            start = time.perf_counter()
            size = uniform_weights(model.model_path, out, args.bits, gran == "per-channel")
            rows.append(_row(name, f"uniform uint{args.bits}, {gran}", fp32, model, out,
                             time.perf_counter() - start, size))
            recipe = Recipe(weight_codebook=WeightCodebook(args.bits, granularity))
            for label, data in (("", None), (", Gram-weighted", str(model.calib_dir))):
                out = out_dir / f"{name}.codebook.onnx"
                rows.append(_row(name, f"codebook {args.bits}-bit, {gran}{label}", fp32, model, out,
                                 *_quantize(model, out, recipe, data=data)))
    return rows


# MiniLM (sentence embeddings) and PP-OCRv4 (CTC line recogniser): agreement with FP32.
ATTENTION = {
    "minilm": (Path.home() / ".cache/ptq-realdata/paraphrase-MiniLM-L3-v2.onnx", realdata.REALDATA / "text/minilm"),
    "ocr": (Path.home() / ".cache/ptq-realdata/ch_PP-OCRv4_rec_infer.onnx", realdata.REALDATA / "ocr"),
}


def codebook_attention(args) -> list[dict]:
    """Codebook vs uniform weights on MiniLM (mean/min cosine of the sentence embedding with FP32)
    and PP-OCRv4 (share of lines whose greedy CTC decoding equals FP32's)."""
    from ptq_cli.recipe import PerChannel, Recipe, WeightCodebook

    rows = []
    for name in parse_list(args.models, list(ATTENTION), "model"):
        path, folder = ATTENTION[name]
        if not path.exists():
            log(f"{name}: {path} absent (bash ../shared/realdata/get_models.sh); skipped")
            continue
        calib = folder / ("calib" if name == "minilm" else "calib_npz")
        evaluation = sorted((folder / ("eval" if name == "minilm" else "eval_npz")).glob("*.npz"))
        if args.eval_limit:
            evaluation = evaluation[:: max(1, len(evaluation) // args.eval_limit)][: args.eval_limit]
        reference = _outputs(path, evaluation, name)
        variants = [("uniform", None)] + [(f"codebook {args.bits}-bit" + label, data)
                                          for label, data in (("", None), (", Gram-weighted", str(calib)))]
        for label, data in variants:
            out = _out_dir(args) / f"{name}.{label.split()[0]}.onnx"
            start = time.perf_counter()
            if label == "uniform":
                label = f"uniform uint{args.bits}, per-channel"
                size = uniform_weights(path, out, args.bits, True)
            else:
                from ptq_cli.quantization.api import quantize
                from ptq_cli.quantization.placement.budget import MEASURE_ONLY

                quantize(str(path), str(out), data=data, force=True, progress=False, budget=MEASURE_ONLY,
                         recipe=Recipe(weight_codebook=WeightCodebook(args.bits, PerChannel())))
                size = out.stat().st_size
            seconds = time.perf_counter() - start
            agreement = _agreement(name, reference, _outputs(out, evaluation, name))
            log(f"  {name} {label}: {agreement} ({size / 1e6:.2f} MB, {seconds:.1f} s)")
            rows.append({"model": name, "variant": label, "bytes": size, "fp32_bytes": path.stat().st_size,
                         "seconds": round(seconds, 2), **agreement})
    return rows


def _outputs(path: Path, files: list[Path], model: str) -> list:
    import numpy as np

    from common import session

    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    wanted = ["461"] if model == "minilm" else [sess.get_outputs()[0].name]  # MiniLM: the sentence embedding
    return [sess.run(wanted, {n: np.load(f)[n] for n in names})[0] for f in files]


def _agreement(name: str, reference: list, candidate: list) -> dict:
    import numpy as np

    if name == "minilm":
        cos = [float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(reference, candidate)]
        return {"mean_cosine": round(float(np.mean(cos)), 5), "min_cosine": round(float(np.min(cos)), 5)}
    same = [_ctc(a) == _ctc(b) for a, b in zip(reference, candidate)]
    frames = [float((a.argmax(-1) == b.argmax(-1)).mean()) for a, b in zip(reference, candidate)]
    return {"lines_as_fp32": round(100.0 * sum(same) / len(same), 2),
            "frames_as_fp32": round(100.0 * sum(frames) / len(frames), 2)}


def _ctc(probabilities) -> tuple:
    best = probabilities[0].argmax(-1)
    keep = [int(c) for i, c in enumerate(best) if c != 0 and (i == 0 or c != best[i - 1])]
    return tuple(keep)


def uniform_weights(source: Path, out: Path, bits: int, per_channel: bool) -> int:
    """The equal-bits baseline: the same tensors a codebook replaces, as asymmetric uint`bits`
    (min/max, per output channel or per tensor) + DequantizeLinear; everything else unchanged."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from ptq_cli.model.graph import GraphIndex
    from ptq_cli.model.prepare import prepare
    from ptq_cli.quantization.emitters.codebook import _refuse, _site
    from ptq_cli.quantization.arithmetic.scheme import compute_qparams, quantize, weight_range
    from ptq_cli.recipe import QType, Recipe, WeightCodebook

    qtype = QType.UINT4 if bits <= 4 else QType.UINT8
    recipe = Recipe(weight_codebook=WeightCodebook(bits))
    model = prepare(onnx.load(str(source)), min_opset=21)
    index = GraphIndex(model.graph)
    replaced, nodes = {}, []
    for node in model.graph.node:
        site = _site(node, index)
        if site is None or site.tensor in replaced or _refuse(node, index.constant(site.tensor), recipe):
            continue
        w = index.constant(site.tensor)
        axis = site.axis if per_channel else None
        lo, hi = weight_range(w, axis)
        qp = compute_qparams(lo, hi, qtype, symmetric=False, axis=axis)
        if bits < qtype.bits:  # fewer levels inside the container type: a wider step
            levels = (1 << bits) - 1
            scale = ((np.maximum(hi, 0) - np.minimum(lo, 0)) / levels).astype(np.float32)
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            zero = np.clip(np.rint(-np.minimum(lo, 0) / scale), 0, levels).astype(qp.zero_point.dtype)
            qp = type(qp)(scale, zero, qtype, qp.axis)
        q = quantize(w, qp)
        names = [f"{site.tensor}_uq", f"{site.tensor}_uscale", f"{site.tensor}_uzero"]
        replaced[site.tensor] = [helper.make_tensor(names[0], qtype.onnx_type, q.shape, q.reshape(-1).tolist()),
                                 numpy_helper.from_array(qp.scale, names[1]),
                                 helper.make_tensor(names[2], qtype.onnx_type, qp.zero_point.shape,
                                                    qp.zero_point.reshape(-1).tolist())]
        attrs = {"axis": axis} if axis is not None else {}
        nodes.append(helper.make_node("DequantizeLinear", names, [site.tensor], **attrs))
    kept = [t for t in model.graph.initializer if t.name not in replaced]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + [t for ts in replaced.values() for t in ts])
    all_nodes = nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(all_nodes)
    onnx.save(model, str(out))
    return out.stat().st_size


# --- common -------------------------------------------------------------------------------------

def _options(args) -> realdata.LoadOptions:
    return realdata.LoadOptions(calib_count=args.calib_count, eval_limit=args.eval_limit)


def _out_dir(args) -> Path:
    out = realdata.CACHE / "seeds"
    out.mkdir(parents=True, exist_ok=True)
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| model | variant | FP32 | top-1 | drop | file | × FP32 | quantize s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {r['fp32']:.2f} | {r['top1']:.2f} | {r['drop']:+.2f} | "
                     f"{r['bytes'] / 1e6:.2f} MB | {r['bytes'] / r['fp32_bytes']:.3f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


COMMANDS = {"stochastic": stochastic, "datafree": datafree, "codebook": codebook, "codebook-attention": codebook_attention}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=sorted(COMMANDS))
    p.add_argument("--models", default=",".join(realdata.names()))
    p.add_argument("--seeds", default="0,1,2", help="stochastic: the seeds to draw")
    p.add_argument("--bits", type=int, default=4, help="codebook: index bits")
    p.add_argument("--calib-count", type=int, default=None)
    p.add_argument("--eval-limit", type=int, default=None)
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)
    rows = COMMANDS[args.what](args)
    print(markdown(rows) if rows and "top1" in rows[0] else json.dumps(rows, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"seeds-{args.what}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
