"""Does one tapped pass rank the harmful nodes as the isolated runs do?

The fallback search ranks its units by isolated sensitivity: one run per quantized node with only
that node quantized (drift/sensitivity.py), the most expensive part of a search after the trials.
One pass of the fully quantized model with every layer tapped gives, per node, the SQNR its output
keeps against FP32 and the SQNR its inputs had: their difference is what the node itself adds.
This measures, on the shared models, how far the two rankings agree (Spearman's rho over all
nodes, and the overlap of the first k), to decide whether the pass could replace the runs.

    python bench/ranking.py                      # MobileNetV1 per tensor and per channel, ResNet-8, OCR
    python bench/ranking.py --models ocr --samples 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402
import sequence_eval as se  # noqa: E402
from host import cpu_name  # noqa: E402

CASES = {  # name -> (model loader, per-channel weights)
    "mobilenet-per-tensor": ("mobilenet", False),
    "mobilenet": ("mobilenet", True),
    "resnet8": ("resnet8", True),
    "ocr": ("ocr", True),
}


def rankings(model: Path, data: Path, per_channel: bool, samples: int) -> tuple[list[str], list[str]]:
    """(isolated ranking, one-pass ranking by the SQNR a node loses), most harmful first, over the
    nodes both measured."""
    import ptq_cli
    from ptq_cli.quantization.placement.budget import MEASURE_ONLY
    from ptq_cli.recipe import DEFAULT_ACTIVATIONS, PerChannel, PerTensor, QType, TensorSpec

    recipe = ptq_cli.Recipe(weights=TensorSpec(QType.INT8, True, PerChannel() if per_channel else PerTensor()),
                            activations=DEFAULT_ACTIVATIONS)
    candidate = ptq_cli.quantize(str(model), None, data=str(data), recipe=recipe, budget=MEASURE_ONLY,
                                 progress=False).model
    report = ptq_cli.compare(str(model), candidate, str(data), per_layer=True, per_layer_samples=samples,
                             max_samples=samples, progress=False)
    isolated = [row.node for row in report.layers.sensitivity.rows if row.node]
    loss = {}
    for row in report.layers.matched:
        if row.node and row.input_sqnr_db is not None and np.isfinite(row.sqnr_db):
            loss[row.node] = min(row.input_sqnr_db, 200.0) - row.sqnr_db
    both = [n for n in isolated if n in loss]
    one_pass = sorted(both, key=lambda n: (-loss[n], n))
    return both, one_pass


def spearman(a: list[str], b: list[str]) -> float:
    rank_b = {n: i for i, n in enumerate(b)}
    x = np.arange(len(a), dtype=float)
    y = np.array([rank_b[n] for n in a], dtype=float)
    return float(np.corrcoef(x, y)[0, 1]) if len(a) > 2 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(CASES))
    parser.add_argument("--samples", type=int, default=8, help="samples for both rankings")
    args = parser.parse_args(argv)
    print(f"{cpu_name()}; {args.samples} samples per ranking\n")
    print("| model | nodes | Spearman rho | first 5 shared | first 10 shared |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        loader, per_channel = CASES[name]
        if loader == "ocr":
            m = se.ocr()
            model, data = m.model_path, m.calib_dir
        else:
            m = realdata.load(loader)
            model, data = m.model_path, m.calib_dir
        isolated, one_pass = rankings(model, data, per_channel, args.samples)
        top = {k: len(set(isolated[:k]) & set(one_pass[:k])) for k in (5, 10)}
        print(f"| {name} | {len(isolated)} | {spearman(isolated, one_pass):.2f} | {top[5]}/5 | {top[10]}/10 |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
