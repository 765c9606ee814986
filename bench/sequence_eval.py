"""Evaluation of the two attention models of ../shared/realdata/ (text/ and ocr/), as its README
defines the metrics.

- MiniLM-L3 (sentence embeddings): cosine of output `461` to FP32 per eval text (mean, min);
  retrieval top-1 (each synopsis against the 300 descriptions) and the share of synopses whose
  best match is the one FP32 finds.
- PP-OCRv4 rec (text lines): greedy CTC decoding; exact-line accuracy against the labels (ends
  stripped, runs of spaces collapsed, and with every space removed), character accuracy, and
  the share of lines decoded exactly as FP32.

Every sample runs alone (batch 1): the sequence lengths and line widths differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REALDATA = Path(os.environ.get("PTQ_REALDATA", Path(__file__).resolve().parents[2] / "shared" / "realdata"))
MODEL_CACHE = Path(os.environ.get("PTQ_REALDATA_MODELS", Path.home() / ".cache" / "ptq-realdata"))


@dataclass(frozen=True)
class SequenceModel:
    name: str
    model_path: Path
    calib_dir: Path
    eval_dir: Path


def minilm() -> SequenceModel:
    return SequenceModel("minilm", MODEL_CACHE / "paraphrase-MiniLM-L3-v2.onnx",
                         REALDATA / "text" / "minilm" / "calib", REALDATA / "text" / "minilm" / "eval")


def ocr() -> SequenceModel:
    return SequenceModel("ocr", MODEL_CACHE / "ch_PP-OCRv4_rec_infer.onnx",
                         REALDATA / "ocr" / "calib_npz", REALDATA / "ocr" / "eval_npz")


def samples(folder: Path, limit: int | None = None) -> list[dict[str, np.ndarray]]:
    files = sorted(folder.glob("*.npz"))
    if limit is not None and limit < len(files):
        files = [files[i] for i in (np.arange(limit) * len(files)) // limit]
    out = []
    for f in files:
        with np.load(f) as z:
            out.append({k: z[k] for k in z.files})
    return out


def run_outputs(session, inputs: list[dict[str, np.ndarray]], output: str) -> list[np.ndarray]:
    return [session.run([output], x)[0] for x in inputs]


# --- MiniLM -----------------------------------------------------------------------------------

MINILM_OUTPUT = "461"


def minilm_pairs() -> list[tuple[int, int]]:
    """(synopsis index, description index) into the sorted eval files."""
    names = [f.name for f in sorted((REALDATA / "text" / "minilm" / "eval").glob("*.npz"))]
    where = {n: i for i, n in enumerate(names)}
    pairs = []
    for line in (REALDATA / "text" / "minilm" / "eval_pairs.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#"):
            pairs.append((where[parts[0]], where[parts[1]]))
    return pairs


def _best_matches(embeddings: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries = e[[p[0] for p in pairs]]
    docs = e[[p[1] for p in pairs]]
    sims = queries @ docs.T
    best = sims.argmax(axis=1)
    rank = (sims > sims[np.arange(len(pairs)), np.arange(len(pairs))][:, None]).sum(axis=1) + 1
    return best, rank


def minilm_metrics(reference: np.ndarray, candidate: np.ndarray, pairs: list[tuple[int, int]]) -> dict:
    """reference/candidate: [N, 384] embeddings of the sorted eval texts."""
    cos = (reference * candidate).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1))
    best_ref, _ = _best_matches(reference, pairs)
    best, rank = _best_matches(candidate, pairs)
    return {
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "top1": float((best == np.arange(len(pairs))).mean() * 100),
        "mrr": float((1.0 / rank).mean()),
        "top1_same_as_fp32": float((best == best_ref).mean() * 100),
    }


# --- OCR --------------------------------------------------------------------------------------

OCR_OUTPUT = "softmax_11.tmp_0"


def ocr_characters(model_path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    table = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    return ["<blank>", *table, " "]


def ctc_decode(probs: np.ndarray, characters: list[str]) -> str:
    ids = probs.reshape(probs.shape[-2], probs.shape[-1]).argmax(axis=1)
    keep = np.ones(len(ids), bool)
    keep[1:] = ids[1:] != ids[:-1]
    return "".join(characters[i] for i in ids[keep] if i != 0)


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def ocr_labels(split: str = "eval") -> list[str]:
    return (REALDATA / "ocr" / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()


def ocr_metrics(lines: list[str], labels: list[str], reference: list[str] | None = None) -> dict:
    got = [_normalise(t) for t in lines]
    want = [_normalise(t) for t in labels[:len(got)]]
    out = {
        "exact": 100.0 * np.mean([g == w for g, w in zip(got, want)]),
        "exact_nospace": 100.0 * np.mean([g.replace(" ", "") == w.replace(" ", "") for g, w in zip(got, want)]),
        "chars": 100.0 * (1 - sum(_edit_distance(g, w) for g, w in zip(got, want)) / sum(len(w) for w in want)),
    }
    if reference is not None:
        out["same_as_fp32"] = 100.0 * np.mean([a == b for a, b in zip(lines, reference)])
    return out
