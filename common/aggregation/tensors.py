"""Tensor helpers shared by the rules and pre-aggregators: input checks, weighted sums of rows,
distances to a point, and pairwise squared distances that stay exact for identical rows and
finite for huge rows.

Overflow policy (every rule relies on it): Gram distances that overflow are recomputed in
float64 (and from direct differences if float64 overflows too), norms that overflow are
recomputed with scaling, and a weighted sum of rows that turns non-finite is recomputed over
the rows of nonzero weight only (so a zero weight on a bad row never yields 0 * inf = NaN).
Remaining non-finite distances count as +inf.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from common.aggregation import native
from common.finite import all_finite

__all__ = ["check_matrix", "weighted_sum", "rows_mean", "safe_norm", "distances_to",
           "finish_distances", "step_and_distances", "pairwise_sq_distances",
           "cosine_similarities", "median_of"]


def check_matrix(x: Tensor, what: str = "a rule") -> None:
    """ValueError unless x is a floating-point (n, d) tensor with n, d >= 1 (``what`` names
    the caller in the message)."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        raise ValueError(f"{what} takes an (n, d) tensor, got {getattr(x, 'shape', type(x))}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{what} needs n >= 1 rows and d >= 1 columns, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{what} takes a floating-point tensor, got {x.dtype}")


def weighted_sum(w: Tensor, x: Tensor) -> Tensor:
    """sum_i w_i x_i over the rows of nonzero weight.

    On CPU float32 one pass of the native kernel over those rows only; elsewhere one
    matrix-vector product, recomputed over the rows with nonzero weight only if it is not
    finite (a zero weight times an infinite entry gives NaN).
    """
    fused = native.weighted_sum_and_sq_distances(w, x)
    if fused is not None:
        return fused[0]
    w = w.to(device=x.device, dtype=x.dtype)
    out = w @ x
    if not all_finite(out):
        idx = torch.nonzero(w).flatten().tolist()
        out = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
        for i in idx:
            out.add_(x[i], alpha=float(w[i]))
    return out


def rows_mean(x: Tensor, idx: Tensor) -> Tensor:
    """Mean of the rows ``idx`` of x (one matrix-vector product)."""
    w = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    idx = idx.to(x.device)
    w[idx] = 1.0 / idx.numel()
    return weighted_sum(w, x)


def safe_norm(v: Tensor) -> Tensor:
    """Euclidean norm of a 1-D tensor that does not overflow for huge finite entries."""
    m = v.abs().amax()
    if not bool(torch.isfinite(m)) or float(m) == 0.0:
        return torch.linalg.vector_norm(v)
    return m * torch.linalg.vector_norm(v / m)


def distances_to(x: Tensor, z: Tensor) -> Tensor:
    """||x_i - z|| for every row i, overflow-safe (a row with NaN is infinitely far).

    Squared distances from :func:`common.aggregation.native.sq_distances_to` (one pass over x on CPU).
    """
    return finish_distances(native.sq_distances_to(x, z), x, z)


def finish_distances(sq: Tensor, x: Tensor, z: Tensor) -> Tensor:
    """Distances (x's dtype) from squared distances (float64): rows whose result overflowed
    are recomputed with scaling, NaN becomes +inf."""
    dist = sq.sqrt_().to(x.dtype)
    bad = ~torch.isfinite(dist)
    if bool(bad.any()):
        for i in torch.nonzero(bad).flatten().tolist():
            dist[i] = safe_norm(x[i] - z)
        dist = torch.nan_to_num(dist, nan=math.inf, posinf=math.inf)  # not float max
    return dist


def step_and_distances(w: Tensor, x: Tensor, v: Tensor, alpha: float,
                        distances: bool) -> tuple[Tensor, Tensor | None]:
    """``out = sum_i w_i x_i + alpha v`` (rows of zero weight never enter) and, if
    ``distances``, :func:`distances_to` ``(x, out)``: one CClip or Weiszfeld iteration and the
    distances of the next, in one pass over x where the native kernel runs (two elsewhere)."""
    fused = native.weighted_sum_and_sq_distances(w, x, v, alpha, distances)
    if fused is None:
        out = weighted_sum(w, x)
        if alpha != 0.0:
            out.add_(v, alpha=alpha)
        return out, (distances_to(x, out) if distances else None)
    out, sq = fused
    return out, (finish_distances(sq, x, out) if distances else None)


