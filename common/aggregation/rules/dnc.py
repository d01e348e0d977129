"""``dnc``: Divide-and-Conquer. V. Shejwalkar, A. Houmansadr, "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning", NDSS 2021 (Algorithm 2).

Each of ``iters`` repetitions looks at a random subset of ``sub_dim`` coordinates: the rows'
projections on the top singular direction of the centred sub-matrix are outlier scores, and the
``floor(c f)`` highest-scoring rows are dropped. A row must survive every repetition to be
averaged. The sub-matrices are small ((n, sub_dim), float64) and the top direction comes from
their (n, n) Gram matrix, so one pass over the full stack (the final mean) dominates at d in the
millions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix, rows_mean
from common.errors import ConfigError
from common.params import Param

__all__ = ["dnc_kept", "dnc", "DnC"]


def _coordinates(d: int, b: int, generator: torch.Generator) -> Tensor:
    """b distinct coordinates of d, uniformly at random (all of them when b >= d)."""
    if b >= d:
        return torch.arange(d)
    if 4 * b > d:
        return torch.randperm(d, generator=generator)[:b]
    # b << d: a random permutation of d would cost more than the rest of the rule; draw with
    # replacement until b distinct values are in hand, then a uniform b of them
    seen = torch.unique(torch.randint(d, (b + b // 2 + 16,), generator=generator))
    while seen.numel() < b:
        seen = torch.unique(torch.cat([seen, torch.randint(d, (b,), generator=generator)]))
    return seen[torch.randperm(seen.numel(), generator=generator)[:b]]


def dnc_kept(x: Tensor, f: int, iters: int = 5, sub_dim: int = 10_000, c: float = 1.0,
             generator: torch.Generator | None = None) -> Tensor:
    """Indices (sorted) of the rows DnC keeps.

    Per repetition: coordinates r (``sub_dim`` of them), ``mu = mean_i x_i[r]``, v the top
    right singular vector of the centred rows ``x_i[r] - mu``, scores ``s_i = ((x_i[r] - mu) .
    v)^2``; the n - floor(c f) rows of lowest score are kept (ties: lower index). The result is
    the intersection over repetitions; should it be empty, the rows kept most often.
    """
    check_matrix(x)
    n, d = x.shape
    drop = math.floor(c * f)
    if drop >= n:
        raise ConfigError(f"dnc needs n > floor(c f) to keep a row, got n={n}, f={f}, c={c}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    votes = torch.zeros(n, dtype=torch.long)
    if drop == 0:
        return torch.arange(n)
    for _ in range(iters):
        # sorted: the gather then walks each row forward (the set is what matters)
        r = _coordinates(d, sub_dim, g).sort().values.to(x.device)
        sub = x.index_select(1, r).double()
        centred = sub - sub.mean(0)
        # with centred = U S V^T, the projections on v_1 are s_1 u_1: the scores are
        # lambda_1 u_1^2 of the (n, n) Gram matrix, far cheaper than the (n, sub_dim) SVD
        lam, u = torch.linalg.eigh(centred @ centred.T)
        scores = (lam[-1].clamp(min=0) * u[:, -1].square()).cpu()
        keep = torch.sort(scores, stable=True).indices[: n - drop]
        votes[keep] += 1
    best = iters if bool((votes == iters).any()) else int(votes.max())
    return torch.nonzero(votes == best).flatten()


def dnc(x: Tensor, f: int, iters: int = 5, sub_dim: int = 10_000, c: float = 1.0,
        generator: torch.Generator | None = None) -> Tensor:
    """Divide-and-Conquer.

    Formula: ``(1/|K|) sum_{i in K} x_i`` with K the rows :func:`dnc_kept` keeps. Parameters:
    x -- (n, d); f -- Byzantine rows assumed; iters -- repetitions; sub_dim -- coordinates per
    repetition (all d when d <= sub_dim); c -- filtering fraction (floor(c f) rows dropped per
    repetition); generator -- the coordinate draws. Precondition: ``floor(c f) < n``.
    Reference: Shejwalkar & Houmansadr, NDSS 2021 (defaults as Blades': 5, 10000, 1.0).
    """
    return rows_mean(x, dnc_kept(x, f, iters, sub_dim, c, generator))


@RULES.register
class DnC(Rule):
    """Divide-and-Conquer: drop the top outlier scores on random coordinate subsets; info:
    the kept rows (``selected``)."""

    name = "dnc"
    params = (Param("iters", int, 5, "repetitions, each on a fresh random coordinate subset",
                    low=1),
              Param("sub_dim", int, 10_000, "coordinates per repetition", low=1),
              Param("c", float, 1.0, "filtering fraction: floor(c f) rows dropped per repetition",
                    low=0))

    def check(self, n):
        if math.floor(self.values["c"] * self.f) >= n:
            raise ConfigError(f"dnc needs n > floor(c f), got n={n}, f={self.f}, "
                              f"c={self.values['c']}")

    def aggregate(self, x, honest):
        v = self.values
        kept = dnc_kept(x, self.f, v["iters"], v["sub_dim"], v["c"], self.generator)
        self.info = {"selected": kept.tolist()}
        return rows_mean(x, kept)
