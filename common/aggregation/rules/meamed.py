"""``meamed``: mean around median. C. Xie, O. Koyejo, I. Gupta, "Generalized Byzantine-tolerant
SGD", arXiv 1802.10116 (2018).

Bulyan's last step over all n rows: the n - f values nearest the median form a window of the
sorted column (:func:`common.aggregation.sortnet.closest_window_mean`), on wide CPU inputs after
the same pruned sorting network as the median's.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation import sortnet
from common.aggregation.rules.base import RULES, Rule, check_majority
from common.aggregation.tensors import check_matrix

__all__ = ["meamed", "MeaMed"]


def meamed(x: Tensor, f: int, compiled: bool = False) -> Tensor:
    """Mean around median.

    Formula: per coordinate k, with ``m_k`` the median of ``x_1[k], ..., x_n[k]`` (the mean of
    the two middle values for even n), the mean of the ``n - f`` values nearest ``m_k`` (ties in
    distance: the smaller value first). Parameters: x -- (n, d); f -- Byzantine rows assumed;
    ``compiled``: see :mod:`common.aggregation.sortnet`.
    Precondition: ``0 <= f`` and ``n > 2f``; then ``m_k`` lies inside the honest values' range
    and the output within ``R_k`` of it, ``R_k`` the largest distance of an honest value from
    ``m_k`` (not inside the honest range: a hostile value near the median can be averaged in).
    Reference: Xie, Koyejo, Gupta 2018 (ByzFL's ``Meamed`` takes the
    lower middle value as the median for even n: the two agree for odd n).
    """
    check_matrix(x)
    n = x.shape[0]
    f = int(f)
    check_majority("meamed", n, f)
    if f == 0:
        return x.mean(dim=0)
    if sortnet.use_network(x):
        return sortnet.network_reduce(x, tuple(range(n)), ("window", n - f), compiled=compiled)
    ordered = torch.sort(x, dim=0).values
    return sortnet.closest_window_mean(list(ordered.unbind(0)), n - f)


@RULES.register
class MeaMed(Rule):
    """Mean around median: per coordinate the mean of the n - f values nearest the median."""

    name = "meamed"

    def check(self, n):
        check_majority(self.name, n, self.f)

    def aggregate(self, x, honest):
        return meamed(x, self.f, self.compiled)
