"""Omniscient attacks that combine the round's honest messages: ``nm`` (normalized-mean attack, the
resampling paper: Karimireddy, He, Jaggi 2020, arXiv:2006.09365v1), ``alie`` ("A little is
enough", Baruch, Baruch, Goldberg, NeurIPS 2019) and ``ipm`` (inner product manipulation, Xie,
Koyejo, Gupta, UAI 2019). Every Byzantine row gets the same vector."""
from __future__ import annotations

import math
from statistics import NormalDist

import torch
from torch import Tensor

from common.aggregation import native
from common.attacks.base import ATTACKS, Attack, AttackInput, repeat_rows
from common.params import Param

__all__ = ["nm_vector", "alie_z", "alie_vector", "ipm_vector", "ALIE_P_EPS", "NormalizedMean",
           "ALIE", "IPM"]


def nm_vector(honest: Tensor) -> Tensor:
    """Normalized-mean attack vector: ``-sum_{i in H} x_i / ||x_i||``; zero-norm rows add 0."""
    norms = honest.norm(dim=1, keepdim=True)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    unit = torch.where(norms > 0, honest / safe, torch.zeros_like(honest))
    return -unit.sum(dim=0)


#: ALIE clamps its quantile level p into [ALIE_P_EPS, 1 - ALIE_P_EPS] (so |z| <= 3.09).
ALIE_P_EPS = 1e-3


def alie_z(n: int, f: int) -> float:
    """ALIE's z = Phi^-1((n - f - s) / (n - f)) with s = floor(n/2 + 1) - f (ALGORITHMS.md).

    The level p = (n - f - s)/(n - f) = (n - floor(n/2 + 1))/(n - f) leaves (0, 1) in corner
    cases (p = 0 for n <= 2; p >= 1 when f >= floor(n/2 + 1), i.e. a Byzantine majority), where
    Phi^-1 would be infinite; p is then clamped into [ALIE_P_EPS, 1 - ALIE_P_EPS] (|z| <= 3.09).
    Requires n - f >= 1.

    Note: many implementations write z_max = Phi^-1((n - s)/n) instead; this project follows
    ALGORITHMS.md.
    """
    if n - f < 1:
        raise ValueError(f"ALIE needs at least one honest worker (n={n}, f={f})")
    s = math.floor(n / 2 + 1) - f
    p = (n - f - s) / (n - f)
    p = min(max(p, ALIE_P_EPS), 1.0 - ALIE_P_EPS)
    return NormalDist().inv_cdf(p)


def alie_vector(honest: Tensor, z: float) -> Tensor:
    """ALIE vector: per coordinate ``mu - z * sigma`` over the honest rows.

    sigma is the unbiased standard deviation (divisor h - 1); with a single honest row sigma = 0.
    """
    mu, sigma = native.mean_var(honest, std=True)
    return sigma.mul_(-z).add_(mu)  # in place: mu - z sigma, the same values


def ipm_vector(honest: Tensor, eps: float = 0.1) -> Tensor:
    """Inner-product-manipulation vector: ``-eps * mu``."""
    return -eps * honest.mean(dim=0)


@ATTACKS.register
class NormalizedMean(Attack):
    """Every Byzantine row = ``-sum_{i in H} x_i / ||x_i||`` (breaks RFA with T = 1 as f grows)."""

    name = "nm"
    reads_own = False
    omniscient = True

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return repeat_rows(nm_vector(self._honest(inp)), own.shape[0], own, out)


@ATTACKS.register
class ALIE(Attack):
    """Every Byzantine row = ``mu - z sigma`` per coordinate over the honest messages.

    z defaults to ``Phi^-1((n - f - s) / (n - f))``, ``s = floor(n/2 + 1) - f`` (ALGORITHMS.md;
    n from ``AttackInput.n``, f from the constructor), clamped as :func:`alie_z` says.
    ``info = {"z": z used}``.
    """

    name = "alie"
    reads_own = False
    omniscient = True
    params = (Param("z", float, None, "ALIE z (default Phi^-1((n-f-s)/(n-f)), "
                    "s = floor(n/2+1)-f)"),)

    def _setup(self, z: float | None) -> None:
        self.z = z

    def current_z(self, n: int) -> float:
        return self.z if self.z is not None else alie_z(n, self.f)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        honest = self._honest(inp)
        z = self.current_z(inp.n)
        self.info = {"z": float(z)}
        return repeat_rows(alie_vector(honest, z), own.shape[0], own, out)


@ATTACKS.register
class IPM(Attack):
    """Every Byzantine row = ``-eps * mu``, mu the mean of the honest messages."""

    name = "ipm"
    reads_own = False
    omniscient = True
    params = (Param("eps", float, 0.1, "IPM epsilon (any finite number)"),)

    def _setup(self, eps: float) -> None:
        self.eps = eps

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return repeat_rows(ipm_vector(self._honest(inp), self.eps), own.shape[0], own, out)
