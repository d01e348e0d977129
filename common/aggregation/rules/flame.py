"""``flame``: FLAME. T. D. Nguyen, P. Rieger, H. Chen, H. Yalame, H. Möllering, H. Fereidooni,
S. Marchal, A. Mirhoseini, S. Zeitouni, A.-R. Sadeghi, F. Koushanfar, A. Sadeghi, T. Schneider,
"FLAME: Taming Backdoors in Federated Learning", USENIX Security 2022.

Three steps: scikit-learn's HDBSCAN on the messages' cosine distances (``min_cluster_size =
n/2 + 1``, ``min_samples = 1``, one cluster allowed) admits the majority cluster; the admitted
messages are clipped to the median norm S of all n messages and averaged; Gaussian noise of
standard deviation ``lambda S`` is added. The paper clips and noises model updates; here the
messages are gradients (or updates) and the server steps by lr times the output, which is the
paper's noise on the model, lambda times the median update norm, whenever lr scales the update.
Default lambda = 0.001, the paper's value for image classification.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.preagg.clipping import clipped_mean_weights, row_norms
from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix, cosine_similarities, median_of, weighted_sum
from common.params import Param

__all__ = ["flame_admitted", "flame", "FLAME"]


def flame_admitted(x: Tensor, min_cluster: int | None = None) -> Tensor:
    """Indices of the rows in HDBSCAN's largest cluster on the distances ``1 - cos(x_i,
    x_j)`` (``min_cluster_size``: ``min_cluster``, default ``floor(n/2) + 1``; ties in size:
    the lower label). Empty when every row is noise (no cluster that large); all rows when
    n < 3 (too few to cluster)."""
    from sklearn.cluster import HDBSCAN  # noqa: PLC0415 - slow import

    check_matrix(x)
    n = x.shape[0]
    size = n // 2 + 1 if min_cluster is None else int(min_cluster)
    if n < 3:
        return torch.arange(n)
    dist = (1.0 - cosine_similarities(x)).clamp_(0.0, 2.0).fill_diagonal_(0.0)
    labels = torch.as_tensor(HDBSCAN(min_cluster_size=max(2, min(size, n)), min_samples=1,
                                     metric="precomputed", allow_single_cluster=True,
                                     copy=True).fit(dist.cpu().numpy()).labels_)
    if not bool((labels >= 0).any()):
        return torch.zeros(0, dtype=torch.long)
    majority = int(torch.argmax(torch.bincount(labels[labels >= 0])))
    return torch.nonzero(labels == majority).flatten()


def flame(x: Tensor, lam: float = 0.001, min_cluster: int | None = None,
          generator: torch.Generator | None = None) -> Tensor:
    """FLAME.

    Formula: with A the rows :func:`flame_admitted` admits and S the median of all n norms,
    ``(1/|A|) sum_{i in A} x_i min(1, S / ||x_i||) + N(0, (lambda S)^2 I)`` (zero, without
    noise, when A is empty). Parameters: x -- (n, d); lam -- noise level lambda >= 0;
    min_cluster -- HDBSCAN's minimum cluster size (default n/2 + 1); generator -- the noise.
    It uses no f (the majority cluster assumes fewer than n/2 Byzantine rows). Reference:
    Nguyen et al., USENIX Security 2022.
    """
    out, _, _ = _flame(x, lam, min_cluster, generator)
    return out


def _flame(x: Tensor, lam: float, min_cluster: int | None,
           generator: torch.Generator | None) -> tuple[Tensor, Tensor, float]:
    admitted = flame_admitted(x, min_cluster)
    norms = row_norms(x).double().cpu()
    bound = median_of(norms)
    out = weighted_sum(clipped_mean_weights(admitted, norms, bound).to(x.device), x)
    if admitted.numel() and lam > 0 and bound > 0:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape[1], generator=g, dtype=torch.float32)
        out.add_(noise.to(device=x.device, dtype=x.dtype), alpha=lam * bound)
    return out, admitted, bound


@RULES.register
class FLAME(Rule):
    """FLAME: HDBSCAN's cosine majority cluster, clipped to the median norm, plus Gaussian
    noise; info: the admitted rows (``selected``) and the clipping bound."""

    name = "flame"
    params = (Param("lam", float, 0.001, "noise level: the noise's std is lam x the median "
                    "norm (the paper's 0.001 for image classification)", low=0),
              Param("min_cluster", int, None, "HDBSCAN's minimum cluster size (default: "
                    "n/2 + 1)", low=2))

    def aggregate(self, x, honest):
        v = self.values
        out, admitted, bound = _flame(x, v["lam"], v["min_cluster"], self.generator)
        self.info = {"selected": admitted.tolist(), "bound": float(f"{bound:.4g}")}
        return out
