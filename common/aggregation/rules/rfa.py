"""``rfa`` / ``gm``: the geometric median by smoothed Weiszfeld (K. Pillutla, S. M. Kakade,
Z. Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022). T = 1 from zero is the
normalized-mean rule; T = 8 approximates the geometric median."""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix, distances_to, step_and_distances
from common.params import Param

__all__ = ["geometric_median", "RFA", "GM"]

ITERS = Param("iters", int, 8, "Weiszfeld iterations T", low=1, key="rfa_iters")
NU = Param("nu", float, 0.1, "Weiszfeld smoothing nu", low=0, low_open=True, key="rfa_nu")


def geometric_median(x: Tensor, iters: int = 8, nu: float = 0.1,
                     z0: Tensor | None = None) -> Tensor:
    """Approximate geometric median by the smoothed Weiszfeld algorithm (RFA).

    Iteration (T = ``iters`` times, from ``z_0`` = 0 unless given)::

        w_i = 1 / max(nu, ||z - x_i||),   z <- sum_i w_i x_i / sum_i w_i

    T = 1 from zero is the normalized-mean rule ``sum_i x_i/max(nu,||x_i||) / sum_i
    1/max(nu,||x_i||)``; T = 8 approximates the geometric median. Preconditions: ``iters >= 1``,
    ``nu > 0``. Identical rows are fine (the nu guard keeps weights finite).
    Reference: Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning".
    """
    check_matrix(x)
    iters, nu = ITERS.check(iters, "rfa"), NU.check(nu, "rfa")
    z = (torch.zeros(x.shape[1], dtype=x.dtype, device=x.device) if z0 is None
         else z0.to(device=x.device, dtype=x.dtype))
    dist = distances_to(x, z)
    for t in range(int(iters)):
        w = 1.0 / dist.double().clamp(min=float(nu))
        z, dist = step_and_distances(w / w.sum(), x, z, 0.0, t + 1 < int(iters))
    return z


@RULES.register
class RFA(Rule):
    """Geometric median by smoothed Weiszfeld (RFA)."""

    name = "rfa"
    params = (ITERS, NU)

    def aggregate(self, x, honest):
        return geometric_median(x, self.values["iters"], self.values["nu"])


@RULES.register
class GM(RFA):
    """Alias of ``rfa``."""

    name = "gm"
