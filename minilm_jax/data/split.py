"""The held-out split: every k-th document, by index, is for evaluation only.

Selecting by index (not by hashing text or sampling) keeps the split identical on every
host and every run, costs nothing to compute, and spreads the held-out documents evenly over
a concatenation of sources (Wikipedia and BookCorpus both contribute).
"""

from __future__ import annotations

import collections.abc
from typing import Sequence


class EveryKth(collections.abc.Sequence):
    """Documents i of `parent` with i % k == 0 (held_out=True) or i % k != 0 (False)."""

    def __init__(self, parent: Sequence[str], k: int, *, held_out: bool):
        if k < 2:
            raise ValueError(f"every k-th document needs k >= 2, got {k}")
        self._parent, self._k, self._held_out = parent, k, held_out
        n = len(parent)
        num_held_out = -(-n // k)  # indices 0, k, 2k, ... below n
        self._len = num_held_out if held_out else n - num_held_out

    def parent_index(self, j: int) -> int:
        """Index in the parent of this view's j-th document."""
        if not 0 <= j < self._len:
            raise IndexError(f"document {j} out of range for {self._len} documents")
        if self._held_out:
            return j * self._k
        # Each block of k parent documents holds k - 1 training documents, at offsets 1..k-1.
        return (j // (self._k - 1)) * self._k + 1 + j % (self._k - 1)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, j: int) -> str:  # type: ignore[override]
        return self._parent[self.parent_index(j if j >= 0 else j + self._len)]


def held_out_split(documents: Sequence[str], every_kth: int) -> tuple[Sequence[str], Sequence[str]]:
    """(training documents, held-out documents); every_kth=0 holds out nothing."""
    if every_kth == 0:
        return documents, []
    return (
        EveryKth(documents, every_kth, held_out=False),
        EveryKth(documents, every_kth, held_out=True),
    )
