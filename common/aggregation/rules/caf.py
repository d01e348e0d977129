"""``caf``: covariance-bound agnostic filter. Y. Allouah, R. Guerraoui, J. Stephan, "Towards
Trustworthy Federated Learning with Untrusted Participants", ICML 2025 (ByzFL's ``CAF``).

Every quantity of the filter lives on the (n, n) Gram matrix of the rows around their
coordinate-wise median, computed once: the weighted covariance's top eigenpair is that of an
(n, n) matrix (exact, where ByzFL runs one power-iteration step from a random vector), the
projections follow from the same matrix, and only the final weighted mean reads the rows again.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from common.aggregation import native
from common.aggregation.rules.base import RULES, Rule, check_majority
from common.aggregation.rules.median import coordinate_median
from common.aggregation.tensors import check_matrix, weighted_sum
from common.finite import all_finite

#: Passes of ByzFL's update before each pass must zero a weighted row (each pass is one
#: (n, n) eigendecomposition: 10 ms at n = 25 for the whole budget's worth).
MAX_SLOW_PASSES = 1000

__all__ = ["MAX_SLOW_PASSES", "centered_gram", "top_eigen", "caf_weights", "caf", "CAF"]


def centered_gram(x: Tensor) -> Tensor:
    """``(x_i - z) . (x_j - z)`` for the coordinate-wise median z, as (n, n) float64 (scaled
    so that huge rows do not overflow: an inexact but finite result then)."""
    z = coordinate_median(x)
    g = native.gram(x, z)
    if not all_finite(g):
        y = (x - z).double()
        s = y.abs().amax().clamp_min(1e-300)
        y = y / s
        g = (y @ y.T) * (s * s)
        if not all_finite(g):
            g = torch.nan_to_num(y @ y.T, posinf=math.inf)  # relative to s^2: same argmins
    return g


def top_eigen(k: Tensor, a: Tensor) -> tuple[float, Tensor]:
    """(largest eigenvalue, squared projections tau) of the covariance ``sum_i a_i (y_i - mu)
    (y_i - mu)^T`` with ``mu = sum_i a_i y_i`` (a: weights summing to 1) given ``k = y y^T``:
    tau_j = ((y_j - mu) . v)^2 for the top unit eigenvector v."""
    ka = k @ a
    g = k - ka[:, None] - ka[None, :] + a @ ka       # (y_i - mu) . (y_j - mu)
    r = a.clamp_min(0).sqrt()
    vals, vecs = torch.linalg.eigh(r[:, None] * g * r[None, :])
    lam, u = float(vals[-1]), vecs[:, -1]
    if lam <= 0:
        return 0.0, torch.zeros_like(a)
    proj = g @ (r * u) / math.sqrt(lam)              # (y_j - mu) . v, v = sum r_i u_i (y_i - mu)/.
    return lam, proj * proj


def caf_weights(k: Tensor, f: int) -> Tensor:
    """The weights (summing to 1) of CAF's output over the rows, from their Gram matrix ``k``.

    Start with c = 1; while sum(c) > n - 2f: take the c-weighted mean, the top eigenpair of the
    c-weighted covariance, remember the mean of least top eigenvalue, and set
    ``c_i <- c_i (1 - tau_i / max_j tau_j)`` with tau_i the squared projection of row i's
    deviation on the top eigenvector (as ByzFL). When that removes no weight at all (the maximum
    is a far row already at weight 0 and 1 - tau/max rounds to 1: ByzFL then loops for ever), or
    after :data:`MAX_SLOW_PASSES` passes, the maximum is taken over the weighted rows instead,
    which zeroes one of them: the loop always ends."""
    n = k.shape[0]
    c = torch.ones(n, dtype=torch.float64)
    best, best_a = math.inf, c / n
    passes = 0
    while float(c.sum()) > n - 2 * f:
        a = c / c.sum()
        lam, tau = top_eigen(k, a)
        if lam < best:
            best, best_a = lam, a
        t = float(tau.max())
        if not t > 0:   # the rows coincide along every direction: nothing to filter
            break
        nxt = (c * (1 - tau / t)).clamp_min(0.0)
        passes += 1
        if float(nxt.sum()) >= float(c.sum()) or passes > MAX_SLOW_PASSES:
            # The largest tau is a row already at weight 0 (far away): the others barely move,
            # and not at all once 1 - tau/t rounds to 1. Take the maximum over the weighted
            # rows instead, which zeroes one of them.
            live = c > 0
            nxt = torch.where(live, c * (1 - tau / float(tau[live].max())), c).clamp_min(0.0)
        c = nxt
    return best_a


def caf(x: Tensor, f: int) -> Tensor:
    """CAF.

    Formula: iterative filtering (:func:`caf_weights`) returning ``sum_i a_i x_i``, the weighted
    mean whose weighted covariance had the least top eigenvalue. Parameters: x -- (n, d); f --
    Byzantine rows assumed. Precondition: ``n > 2f``. Reference: Allouah, Guerraoui, Stephan,
    ICML 2025 (ByzFL 0.0.11 approximates the top eigenvector by one power-iteration step from a
    random vector; this computes it exactly, so the two agree where that step is exact, e.g.
    when the deviations from the mean span one direction).
    """
    check_matrix(x)
    n = x.shape[0]
    check_majority("caf", n, f)
    a = caf_weights(centered_gram(x), int(f))
    return weighted_sum(a.to(x.dtype), x)


@RULES.register
class CAF(Rule):
    """CAF: rows down-weighted along the top covariance direction; info: the weights.

    Returns the weighted mean whose weighted covariance had the least top eigenvalue."""

    name = "caf"

    def check(self, n):
        check_majority(self.name, n, self.f)

    def aggregate(self, x, honest):
        a = caf_weights(centered_gram(x), self.f)
        self.info = {"weights": [round(float(v), 6) for v in a]}
        return weighted_sum(a.to(x.dtype), x)
