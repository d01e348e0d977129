"""``monna``: MoNNA, the mean of the nearest neighbours of a trusted pivot. S. Farhadkhani, R.
Guerraoui, N. Gupta, L.-N. Hoang, R. Pinot, J. Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023. The pivot is a worker the server trusts (ByzFL's ``idx``),
given with ``--monna-pivot``; the rule therefore needs one row per worker, in worker order."""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule, check_majority
from common.aggregation.tensors import check_matrix, distances_to, rows_mean
from common.errors import ConfigError
from common.params import Param

__all__ = ["monna_neighbours", "monna", "MoNNA"]


def monna_neighbours(x: Tensor, f: int, pivot: int) -> Tensor:
    """Indices of the n - f rows nearest row ``pivot`` (itself first; ties: lower index)."""
    check_matrix(x)
    n = x.shape[0]
    check_majority("monna", n, f)
    if not 0 <= pivot < n:
        raise ConfigError(f"monna needs 0 <= pivot < n, got pivot={pivot}, n={n}")
    d = distances_to(x, x[pivot]).double()
    d[pivot] = -1.0
    return torch.sort(d, stable=True).indices[: n - f]


def monna(x: Tensor, f: int, pivot: int = 0) -> Tensor:
    """MoNNA.

    Formula: ``(1/(n-f)) sum_{j in N(p)} x_j`` with N(p) the n - f rows nearest (Euclidean) the
    pivot row p, p included. Parameters: x -- (n, d); f -- Byzantine rows assumed; pivot --
    the index of a trusted (honest) row. Preconditions: ``n > 2f``, ``0 <= pivot < n``.
    Reference: Farhadkhani et al., ICML 2023 (ByzFL's ``MoNNA``).
    """
    return rows_mean(x, monna_neighbours(x, f, pivot))


@RULES.register
class MoNNA(Rule):
    """Mean of the n - f messages nearest a trusted pivot worker's; info: the kept workers."""

    name = "monna"
    per_worker = True
    params = (Param("pivot", int, 0, "the trusted worker whose neighbours are averaged "
                    "(ByzFL's idx)", low=0),)

    def check(self, n):
        check_majority(self.name, n, self.f)
        if self.values["pivot"] >= n:
            raise ConfigError(f"monna needs --monna-pivot < n, got {self.values['pivot']}, "
                              f"n={n}")

    def aggregate(self, x, honest):
        pivot = self.values["pivot"]
        if self.workers is not None:  # rows were dropped: find the pivot worker's row
            rows = (self.workers == pivot).nonzero().flatten()
            if not len(rows):
                raise ConfigError(f"monna's pivot worker {pivot} sent no usable message")
            pivot = int(rows[0])
        keep = monna_neighbours(x, self.f, pivot)
        self.info = {"kept": (keep if self.workers is None else self.workers[keep]).tolist()}
        return rows_mean(x, keep)
