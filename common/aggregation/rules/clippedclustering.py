"""``clippedclustering``: Clipped Clustering. S. Li, E. C.-H. Ngai, T. Voigt, "An Experimental
Study of Byzantine-Robust Aggregation Schemes in Federated Learning", IEEE Transactions on Big
Data, 2023 (as implemented in Blades / fedlib).

Every message is clipped to the median of all norms the server has received so far (this
round's included: the rule keeps that history across rounds and in checkpoints), the messages
are split in two by scikit-learn's agglomerative clustering on cosine distances, and the larger
cluster is averaged. Clipping does not change cosines, so the clustering runs on the messages as
they are and the clipped mean is one weighted pass over the stack.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from common.aggregation.preagg.clipping import clipped_mean_weights, row_norms
from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix, cosine_similarities, median_of, weighted_sum
from common.params import Param

__all__ = ["larger_cosine_cluster", "clipped_clustering", "ClippedClustering"]

LINKAGES = ("average", "complete", "single")


def larger_cosine_cluster(x: Tensor, linkage: str = "average") -> Tensor:
    """Indices of the larger of the two agglomerative clusters of the rows by cosine distance
    ``1 - cos(x_i, x_j)`` (a zero row is at distance 1 from all). Ties in size: the cluster of
    row 0. One row: that row."""
    from sklearn.cluster import AgglomerativeClustering  # noqa: PLC0415 - slow import

    check_matrix(x)
    n = x.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    dist = (1.0 - cosine_similarities(x)).clamp_(0.0, 2.0).fill_diagonal_(0.0)
    labels = AgglomerativeClustering(n_clusters=2, metric="precomputed",
                                     linkage=linkage).fit(dist.cpu().numpy()).labels_
    counts = np.bincount(labels, minlength=2)
    pick = labels[0] if counts[0] == counts[1] else int(np.argmax(counts))
    return torch.as_tensor(np.nonzero(labels == pick)[0], dtype=torch.long)


def clipped_clustering(x: Tensor, tau: float, linkage: str = "average") -> Tensor:
    """Clipped Clustering for one round.

    Formula: with C the larger cluster of :func:`larger_cosine_cluster`,
    ``(1/|C|) sum_{i in C} x_i min(1, tau / ||x_i||)``. Parameters: x -- (n, d); tau -- the
    clipping bound (the rule: the median of every norm received so far, capped at
    ``max_tau``); linkage -- ``average`` (Blades' default), ``complete`` or ``single``. It uses
    no f (the larger cluster is honest when the honest messages are a majority and alike).
    Reference: Li, Ngai, Voigt, IEEE TBD 2023.
    """
    norms = row_norms(x).double().cpu()
    w = clipped_mean_weights(larger_cosine_cluster(x, linkage), norms, float(tau))
    return weighted_sum(w.to(x.device), x)


@RULES.register
class ClippedClustering(Rule):
    """Clipped Clustering: clip to the median of past norms, average the larger of two cosine
    clusters; info: the kept rows (``selected``) and the clipping bound (``tau``)."""

    name = "clippedclustering"
    stateful = True
    params = (Param("max_tau", float, 1e5, "cap on the clipping bound", low=0, low_open=True),
              Param("linkage", str, "average", "agglomerative linkage", choices=LINKAGES))

    def __init__(self, n, f, **params):
        super().__init__(n, f, **params)
        self.history = torch.zeros(0, dtype=torch.float64)  # every norm received so far

    def aggregate(self, x, honest):
        norms = row_norms(x).double().cpu()
        self.history = torch.cat([self.history, norms])
        tau = min(median_of(self.history), self.values["max_tau"])
        kept = larger_cosine_cluster(x, self.values["linkage"])
        self.info = {"selected": kept.tolist(), "tau": float(f"{tau:.4g}")}
        return weighted_sum(clipped_mean_weights(kept, norms, tau).to(x.device), x)

    def state_dict(self):
        # a list, not a tensor: the history grows, and --resume checks every tensor's shape
        return {"history": self.history.tolist()}

    def load_state_dict(self, d):
        self.history = torch.as_tensor(d["history"], dtype=torch.float64)