def pairwise_sq_distances(x: Tensor) -> Tensor:
    """Squared Euclidean distances between all rows of x, as an (n, n) float64 tensor.

    Formula: ``D_ij = max(0, ||x_i||^2 + ||x_j||^2 - 2 x_i . x_j)`` from the Gram matrix
    ``G = x x^T`` (:func:`common.aggregation.native.gram`: one product; for float32 on CPU accumulated in
    float32 within column chunks and float64 across them, elsewhere in x's dtype, float32 for
    half types).

    If the Gram matrix overflows (rows with huge finite entries), it is recomputed in float64,
    and if that overflows too, from direct differences (entries may become +inf, never NaN).
    Pairs whose Gram distance is within rounding noise of zero (``D_ij <= 64 eps (||x_i||^2 +
    ||x_j||^2)``: identical or nearly identical rows, such as colluding attackers, where the
    formula cancels catastrophically and its error depends on the row order) are recomputed
    from direct differences, so identical rows are at distance exactly 0. Rows with non-finite
    entries are at distance +inf from every other row. The result is symmetric with a zero
    diagonal.
    """
    check_matrix(x)
    g = native.gram(x)
    sq = g.diagonal()
    d = sq[:, None] + sq[None, :] - 2.0 * g
    norms = sq
    eps = torch.finfo(x.dtype if x.dtype == torch.float64 else torch.float32).eps
    if not bool(torch.isfinite(d).all()):
        d = _pairwise_sq_distances_fallback(x)
        # the fallback's Gram is float64: its noise scales with float64 squared norms
        norms = torch.stack([torch.linalg.vector_norm(r.double()).square() for r in x])
        eps = torch.finfo(torch.float64).eps
    d = torch.nan_to_num(d, nan=math.inf).clamp_(min=0.0)
    d = 0.5 * (d + d.T)
    _refine_close_pairs(x, d, norms, 64.0 * eps)
    d.fill_diagonal_(0.0)
    return d


def cosine_similarities(x: Tensor) -> Tensor:
    """Cosine similarities ``C_ij = x_i . x_j / (||x_i|| ||x_j||)`` of all rows, an (n, n)
    float64 tensor with entries in [-1, 1]; a zero row has similarity 0 with every row (itself
    included). One Gram matrix (:func:`common.aggregation.native.gram`); where it overflows
    (huge finite rows), the Gram matrix of the rows scaled to unit norm in float64 instead."""
    check_matrix(x)
    g = native.gram(x)
    if not bool(torch.isfinite(g).all()):
        unit = torch.stack([r.double() / max(float(safe_norm(r.double())), 1e-300) for r in x])
        g = unit @ unit.T
    norms = g.diagonal().clamp(min=0.0).sqrt()
    scale = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
    c = (g * scale[:, None] * scale[None, :]).clamp_(-1.0, 1.0)
    return 0.5 * (c + c.T)


def median_of(v: Tensor) -> float:
    """The median of a 1-D tensor as a float (the mean of the two middle values for even
    length: ``numpy.median``, which has no size cap, unlike ``torch.quantile``)."""
    return float(np.median(v.detach().double().cpu().numpy()))


def _refine_close_pairs(x: Tensor, d: Tensor, norms: Tensor, rel: float) -> None:
    """Recompute in place, from direct differences, the entries of the distance matrix d that
    are at most ``rel (norms_i + norms_j)`` (norms: squared row norms), i.e. within the Gram
    formula's cancellation noise. The difference of two nearly equal floats is exact
    (Sterbenz), so identical rows are at distance exactly 0 and nearly identical ones lose
    nothing to cancellation; one pass over the pair (:func:`common.aggregation.native.sq_distances_to`,
    float64 across chunks) instead of float64 copies of both rows (ALIE's 5 identical rows at
    (25, 1e6): all distances 20.8 -> 10.1 ms)."""
    tol = rel * (norms[:, None] + norms[None, :])
    close = torch.triu((d <= tol) & torch.isfinite(tol), diagonal=1)
    if bool(close.any()) and x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # half types: in float32, like their Gram matrix
    for i, j in torch.nonzero(close).tolist():
        d[i, j] = d[j, i] = native.sq_distances_to(x[j:j + 1], x[i])[0]


def _pairwise_sq_distances_fallback(x: Tensor) -> Tensor:
    """Overflow-safe pairwise squared distances (float64): Gram matrix in float64, and if even
    that overflows, direct differences (no cancellation between huge terms). Rows with
    non-finite entries are at distance +inf."""
    n = x.shape[0]
    x64 = x.double()
    finite = torch.isfinite(x64).all(dim=1)
    d = torch.full((n, n), math.inf, dtype=torch.float64, device=x.device)
    idx = torch.nonzero(finite).flatten()
    if idx.numel() > 0:
        y = x64.index_select(0, idx)
        g = y @ y.T
        sq = g.diagonal()
        sub = sq[:, None] + sq[None, :] - 2.0 * g
        if not bool(torch.isfinite(sub).all()):
            sub = torch.cdist(y, y, compute_mode="donot_use_mm_for_euclid_dist").square()
        d[idx[:, None], idx[None, :]] = sub
    return d
