"""``minmax`` and ``minsum``: the distance-constrained attacks of V. Shejwalkar and A. Houmansadr,
"Manipulating the Byzantine: Optimizing Model Poisoning Attacks and Defenses for Federated
Learning", NDSS 2021 (their AGR-agnostic Min-Max and Min-Sum).

Every Byzantine row is ``m = mu + gamma p``: mu the honest mean, p a perturbation direction
(``unit``: -mu / ||mu||, ``std``: minus the per-coordinate standard deviation, ``sign``:
-sign(mu)), gamma the largest value for which m stays as close to the honest messages as they
are to each other:

* min-max: ``max_i ||m - x_i|| <= max_{i,j} ||x_i - x_j||``;
* min-sum: ``sum_i ||m - x_i||^2 <= max_i sum_j ||x_i - x_j||^2``.

The paper finds gamma by a binary search. Both constraints are quadratic in gamma:
``||m - x_i||^2 = a_i + 2 gamma b_i + gamma^2 c`` with ``a_i = ||mu - x_i||^2``,
``b_i = (mu - x_i) . p`` and ``c = ||p||^2``, each convex and within its bound at gamma = 0, so
the feasible gammas form an interval [0, gamma*] whose end has a closed form: the search's limit,
computed here exactly from one pass for the a_i, one matrix-vector product and the pairwise
distances of the honest rows (so the constraint holds with equality up to rounding).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from common.aggregation import native
from common.aggregation.tensors import pairwise_sq_distances
from common.attacks.base import ATTACKS, Attack, AttackInput, repeat_rows
from common.params import Param

__all__ = ["PERTURBATIONS", "perturbation", "minmax_gamma", "minsum_gamma", "minmax_vector",
           "minsum_vector", "MinMax", "MinSum"]

PERTURBATIONS = ("unit", "std", "sign")


def perturbation(honest: Tensor, kind: str) -> Tensor:
    """The direction p: ``unit`` -mu/||mu|| (zero if mu = 0), ``std`` -sigma (unbiased, per
    coordinate; zero for one row), ``sign`` -sign(mu)."""
    mu, sigma = native.mean_var(honest, std=True)
    if kind == "std":
        return -sigma
    if kind == "sign":
        return -torch.sign(mu)
    if kind == "unit":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if float(norm) > 0 else torch.zeros_like(mu)
    raise ValueError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")


def _terms(honest: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
    """(mu, a, b, c): the honest mean and the float64 coefficients of the module docstring."""
    mu = honest.mean(dim=0)
    a = native.sq_distances_to(honest, mu)
    v = torch.mv(honest, p).double()
    b = v.mean() - v  # (mu - x_i) . p, as mu . p = mean_j x_j . p
    return mu, a, b, float(torch.linalg.vector_norm(p.double()) ** 2)


def minmax_gamma(honest: Tensor, p: Tensor) -> float:
    """The largest gamma with ``max_i ||mu + gamma p - x_i||^2 <= max_{i,j} ||x_i - x_j||^2``:
    ``min_i (-b_i + sqrt(b_i^2 - c (a_i - B))) / c`` (0 when p = 0)."""
    _, a, b, c = _terms(honest, p)
    if not c > 0:
        return 0.0
    bound = float(pairwise_sq_distances(honest).max())
    disc = (b.square() - c * (a - bound)).clamp_(min=0.0)  # >= b^2: a_i <= bound
    return max(0.0, float(((disc.sqrt() - b) / c).min()))


def minsum_gamma(honest: Tensor, p: Tensor) -> float:
    """The largest gamma with ``sum_i ||mu + gamma p - x_i||^2 <= max_i sum_j ||x_i - x_j||^2``:
    ``sqrt((S - sum_i a_i) / (h c))``, as ``sum_i b_i = 0`` (0 when p = 0)."""
    _, a, _, c = _terms(honest, p)
    if not c > 0:
        return 0.0
    bound = float(pairwise_sq_distances(honest).sum(dim=1).max())
    return math.sqrt(max(0.0, bound - float(a.sum())) / (honest.shape[0] * c))


def minmax_vector(honest: Tensor, kind: str = "std") -> tuple[Tensor, float]:
    """(``mu + gamma p``, gamma) of the min-max attack."""
    p = perturbation(honest, kind)
    gamma = minmax_gamma(honest, p)
    return honest.mean(dim=0).add_(p, alpha=gamma), gamma


def minsum_vector(honest: Tensor, kind: str = "std") -> tuple[Tensor, float]:
    """(``mu + gamma p``, gamma) of the min-sum attack."""
    p = perturbation(honest, kind)
    gamma = minsum_gamma(honest, p)
    return honest.mean(dim=0).add_(p, alpha=gamma), gamma


PERTURB = Param("perturb", str, "std", "perturbation direction p: unit (-mu/||mu||), std "
                "(-sigma) or sign (-sign(mu))", choices=PERTURBATIONS, key="perturb")


class _DistanceConstrained(Attack):
    reads_own = False
    omniscient = True
    params = (PERTURB,)
    vector = staticmethod(minmax_vector)

    def _setup(self, perturb: str) -> None:
        self.perturb = perturb

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        m, gamma = self.vector(self._honest(inp), self.perturb)
        self.info = {"gamma": gamma}
        return repeat_rows(m, own.shape[0], own, out)


@ATTACKS.register
class MinMax(_DistanceConstrained):
    """``mu + gamma p`` on every Byzantine row, max_i ||m - x_i|| <= max_ij ||x_i - x_j||; info: gamma."""

    name = "minmax"
    vector = staticmethod(minmax_vector)


@ATTACKS.register
class MinSum(_DistanceConstrained):
    """``mu + gamma p`` on every Byzantine row, sum_i ||m - x_i||^2 <= max_i sum_j ||x_i - x_j||^2."""

    name = "minsum"
    vector = staticmethod(minsum_vector)
