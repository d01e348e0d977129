"""``smea``: smallest maximum eigenvalue averaging. Y. Allouah, R. Guerraoui, N. Gupta, R.
Pinot, J. Stephan, "On the Privacy-Robustness-Utility Trilemma in Distributed Learning", ICML
2023 (ByzFL's ``SMEA``).

An exact search over the C(n, f) subsets of n - f rows, batched: each subset's covariance top
eigenvalue is that of its (n-f, n-f) centred Gram block (``torch.linalg.eigvalsh`` on a batch),
all taken from one (n, n) Gram matrix of the rows (:func:`common.aggregation.rules.caf.centered_gram`).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule, check_majority
from common.aggregation.rules.caf import centered_gram
from common.aggregation.tensors import check_matrix, rows_mean
from common.errors import ConfigError

__all__ = ["MAX_SUBSETS", "smea_subset", "smea", "SMEA"]

#: The most subsets the exact search visits (C(25, 5) = 53130 takes about 0.1 s).
MAX_SUBSETS = 200_000
_BATCH = 8192


def check_smea(n: int, f: int, what: str = "smea") -> None:
    check_majority(what, n, f)
    if math.comb(n, f) > MAX_SUBSETS:
        raise ConfigError(f"{what} searches all C({n}, {n - f}) = {math.comb(n, f)} subsets of "
                          f"n - f rows, more than its limit of {MAX_SUBSETS}; use fewer rows "
                          "(e.g. --pre bucketing:2) or a smaller f")


def smea_subset(k: Tensor, f: int) -> Tensor:
    """The (n-f)-subset (sorted indices) whose rows' covariance has the least top eigenvalue,
    from the rows' Gram matrix ``k`` (any common centre); ties: the first in lexicographic order."""
    n = k.shape[0]
    m = n - f
    h = torch.eye(m, dtype=torch.float64) - 1.0 / m
    best, best_val = None, math.inf
    it = itertools.combinations(range(n), m)
    while True:
        chunk = np.fromiter(itertools.chain.from_iterable(itertools.islice(it, _BATCH)),
                            dtype=np.int64)
        if not len(chunk):
            break
        idx = torch.from_numpy(chunk.reshape(-1, m))
        g = h @ k[idx[:, :, None], idx[:, None, :]] @ h
        top = torch.linalg.eigvalsh(g)[:, -1]
        j = int(torch.argmin(top))
        if float(top[j]) < best_val:
            best, best_val = idx[j], float(top[j])
    return best if best is not None else torch.arange(m)


def smea(x: Tensor, f: int) -> Tensor:
    """SMEA.

    Formula: ``(1/(n-f)) sum_{i in S*} x_i`` with ``S* = argmin_{|S| = n-f} lambda_max(sum_{i in
    S} (x_i - mu_S)(x_i - mu_S)^T)``, mu_S the mean of S. Parameters: x -- (n, d); f --
    Byzantine rows assumed. Preconditions: ``n > 2f`` and C(n, f) <= :data:`MAX_SUBSETS`.
    Reference: Allouah et al., ICML 2023 (ByzFL 0.0.11 estimates each eigenvalue by one
    power-iteration step from a random vector; this computes them exactly, so the two agree
    where that step is exact, e.g. d = 1).
    """
    check_matrix(x)
    n = x.shape[0]
    f = int(f)
    check_smea(n, f)
    if f == 0:
        return x.mean(dim=0)
    return rows_mean(x, smea_subset(centered_gram(x), f))


@RULES.register
class SMEA(Rule):
    """Mean of the n - f messages of least top eigenvalue (exact, C(n,f) <= 2e5); info: kept rows."""

    name = "smea"

    def check(self, n):
        check_smea(n, self.f)

    def aggregate(self, x, honest):
        n = x.shape[0]
        keep = torch.arange(n) if self.f == 0 else smea_subset(centered_gram(x), self.f)
        self.info = {"selected": keep.tolist()}
        return rows_mean(x, keep)
