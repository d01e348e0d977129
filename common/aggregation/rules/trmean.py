"""``trmean``: coordinate-wise trimmed mean (D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, ICML
2018). On wide CPU inputs a pruned sorting network (:mod:`common.aggregation.sortnet`)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from common.aggregation import sortnet
from common.aggregation.rules.base import RULES, Rule
from common.aggregation.rules.mean import mean
from common.aggregation.tensors import check_matrix
from common.errors import ConfigError
from common.params import Param

__all__ = ["trimmed_mean", "TrimmedMean"]


def trimmed_mean(x: Tensor, b: int, compiled: bool = False) -> Tensor:
    """Coordinate-wise trimmed mean.

    Formula: per coordinate, drop the b largest and the b smallest values and average the
    remaining ``n - 2b``. Precondition: ``0 <= b`` and ``n > 2b``. Robust while at most b rows
    are Byzantine. ``compiled``: see :mod:`common.aggregation.sortnet`. Reference: Yin et al., ICML 2018.
    """
    check_matrix(x)
    n = x.shape[0]
    b = int(b)
    if b < 0 or n <= 2 * b:
        raise ConfigError(f"trmean needs n > 2b and b >= 0, got n={n}, b={b} "
                          "(b defaults to f; the rule sees n vectors after pre-aggregation)")
    if b == 0:
        return mean(x)
    if sortnet.use_network(x):
        return sortnet.network_reduce(x, tuple(range(b, n - b)), ("mean",), symmetric=True,
                                      compiled=compiled)
    return torch.sort(x, dim=0).values[b:n - b].mean(dim=0)


@RULES.register
class TrimmedMean(Rule):
    """Coordinate-wise trimmed mean: drop the b largest and b smallest values (needs n > 2b)."""

    name = "trmean"
    params = (Param("b", int, None, "values trimmed per side (default f)", low=0),
              Param("beta", float, None, "trim a fraction beta per side instead "
                    "(b = floor(beta n), n the rows the rule sees)", low=0, high=0.5,
                    high_open=True))

    def _b(self) -> int:
        if self.values["b"] is not None:
            return self.values["b"]
        if self.values["beta"] is not None:
            return int(math.floor(self.values["beta"] * self.n))
        return self.f

    def check(self, n):
        b = self._b()
        if b < 0 or n <= 2 * b:
            raise ConfigError(f"trmean needs n > 2b, got n={n}, b={b} "
                              "(b defaults to f; the rule sees n vectors after pre-aggregation)")

    def aggregate(self, x, honest):
        return trimmed_mean(x, self._b(), self.compiled)
