"""``bulyan``: E. M. El Mhamdi, R. Guerraoui, S. Rouault, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML 2018. Selection by repeated Krum, then per coordinate the mean of
the beta values closest to the median (a sorting network on wide CPU inputs)."""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation import sortnet
from common.aggregation.rules.base import RULES, Rule
from common.aggregation.rules.krum import scores_from_distances, stable_argsort
from common.aggregation.tensors import check_matrix, pairwise_sq_distances, rows_mean
from common.errors import ConfigError

__all__ = ["bulyan_select", "bulyan", "Bulyan"]


def bulyan_select(x: Tensor, f: int) -> Tensor:
    """Bulyan's selection phase: theta = n - 2f rows chosen by repeated Krum.

    Each step runs Krum with the same f on the rows not yet chosen (``r`` rows, neighbour count
    ``r - f - 2``, clamped to ``[1, r - 1]`` in the last steps where it would drop below 1) and
    moves the winner to the selection. Returns the chosen indices in selection order.
    Precondition: ``n >= 4f + 3``.
    """
    check_matrix(x)
    n = x.shape[0]
    if f < 0 or n < 4 * f + 3:
        raise ConfigError(f"bulyan needs n >= 4f+3, got n={n}, f={f} "
                          "(the rule sees n vectors after pre-aggregation)")
    dist = pairwise_sq_distances(x)
    remaining = list(range(n))
    chosen: list[int] = []
    for _ in range(n - 2 * f):
        r = len(remaining)
        if r == 1:
            chosen.append(remaining.pop())
            break
        k = min(max(1, r - f - 2), r - 1)
        idx = torch.tensor(remaining, device=dist.device)
        scores = scores_from_distances(dist[idx][:, idx], k)
        j = int(stable_argsort(scores)[0])
        chosen.append(remaining.pop(j))
    return torch.tensor(chosen, dtype=torch.long, device=x.device)


def _bulyan(x: Tensor, f: int, compiled: bool = False) -> tuple[Tensor, Tensor]:
    sel = bulyan_select(x, f)
    theta = sel.numel()
    beta = theta - 2 * f
    if beta == theta:
        return rows_mean(x, sel), sel
    chosen = x.index_select(0, sel)
    if sortnet.use_network(chosen):
        out = sortnet.network_reduce(chosen, tuple(range(theta)), ("window", beta),
                                     compiled=compiled)
        return out, sel
    ordered = torch.sort(chosen, dim=0).values
    return sortnet.closest_window_mean(list(ordered.unbind(0)), beta), sel


def bulyan(x: Tensor, f: int, compiled: bool = False) -> Tensor:
    """Bulyan.

    1. Select theta = n - 2f rows by repeated Krum (:func:`bulyan_select`).
    2. Per coordinate, average the beta = theta - 2f selected values closest to the
       coordinate-wise median of the selected rows (they form a contiguous run of the sorted
       values; among equally close runs the lowest is taken).

    Precondition: ``n >= 4f + 3``. ``compiled``: see :mod:`common.aggregation.sortnet`.
    Reference: El Mhamdi, Guerraoui, Rouault, ICML 2018.
    """
    return _bulyan(x, f, compiled)[0]


@RULES.register
class Bulyan(Rule):
    """Bulyan: repeated Krum, then a trimmed mean around the median (n >= 4f+3); info: selected rows."""

    name = "bulyan"

    def check(self, n):
        if n < 4 * self.f + 3:
            raise ConfigError(f"bulyan needs n >= 4f+3, got n={n}, f={self.f} "
                              "(the rule sees n vectors after pre-aggregation)")

    def aggregate(self, x, honest):
        out, sel = _bulyan(x, self.f, self.compiled)
        self.info = {"selected": sel.tolist()}
        return out
