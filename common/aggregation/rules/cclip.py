"""``cclip``: centered clipping (S. P. Karimireddy, L. He, M. Jaggi, "Learning from History for
Byzantine Robust Optimization", ICML 2021; the bucketing paper's settings, ICLR 2022: tau = 10,
L = 3). The center is the previous round's output (state carried by the :class:`CClip` object)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from common.aggregation import native
from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix, distances_to, step_and_distances
from common.params import Param

__all__ = ["centered_clip", "CClip"]

TAU = Param("tau", float, 10.0, "clipping radius tau", low=0, low_open=True)
ITERS = Param("iters", int, 3, "clipping iterations L", low=1)

# CClip's iterations run on coefficients (_centered_clip_gram) for at most this many rows: the
# centered Gram matrix costs n^2 / 2 multiply-adds per column, against a pass over the n rows per
# iteration (10 bucketed MLP messages, d = 2e5: 1.3 -> 0.7 ms; (10, 2e6): 19 -> 10 ms).
_CCLIP_GRAM_MAX_N = 16
# ... as long as the Gram matrix's rounding moves no clipping weight by more than this.
_CCLIP_GRAM_MAX_ERROR = 1e-4


def _centered_clip_gram(x: Tensor, v: Tensor, tau: float, iters: int
                        ) -> tuple[Tensor, int] | None:
    """The CClip iterations on coefficients: with y_i = x_i - v, every iterate is
    ``v + sum_j c_j y_j``, so ``||x_i - v_t||^2 = G_ii - 2 (G c)_i + c^T G c`` with G the centered
    Gram matrix ``Y Y^T``. One pass over x for G and one weighted sum at the end replace
    iters + 1 passes. None (the caller iterates on x) where the kernel does not run, G is not
    finite, or G's rounding bound (:func:`common.aggregation.native.gram_rounding`) could move a clipping
    weight ``min(1, tau / dist_i)`` by more than ``_CCLIP_GRAM_MAX_ERROR`` (rows much farther
    from v than tau)."""
    bound = native.gram_rounding(x, v)
    if bound is None:
        return None
    n = x.shape[0]
    g = native.gram(x, v).numpy()  # float64 (n, n); numpy: each small step costs ~1 us
    if not np.isfinite(g).all():
        return None
    diag = g.diagonal()
    r = np.sqrt(np.maximum(diag, 0.0))
    c = np.zeros(n)
    clipped = 0
    with np.errstate(divide="ignore"):
        for _ in range(iters):
            gc = g @ c
            sq = diag - 2.0 * gc + c @ gc
            err = bound * (r + np.abs(c) @ r) ** 2  # |error of sq_i|
            if (err > 2.0 * _CCLIP_GRAM_MAX_ERROR * np.maximum(sq - err, tau * tau)).any():
                return None
            scale = np.minimum(tau / np.sqrt(np.maximum(sq, 0.0)), 1.0)  # dist 0 -> inf -> 1
            clipped = int((scale < 1.0).sum())
            c = c * (1.0 - scale.sum() / n) + scale / n
    out, _ = step_and_distances(torch.from_numpy(c), x, v, float(1.0 - c.sum()), False)
    return out, clipped


def _centered_clip(x: Tensor, v: Tensor, tau: float, iters: int) -> tuple[Tensor, int]:
    """The CClip iterations from center v; also returns how many rows the last one clipped."""
    n = x.shape[0]
    if n <= _CCLIP_GRAM_MAX_N and iters > 1:
        fast = _centered_clip_gram(x, v, tau, iters)
        if fast is not None:
            return fast
    dist = distances_to(x, v)
    clipped = 0
    for t in range(iters):
        scale = torch.clamp(tau / dist.double(), max=1.0)  # dist = 0 -> inf -> 1
        clipped = int((scale < 1.0).sum())
        # v + (1/n) sum_i scale_i (x_i - v) = v (1 - sum(scale)/n) + (1/n) sum_i scale_i x_i
        v, dist = step_and_distances(scale / n, x, v, float(1.0 - scale.sum() / n),
                                      t + 1 < iters)
    return v, clipped


def centered_clip(x: Tensor, center: Tensor, tau: float = 10.0, iters: int = 3) -> Tensor:
    """Centered clipping.

    Iteration (L = ``iters`` times, from ``v = center``)::

        v <- v + (1/n) sum_i clip_tau(x_i - v),   clip_tau(z) = z min(1, tau / ||z||)

    Parameters: center -- d-vector (the previous round's output; zero at the first round);
    tau > 0; iters >= 1. Reference: Karimireddy, He, Jaggi, ICML 2021.
    """
    check_matrix(x)
    tau, iters = TAU.check(tau, "cclip"), ITERS.check(iters, "cclip")
    v = center.to(device=x.device, dtype=x.dtype)
    if v.shape != (x.shape[1],):
        raise ValueError(f"cclip center has shape {tuple(v.shape)}, expected ({x.shape[1]},)")
    return _centered_clip(x, v, tau, iters)[0]


@RULES.register
class CClip(Rule):
    """Centered clipping, from the previous round's output (stateful).

    info: ``{"clipped": rows clipped in the last iteration, "norm": ||output||}``.
    """

    name = "cclip"
    stateful = True
    params = (TAU, ITERS)

    def __init__(self, n: int, f: int, **params: Any) -> None:
        super().__init__(n, f, **params)
        self.center: Tensor | None = None

    def aggregate(self, x, honest):
        d = x.shape[1]
        if self.center is None:
            v = torch.zeros(d, dtype=x.dtype, device=x.device)
        else:
            if self.center.shape != (d,):
                raise ValueError(f"cclip center has shape {tuple(self.center.shape)}, "
                                 f"the messages have d={d}")
            v = self.center.to(device=x.device, dtype=x.dtype)
        v, clipped = _centered_clip(x, v, self.values["tau"], self.values["iters"])
        self.center = v.clone()
        self.info = {"clipped": clipped, "norm": float(torch.linalg.vector_norm(v))}
        return v

    def state_dict(self) -> dict:
        return {"center": None if self.center is None else self.center.detach().clone()}

    def load_state_dict(self, d: dict) -> None:
        c = d.get("center")
        self.center = None if c is None else torch.as_tensor(c).detach().clone()
