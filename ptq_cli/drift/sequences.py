"""Sequence agreement of per-step scores ([N, T, C], e.g. a CTC head): the share of samples whose
decoded sequence is the reference's.

Per-step agreement hides what a reader of the output sees: a text line of 80 steps is read
differently as soon as one step flips, so 99 % of steps agreeing can leave a third of the lines
changed. Each sample is decoded greedily, as CTC decoders do: the best class of every step,
repeats merged, the blank dropped. The blank is the class the reference chooses most often over
all steps (a CTC model spends most steps on it); for a per-frame classifier the same decoding
compares the order of its segments, not their exact boundaries.
"""

from __future__ import annotations

import math

import numpy as np


class SequenceAccumulator:
    """The per-step best classes of every sample, compared once all are seen (the blank is a
    property of the whole data)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.counts: dict[int, int] = {}
        self.perfect = 0  # samples known to decode as the reference's (see best_case)

    def update(self, ref: np.ndarray, cand: np.ndarray) -> None:
        """`ref`, `cand`: [N, T, C] scores of N samples."""
        ref_best, cand_best = best_classes(ref), best_classes(cand)
        for r, c in zip(ref_best, cand_best):
            self.pairs.append((r, c))
        _add_counts(self.counts, class_counts(ref_best))

    def best_case(self, samples: int, counts: dict[int, int]) -> "SequenceAccumulator":
        """As if `samples` more samples, whose reference steps choose `counts` (class_counts),
        decoded as the reference's: the most agreement any candidate can end with. The pairs
        already seen are shared, not copied."""
        best = SequenceAccumulator()
        best.pairs, best.counts, best.perfect = self.pairs, dict(self.counts), self.perfect + samples
        _add_counts(best.counts, counts)
        return best

    def merge(self, other: "SequenceAccumulator") -> None:
        """Append `other`'s samples after these (the blank is chosen from the summed counts)."""
        self.pairs.extend(other.pairs)
        self.perfect += other.perfect
        _add_counts(self.counts, other.counts)

    @property
    def blank(self) -> int | None:
        return max(self.counts, key=lambda cls: (self.counts[cls], -cls)) if self.counts else None

    def agreement(self) -> float:
        if not self.pairs:
            return math.nan
        blank = self.blank
        same = sum(np.array_equal(greedy_decode(r, blank), greedy_decode(c, blank)) for r, c in self.pairs)
        return (same + self.perfect) / (len(self.pairs) + self.perfect)


def best_classes(scores: np.ndarray) -> np.ndarray:
    """[N, T, C] scores -> [N, T] best classes. A non-finite step decodes as no class (-1), in
    either model: a candidate's is never the reference's class, and a model compared with itself
    agrees with itself."""
    return np.where(np.isfinite(scores).all(axis=-1), np.nan_to_num(scores, nan=-np.inf).argmax(axis=-1), -1)


def class_counts(best: np.ndarray) -> dict[int, int]:
    classes, counts = np.unique(best, return_counts=True)
    return dict(zip(classes.tolist(), counts.tolist()))


def _add_counts(total: dict[int, int], more: dict[int, int]) -> None:
    for cls, count in more.items():
        total[cls] = total.get(cls, 0) + count


def greedy_decode(best: np.ndarray, blank: int | None) -> np.ndarray:
    """Best classes per step → the decoded sequence: repeats merged, then blanks dropped."""
    if best.size == 0:
        return best
    kept = best[np.concatenate(([True], best[1:] != best[:-1]))]
    return kept[kept != blank]
