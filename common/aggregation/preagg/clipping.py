"""``clip`` and ``arc``: norm clipping before the rule.

``clip:C`` is static clipping (as ByzFL's ``Clipping``); ``arc`` is adaptive robust clipping,
Y. Allouah, R. Guerraoui, N. Gupta, A. Jellouli, G. Rizk, J. Stephan, "Boosting Robustness by
Clipping Gradients in Distributed Learning", arXiv 2405.14432 (2024): the
``k = floor(2 (f/n) (n - f))`` largest-norm vectors are clipped to the norm of the (k+1)-th
largest, so the clipping level adapts to the honest norms without a tuned constant.
Norms are overflow-safe (:func:`common.aggregation.tensors.distances_to`). On CPU the native
kernels read each row once for ``clip`` (its norm, then the row scaled while still in cache)
and write the output with stores that bypass the cache (:mod:`common.aggregation.native`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from common.aggregation import native
from common.aggregation.preagg.base import PREAGGREGATORS, PreAggregator
from common.aggregation.tensors import check_matrix, distances_to
from common.errors import ConfigError
from common.params import Param

__all__ = ["row_norms", "clip_rows", "clip_to", "clipped_mean_weights", "clip", "arc_count",
           "arc_limits", "arc", "Clip", "ARC"]


def row_norms(x: Tensor) -> Tensor:
    """||x_i|| for every row, in x's dtype (+inf for a row with NaN or an overflow)."""
    return distances_to(x, torch.zeros(x.shape[1], dtype=x.dtype, device=x.device))


def clip_rows(x: Tensor, limits: Tensor, norms: Tensor, out: Tensor | None = None) -> Tensor:
    """``x_i min(1, limits_i / ||x_i||)`` for every row, given the norms (a zero row stays zero;
    a row of infinite norm, NaN or overflowing entries included, becomes zero)."""
    scale = torch.where(norms > limits, limits / norms, torch.ones_like(norms))
    scale = torch.nan_to_num(scale, nan=0.0)
    out = torch.empty_like(x) if out is None else out
    if not native.scale_rows(x, scale, out):
        torch.mul(x, scale.to(x.dtype)[:, None], out=out)
        out[scale == 0] = 0  # not 0 * inf = NaN
    return out


def clip_to(x: Tensor, c: float, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(``x_i min(1, c / ||x_i||)`` for every row, the norms ``||x_i||``), as
    :func:`clip_rows` with every limit c; on CPU each row is read from memory once."""
    out = torch.empty_like(x) if out is None else out
    limits = torch.full((x.shape[0],), float(c), dtype=x.dtype, device=x.device)
    norms = native.clip_rows_to(x, limits, out)
    if norms is None:
        norms = row_norms(x)
        return clip_rows(x, limits, norms, out), norms
    for i in torch.nonzero(norms < 0).flatten().tolist():  # overflow or NaN: the safe path
        norms[i:i + 1] = row_norms(x[i:i + 1])
        clip_rows(x[i:i + 1], limits[i:i + 1], norms[i:i + 1], out[i:i + 1])
    return out, norms


def clipped_mean_weights(kept: Tensor, norms: Tensor, bound: float) -> Tensor:
    """Weights w with ``sum_i w_i x_i`` the mean over ``kept`` of the rows clipped to norm
    ``bound``: ``w_i = min(1, bound / ||x_i||) / |kept|`` on kept rows, 0 elsewhere."""
    w = torch.zeros_like(norms)
    if kept.numel():
        nk = norms[kept]
        w[kept] = torch.where(nk > bound, bound / nk, torch.ones_like(nk)) / kept.numel()
    return w


def clip(x: Tensor, c: float) -> Tensor:
    """Static clipping: ``y_i = x_i min(1, C / ||x_i||)``.

    Parameters: x -- (n, d); c -- the norm bound C > 0. Reference: ByzFL's ``Clipping``.
    """
    check_matrix(x, "a pre-aggregator")
    if not c > 0:
        raise ConfigError(f"clip needs C > 0, got {c}")
    return clip_to(x, c)[0]


def arc_count(n: int, f: int) -> int:
    """k = floor(2 (f / n) (n - f)), the number of vectors ARC clips (0 <= k < n)."""
    return int(math.floor(2 * f * (n - f) / n))


def arc_limits(norms: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """(per-row norm limits, indices of the clipped rows) of ARC for the norms of n rows."""
    n = norms.shape[0]
    k = arc_count(n, f)
    limits = torch.full_like(norms, float("inf"))
    if k == 0:
        return limits, torch.zeros(0, dtype=torch.long)
    order = torch.sort(norms, descending=True, stable=True).indices
    limits[order[:k]] = norms[order[k]]
    return limits, order[:k]


def arc(x: Tensor, f: int, out: Tensor | None = None) -> Tensor:
    """Adaptive robust clipping.

    Formula: with k = floor(2 (f/n)(n - f)) and the norms sorted decreasingly
    ``||x_(1)|| >= ... >= ||x_(n)||``, ``y_i = x_i min(1, ||x_(k+1)|| / ||x_i||)`` for the k
    largest (ties: the lower index counts as larger); the others unchanged. Precondition:
    0 <= f < n. With f = 0 nothing is clipped. Reference: Allouah et al., arXiv 2405.14432,
    2024 (ByzFL's ``ARC``).
    """
    check_matrix(x, "a pre-aggregator")
    n = x.shape[0]
    if not 0 <= f < n:
        raise ConfigError(f"arc needs 0 <= f < n, got n={n}, f={f}")
    return _arc_into(x, f, out)[0]


def _arc_into(x: Tensor, f: int, out: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """(ARC's output, the limits, the clipped rows): every row copied while its norm is taken
    (one read of x), then the k clipped rows scaled in place."""
    out, norms = clip_to(x, math.inf, out)
    limits, clipped = arc_limits(norms, f)
    for i in clipped.tolist():
        clip_rows(out[i:i + 1], limits[i:i + 1], norms[i:i + 1], out[i:i + 1])
    return out, limits, clipped


@PREAGGREGATORS.register
class Clip(PreAggregator):
    """Static clipping of every vector to norm C; info: how many were clipped."""

    name = "clip"
    params = (Param("c", float, 2.0, "the norm bound C", low=0, low_open=True),)

    def apply(self, x, generator, out):
        c = self.values["c"]
        out, norms = clip_to(x, c, out)
        self.info = {"clipped": int((norms > c).sum())}
        return out


@PREAGGREGATORS.register
class ARC(PreAggregator):
    """The floor(2 (f/n)(n-f)) largest vectors clipped to the next norm; info: which, and it."""

    name = "arc"

    def check(self, n: int) -> None:
        if not 0 <= self.f < n:
            raise ConfigError(f"arc needs f < n, got n={n}, f={self.f} "
                              "(arc sees the vectors that reach it in the chain)")

    def apply(self, x, generator, out):
        out, limits, clipped = _arc_into(x, self.f, out)
        self.info = {"clipped": clipped.tolist(),
                     "threshold": float(limits[clipped[0]]) if len(clipped) else None}
        return out
