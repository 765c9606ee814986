"""Weighted 1-D k-means, many independent rows at once (one row per codebook).

Each row's values are clustered to k centroids minimising Σ importance·(x - centroid)². In one
dimension the clusters are intervals, so assignment is a search among the midpoints of the
sorted centroids (no k-wide distance matrix), and each update is one bincount over all rows.
The start is the row's uniform min..max grid, which makes the result deterministic; tensors too
large to fit quickly (an embedding table) are fitted on a seeded subsample of each row's values
(~2^19 in all), then every value is assigned.
"""

from __future__ import annotations

import numpy as np

_FIT_VALUES = 1 << 19  # values (all rows together) used to fit the centroids; all are assigned at the end
_CHUNK = 1 << 23  # comparisons per block when assigning many short rows at once


def kmeans_rows(values: np.ndarray, k: int, importance: np.ndarray | None = None, *,
                rng: np.random.Generator, iterations: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Cluster each row of `values` [R, M]; returns (centroids [R, k] sorted, assignment [R, M] uint8/16)."""
    x = np.asarray(values, np.float64)
    rows, m = x.shape
    weights = None if importance is None else np.broadcast_to(np.asarray(importance, np.float64), x.shape)
    fit_x, fit_w = x, weights
    per_row = max(64 * k, _FIT_VALUES // rows)
    if m > per_row:
        pick = np.sort(rng.choice(m, per_row, replace=False))
        fit_x, fit_w = x[:, pick], None if weights is None else weights[:, pick]
    # The uniform grid from min to max: Lloyd's steps only lower the error, so the result is never
    # worse than uniform quantization of the row (quantiles, the textbook start, stall on heavy tails).
    lo, hi = fit_x.min(axis=1, keepdims=True), fit_x.max(axis=1, keepdims=True)
    centroids = lo + (hi - lo) * (np.arange(k) / max(k - 1, 1))  # [R, k]
    assignment = None
    for _ in range(iterations):
        new = assign(fit_x, centroids)
        if assignment is not None and np.array_equal(new, assignment):
            break
        assignment = new
        centroids = np.sort(_update(fit_x, fit_w, assignment, centroids), axis=1)
    final = assign(x, centroids)
    return _update(x, weights, final, centroids).astype(np.float32), final  # matches `final`


def assign(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for every value (centroids sorted along each row)."""
    rows, m = x.shape
    k = centroids.shape[1]
    mids = (centroids[:, 1:] + centroids[:, :-1]) / 2.0  # [R, k-1]
    out = np.empty((rows, m), np.uint16 if k > 256 else np.uint8)
    if m * (k - 1) > _CHUNK:
        for r in range(rows):
            out[r] = np.searchsorted(mids[r], x[r], side="right")
        return out
    step = max(1, _CHUNK // max(1, m * (k - 1)))
    for start in range(0, rows, step):
        block = x[start:start + step, :, None] >= mids[start:start + step, None, :]
        out[start:start + step] = block.sum(axis=2)
    return out


def _update(x: np.ndarray, weights: np.ndarray | None, assignment: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Weighted mean of each cluster; an empty (or weightless) cluster keeps its centroid."""
    rows, k = old.shape
    slot = (np.arange(rows)[:, None] * k + assignment).reshape(-1)
    w = np.ones(x.size) if weights is None else weights.reshape(-1)
    mass = np.bincount(slot, weights=w, minlength=rows * k).reshape(rows, k)
    total = np.bincount(slot, weights=w * x.reshape(-1), minlength=rows * k).reshape(rows, k)
    return np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), old)
