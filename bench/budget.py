"""The drift the default budget sees on the CNNs of ../shared/realdata: every healthy quantization
must meet it (so its output does not change), a collapsed one must miss it.

    python bench/budget.py [--models mobilenet,resnet8] [--json results/budget.json]

For each model and weight granularity: ptq quantizes with the budget measuring only
(MEASURE_ONLY: no fallback) and prints the drift on the (up to) 100 evenly spaced calibration samples
that the default budget judges, and whether the default budget holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import realdata  # noqa: E402

import ptq_cli  # noqa: E402
from ptq_cli.quantization.placement.budget import MEASURE_ONLY, Budget  # noqa: E402
from ptq_cli.recipe import PerTensor, QType, Recipe, TensorSpec  # noqa: E402

RECIPES = {"per-channel": Recipe(), "per-tensor": Recipe(weights=TensorSpec(QType.INT8, True, PerTensor()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(realdata.names()))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    print("| model | weights | SQNR dB | mean cosine | min cosine | top-1 agreement | default budget |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = realdata.load(name)
        for granularity, recipe in RECIPES.items():
            start = time.perf_counter()
            result = ptq_cli.quantize(str(model.model_path), None, data=str(model.calib_dir), recipe=recipe,
                                      progress=False, budget=MEASURE_ONLY)
            out = result.drift.to_dict()["outputs"][0]
            met = _meets_default(result)
            rows.append({"model": name, "weights": granularity, **out, "default_met": met,
                         "seconds": time.perf_counter() - start})
            agreement = "-" if out["top1_agreement"] is None else f"{out['top1_agreement']:.3f}"
            print(f"| {name} | {granularity} | {out['sqnr_db']:.2f} | {out['cosine_mean']:.4f} | "
                  f"{out['cosine_min']:.4f} | {agreement} | {'met' if met else 'MISSED'} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _meets_default(result) -> bool:
    """The default budget's verdict on the figures measured (re-judged from the metadata)."""
    from ptq_cli.drift.kinds import OutputKind
    from ptq_cli.drift.report import ClassReport, OutputReport

    reports = []
    for out in result.drift.to_dict()["outputs"]:
        agreement = out["top1_agreement"]
        classes = ClassReport(2, agreement, None, 0, None, None, None, None) if agreement is not None else None
        reports.append(OutputReport(out["name"], (), result.drift.samples, out["nonfinite_candidate"], 0,
                                    out["sqnr_db"] or float("inf"), out["cosine_mean"], out["cosine_min"], 0.0, 0.0,
                                    0.0, (), (), classes, kind=OutputKind(out["kind"])))
    return all(r.passed for r in Budget().judge(tuple(reports)))


if __name__ == "__main__":
    sys.exit(main())
