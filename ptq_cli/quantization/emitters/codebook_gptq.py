"""GPTQ-style assignment of weights to a codebook (the vector-quantization form of GPTQ,
van Baalen et al., "GPTVQ", 2024, in one dimension).

k-means puts each weight on its nearest centroid, which minimises the weight error but not the
layer's output error. With the input Gram matrix H of the layer, the columns are assigned one
at a time (most-used inputs first) and each column's error is pushed onto the columns not yet
assigned, as GPTQ does for a uniform grid (quantization/arithmetic/gptq.py): the same inverse-Cholesky
update, with "round to the grid" replaced by "nearest centroid of the row's codebook". Then
each row's centroids are refitted by least squares for the output error, given the assignment.
"""

from __future__ import annotations

import numpy as np

from ptq_cli.quantization.arithmetic.gptq import DAMPENING, _inverse_cholesky as inverse_cholesky


def gptq_assign(rows: np.ndarray, h: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assignment [O, d] and refitted centroids [O, k] of weight rows [O, d] (O = G groups × rows
    per group; H [G, d, d]) to codebooks [O or 1, k]."""
    w = np.asarray(rows, np.float64)
    out_channels, d = w.shape
    groups = h.shape[0]
    per_group = out_channels // groups
    book = np.broadcast_to(np.asarray(centroids, np.float64), (out_channels, centroids.shape[1]))
    order = np.argsort(-np.diagonal(h, axis1=1, axis2=2), axis=1, kind="stable")  # [G, d]
    assignment = np.empty((out_channels, d), np.uint8)
    fitted = np.array(book)
    for g in range(groups):
        span = slice(g * per_group, (g + 1) * per_group)
        upper = inverse_cholesky(h[g][np.ix_(order[g], order[g])][None].astype(np.float64), DAMPENING)[0]
        sorted_book = np.sort(book[span], axis=1)  # the order of a codebook's entries is free
        chosen = _assign_columns(w[span][:, order[g]].copy(), upper, sorted_book)
        block = np.empty_like(chosen)
        block[:, order[g]] = chosen
        assignment[span] = block
        fitted[span] = _refit(w[span], h[g], block, sorted_book) if centroids.shape[0] == out_channels \
            else sorted_book
    return assignment, fitted.astype(np.float32)


def _assign_columns(work: np.ndarray, upper: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Nearest-centroid assignment column by column with GPTQ error feedback (book sorted)."""
    rows, d = work.shape
    mids = (book[:, 1:] + book[:, :-1]) / 2.0
    chosen = np.empty((rows, d), np.int64)
    for j in range(d):
        column = work[:, j]
        index = (column[:, None] >= mids).sum(axis=1)
        chosen[:, j] = index
        error = (column - book[np.arange(rows), index]) / upper[j, j]
        work[:, j + 1:] -= error[:, None] * upper[None, j, j + 1:]
    return chosen


def _refit(w: np.ndarray, h: np.ndarray, assignment: np.ndarray, book: np.ndarray) -> np.ndarray:
    """Per row, the centroids minimising (Ĉ[a] − w)·H·(Ĉ[a] − w)ᵀ for the given assignment:
    C = (w·H·Sᵀ)(S·H·Sᵀ)⁻¹ with S the one-hot [k, d] of the row's assignment (ridge-damped;
    an unused centroid keeps its value)."""
    rows, k = book.shape
    onehot = np.zeros((rows, k, w.shape[1]))
    np.put_along_axis(onehot, assignment[:, None, :].astype(np.int64), 1.0, axis=1)
    hs = onehot @ h  # [rows, k, d]
    a = hs @ np.swapaxes(onehot, 1, 2)  # [rows, k, k]
    b = np.einsum("rkd,rd->rk", hs, w)
    ridge = 1e-6 * np.maximum(np.trace(a, axis1=1, axis2=2) / k, 1e-30)
    used = np.diagonal(a, axis1=1, axis2=2) > 0
    a = a + ridge[:, None, None] * np.eye(k)
    b = b + ridge[:, None] * book
    solved = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return np.where(used, solved, book)
