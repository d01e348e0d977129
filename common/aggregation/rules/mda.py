"""``mda``: minimum-diameter averaging. E. M. El Mhamdi, R. Guerraoui, A. Guirguis, L.-N. Hoang,
S. Rouault, "Genuinely Distributed Byzantine Machine Learning", PODC 2020.

Exact without visiting the C(n, f) subsets: any subset of least diameter must drop one end of
the farthest pair it would otherwise keep, so a search that branches on the two ends of the
farthest remaining pair, f levels deep, visits at most 2^(f+1) - 1 nodes per pass (two passes:
the least diameter, then the first subset attaining it) on the (n, n) distance matrix computed
once. At n = 25: f = 5 in 5 ms, f = 12 in 0.2 s (enumerating the C(25, 5) = 53130 subsets took
1 s). The limit is f <= :data:`MAX_F`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule, check_majority
from common.aggregation.tensors import check_matrix, pairwise_sq_distances, rows_mean
from common.errors import ConfigError

__all__ = ["MAX_F", "min_diameter_subset", "mda", "MDA"]

#: The largest f the exact search takes (2^(f+1) - 1 nodes per pass: f = 12 at n = 25 took 0.2 s).
MAX_F = 14


def check_mda(n: int, f: int, what: str = "mda") -> None:
    check_majority(what, n, f)
    if f > MAX_F:
        raise ConfigError(f"{what} searches the C({n}, {f}) = {math.comb(n, f)} subsets of n - f "
                          f"rows exactly, in up to 2^{f + 1} - 1 steps; its limit is f <= {MAX_F}: "
                          "use fewer rows (e.g. --pre bucketing:2) or a smaller f")


def min_diameter_subset(dist: Tensor, f: int) -> Tensor:
    """Sorted indices of n - f rows of least diameter ``max_{i,j in S} dist_ij`` for an (n, n)
    distance matrix; ties: the first such subset in lexicographic order (as enumerating
    ``itertools.combinations`` would find it).

    Two passes of the branching search: the least diameter D*, then, among the nodes where the
    farthest remaining pair is within D* (any further drop keeps the diameter), the kept rows
    minus the highest-indexed ones, lexicographically least. Every subset of diameter D* keeps
    only rows of some such node, so the first optimal subset is among these."""
    d = dist.double().cpu().numpy()
    n = d.shape[0]
    iu, ju = np.triu_indices(n, 1)
    order = np.argsort(-d[iu, ju], kind="stable")
    pi, pj, pd = iu[order], ju[order], d[iu, ju][order]

    def farthest(removed: np.ndarray) -> tuple[int, float]:
        alive = ~removed[pi] & ~removed[pj]
        if not alive.any():
            return -1, 0.0
        k = int(np.argmax(alive))
        return k, float(pd[k])

    def least(removed: np.ndarray, budget: int) -> float:
        k, diam = farthest(removed)
        if budget == 0 or k < 0:
            return diam
        out = math.inf
        for end in (pi[k], pj[k]):
            removed[end] = True
            out = min(out, least(removed, budget - 1))
            removed[end] = False
        return out

    target = least(np.zeros(n, dtype=bool), f)
    best: list = [None]

    def first(removed: np.ndarray, budget: int) -> None:
        k, diam = farthest(removed)
        if diam <= target:
            kept = np.flatnonzero(~removed)
            kept = tuple(kept[:len(kept) - budget].tolist())
            if best[0] is None or kept < best[0]:
                best[0] = kept
            return
        if budget == 0:
            return
        for end in (pi[k], pj[k]):
            removed[end] = True
            first(removed, budget - 1)
            removed[end] = False

    first(np.zeros(n, dtype=bool), f)
    return torch.tensor(best[0], dtype=torch.long)


def mda(x: Tensor, f: int) -> Tensor:
    """Minimum-diameter averaging.

    Formula: ``(1/(n-f)) sum_{i in S*} x_i``, ``S* = argmin_{|S| = n-f} max_{i,j in S}
    ||x_i - x_j||``. Parameters: x -- (n, d); f -- Byzantine rows assumed. Preconditions:
    ``n > 2f`` and ``f <= MAX_F``. Reference: El Mhamdi et al., PODC 2020 (ByzFL's ``MDA``,
    which enumerates every subset; the two agree up to the choice among tied subsets).
    """
    check_matrix(x)
    n = x.shape[0]
    f = int(f)
    check_mda(n, f)
    if f == 0:
        return x.mean(dim=0)
    return rows_mean(x, min_diameter_subset(pairwise_sq_distances(x), f))


@RULES.register
class MDA(Rule):
    """Mean of the n - f messages of least diameter (exact, f <= 14); info: the kept rows."""

    name = "mda"

    def check(self, n):
        check_mda(n, self.f)

    def aggregate(self, x, honest):
        n = x.shape[0]
        keep = (torch.arange(n) if self.f == 0 else
                min_diameter_subset(pairwise_sq_distances(x), self.f))
        self.info = {"selected": keep.tolist()}
        return rows_mean(x, keep)
