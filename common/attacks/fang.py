"""``fang``: the full-knowledge trim attack of M. Fang, X. Cao, J. Jia, N. Gong, "Local Model
Poisoning Attacks to Byzantine-Robust Federated Learning", USENIX Security 2020 (Section 3,
against the trimmed mean and the coordinate-wise median).

Per coordinate k, with ``s_k = sign(mu_k)`` the direction of the honest mean and
``[w_min,k, w_max,k]`` the honest values' range, each Byzantine row takes a value beyond the
honest extreme on the side opposite to s_k, drawn uniformly (the paper's factor b > 1):

* ``s_k > 0``: from ``[w_min / b, w_min]`` if ``w_min > 0``, else from ``[b w_min, w_min]``;
* ``s_k <= 0``: from ``[w_max, b w_max]`` if ``w_max > 0``, else from ``[w_max / b, w_max]``.

The paper writes this for the change of the global model; for gradients (the server steps
against them) the sign convention is the same: the sent values pull the aggregate's coordinate
to the side opposite to the honest one.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.attacks.base import ATTACKS, Attack, AttackInput
from common.params import Param

__all__ = ["fang_bounds", "fang_rows", "Fang"]


def fang_bounds(honest: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """(lo, hi): the per-coordinate interval each Byzantine value is drawn from (module
    docstring); ``lo <= hi`` everywhere, both beyond the honest range on the side opposite to
    the honest mean's sign."""
    mu = honest.mean(dim=0)
    w_min, w_max = honest.amin(dim=0), honest.amax(dim=0)
    below = torch.where(w_min > 0, w_min / b, w_min * b)  # s > 0: under the smallest value
    above = torch.where(w_max > 0, w_max * b, w_max / b)  # s <= 0: over the largest value
    up = mu > 0
    lo = torch.where(up, below, w_max)
    hi = torch.where(up, w_min, above)
    return lo, hi


def fang_rows(honest: Tensor, rows: int, b: float, generator: torch.Generator) -> Tensor:
    """(rows, d) values uniform in :func:`fang_bounds`, drawn on the CPU with ``generator``."""
    lo, hi = fang_bounds(honest, b)
    u = torch.rand(rows, honest.shape[1], generator=generator, dtype=torch.float32)
    return (lo + u.to(device=lo.device, dtype=lo.dtype) * (hi - lo)).to(honest.dtype)


@ATTACKS.register
class Fang(Attack):
    """Per coordinate a value beyond the honest extreme opposite to the honest mean's sign."""

    name = "fang"
    reads_own = False
    omniscient = True
    per_worker_random = True
    params = (Param("b", float, 2.0, "how far beyond the honest extreme, as a factor (the "
                    "paper's b)", low=1, low_open=True),)

    def _setup(self, b: float) -> None:
        self.b = b

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return fang_rows(self._honest(inp), own.shape[0], self.b, inp.generator).to(own.device)
