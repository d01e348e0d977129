"""``meamed``: mean around median. C. Xie, O. Koyejo, I. Gupta, "Generalized Byzantine-tolerant
SGD", arXiv 1802.10116 (2018).

One sort of the (n, d) stack per call; the n - f values nearest the median are a window of the
sorted column (f + 1 candidate windows), found without a second sort.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule
from common.aggregation.rules.median import coordinate_median
from common.aggregation.tensors import check_matrix
from common.errors import ConfigError

__all__ = ["meamed", "MeaMed"]


def meamed(x: Tensor, f: int) -> Tensor:
    """Mean around median.

    Formula: per coordinate k, with ``m_k`` the median of ``x_1[k], ..., x_n[k]`` (the mean of
    the two middle values for even n), the mean of the ``n - f`` values nearest ``m_k`` (ties in
    distance: the smaller value first). Parameters: x -- (n, d); f -- Byzantine rows assumed.
    Precondition: ``0 <= f`` and ``n > 2f``; the output then lies inside the honest values'
    range per coordinate. Reference: Xie, Koyejo, Gupta 2018 (ByzFL's ``Meamed`` takes the
    lower middle value as the median for even n: the two agree for odd n).
    """
    check_matrix(x)
    n = x.shape[0]
    f = int(f)
    if f < 0 or n <= 2 * f:
        raise ConfigError(f"meamed needs n > 2f, got n={n}, f={f} "
                          "(the rule sees n vectors after pre-aggregation)")
    if f == 0:
        return x.mean(dim=0)
    k = n - f
    s = torch.sort(x, dim=0).values
    m = coordinate_median(x)
    # The k nearest values are s[i:i+k] for the window start i whose farther end is nearest:
    # a window of k consecutive sorted values that holds the median (n > 2f makes every
    # window of width k hold it). Among the f+1 windows, the one of least spread around m.
    best = None
    for i in range(f + 1):
        spread = torch.maximum(m - s[i], s[i + k - 1] - m)
        if best is None:
            best, start = spread, torch.zeros_like(spread, dtype=torch.long)
        else:
            better = spread < best  # ties: the earlier window (smaller values) wins
            best = torch.where(better, spread, best)
            start = torch.where(better, torch.full_like(start, i), start)
    # Summed value by value (a cumulative sum would cancel: -1e30 + 1 + ... - (-1e30) = 0).
    total = torch.zeros_like(m)
    for j in range(k):
        total += torch.gather(s, 0, (start + j)[None])[0]
    return total / k


@RULES.register
class MeaMed(Rule):
    """Mean around median: per coordinate the mean of the n - f values nearest the median."""

    name = "meamed"

    def check(self, n):
        if n <= 2 * self.f:
            raise ConfigError(f"meamed needs n > 2f, got n={n}, f={self.f} "
                              "(the rule sees n vectors after pre-aggregation)")

    def aggregate(self, x, honest):
        return meamed(x, self.f)
