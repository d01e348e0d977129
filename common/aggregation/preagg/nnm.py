"""``nnm``: nearest neighbour mixing. Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot,
J. Stephan, "Fixing by Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS
2023. On CPU float32 the neighbourhood means are group means (rows every neighbourhood shares
summed once); elsewhere one mixing product on the device."""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation import native
from common.aggregation.preagg.base import PREAGGREGATORS, PreAggregator
from common.aggregation.preagg.mixing import group_plan, mix
from common.aggregation.tensors import check_matrix, pairwise_sq_distances
from common.errors import ConfigError

__all__ = ["nnm_neighbours", "nnm", "NNM"]


def nnm_neighbours(x: Tensor, f: int) -> Tensor:
    """For every row i, the indices of its n - f nearest rows by Euclidean distance, itself
    first (ties: lower index first). An (n, n-f) LongTensor on x's device."""
    check_matrix(x, "a pre-aggregator")
    n = x.shape[0]
    if not 0 <= f < n:
        raise ConfigError(f"nnm needs 0 <= f < n, got n={n}, f={f} "
                          "(nnm sees the vectors that reach it in the chain)")
    d = pairwise_sq_distances(x)
    d.fill_diagonal_(-1.0)  # itself always first, even among duplicates
    return torch.sort(d, dim=1, stable=True).indices[:, : n - f]


def nnm(x: Tensor, f: int) -> Tensor:
    """Nearest neighbour mixing: each x_i is replaced by the mean of its n - f nearest rows
    (itself included) by Euclidean distance.

    Formula: ``y_i = (1/(n-f)) sum_{j in N_i} x_j`` (distances from the Gram matrix).
    Precondition: 0 <= f < n. With f = 0 every row becomes the global mean. Reference:
    Allouah et al., AISTATS 2023.
    """
    return _nnm_mix(x, nnm_neighbours(x, int(f)))


def _nnm_mix(x: Tensor, nb: Tensor, out: Tensor | None = None) -> Tensor:
    """The neighbourhood means. On CPU float32 as group means (the neighbourhoods overlap in
    most rows, which are then summed once: :func:`group_plan`); elsewhere as ``W @ x``, one
    matrix product on the device."""
    groups = [sorted(row) for row in nb.tolist()]  # sorted: equal neighbourhoods, equal lists
    mixed = native.group_means(x, *group_plan(groups), len(groups), out)
    if mixed is not None:
        return mixed
    w = torch.zeros(len(groups), x.shape[0], dtype=torch.float64, device=x.device)
    w.scatter_(1, nb, 1.0 / nb.shape[1])
    return mix(w, x, out)


# --------------------------------------------------------------------------------------------
# registry and chains


@PREAGGREGATORS.register
class NNM(PreAggregator):
    """Each vector replaced by the mean of its n - f nearest (itself included); info: neighbours."""

    name = "nnm"

    def check(self, n: int) -> None:
        if not self.f < n:
            raise ConfigError(f"nnm needs f < n, got n={n}, f={self.f} "
                              "(nnm sees the vectors that reach it in the chain)")

    def apply(self, x, generator, out):
        nb = nnm_neighbours(x, self.f)
        self.info = {"neighbours": nb.tolist()}
        return _nnm_mix(x, nb, out)
