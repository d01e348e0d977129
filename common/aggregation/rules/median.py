"""``cm`` (coordinate-wise median: D. Yin, Y. Chen, K. Ramchandran, P. Bartlett, "Byzantine-Robust
Distributed Learning: Towards Optimal Statistical Rates", ICML 2018) and ``nmedian`` (noisy
median: X. Chen, T. Chen, H. Sun, Z. S. Wu, M. Hong, "Distributed Training with Heterogeneous
Data: Bridging Median- and Mean-Based Algorithms", NeurIPS 2020).

On CPU a wide input (d >= 2048, n <= 128) runs a pruned Batcher sorting network
(:mod:`common.aggregation.sortnet`; native, eager or compiled): at (25, 1e6) float32 on one
thread the native network measured 30x faster than ``torch.median`` (14 vs 450 ms). Elsewhere
``torch.median``/``kthvalue``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation import sortnet
from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix
from common.params import Param
from common.seeding import round_generator

__all__ = ["coordinate_median", "CoordinateMedian", "NoisyMedian"]


def coordinate_median(x: Tensor, compiled: bool = False) -> Tensor:
    """Coordinate-wise median.

    Formula: per coordinate k, the middle value of ``x_1[k], ..., x_n[k]``; for even n the mean
    of the two middle values. Robust while fewer than n/2 rows are Byzantine: the output stays
    within the range of the honest values per coordinate. ``compiled``: see
    :mod:`common.aggregation.sortnet` (same values). Reference: Yin et al., ICML 2018.
    """
    check_matrix(x)
    n = x.shape[0]
    if n == 1:
        return x[0].clone()
    if n == 2:
        return 0.5 * x[0] + 0.5 * x[1]
    if sortnet.use_network(x):
        if n % 2:
            return sortnet.network_reduce(x, (n // 2,), ("pick",), compiled=compiled)
        return sortnet.network_reduce(x, (n // 2 - 1, n // 2), ("halves",), symmetric=True,
                                      compiled=compiled)
    if n % 2 == 1:
        return torch.median(x, dim=0).values
    lo = torch.kthvalue(x, n // 2, dim=0).values
    hi = torch.kthvalue(x, n // 2 + 1, dim=0).values
    return 0.5 * lo + 0.5 * hi



@RULES.register
class CoordinateMedian(Rule):
    """Coordinate-wise median (robust while fewer than n/2 rows are Byzantine)."""

    name = "cm"

    def aggregate(self, x, honest):
        return coordinate_median(x, self.compiled)


@RULES.register
class NoisyMedian(CoordinateMedian):
    """Noisy median: honest workers add N(0, std^2 I) before upload; the server takes ``cm``."""

    name = "nmedian"
    params = (Param("std", float, 0.01, "std of the noise honest workers add", low=0),)

    @classmethod
    def upload_transform(cls, values):
        std = values["std"]

        def add_noise(msgs: Tensor, rows: list[int], t: int, first: int, seed: int) -> None:
            # one stream per (round, worker): the noise does not depend on the grouping
            for j in rows:
                g = round_generator(seed, t, "nmedian", first + j)
                msgs[j].add_(torch.randn(msgs.shape[1], generator=g).to(msgs.device), alpha=std)

        return add_noise
