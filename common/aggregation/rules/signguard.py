"""``signguard``: SignGuard. J. Xu, S.-L. Huang, L. Song, T. Lan, "Byzantine-robust Federated
Learning through Collaborative Malicious Gradient Filtering", ICDCS 2022.

Two filters, then a clipped mean: a norm filter around the median norm, and a clustering of
sign statistics (the fractions of positive, zero and negative coordinates on a random block of
coordinates) by scikit-learn's MeanShift, keeping the largest cluster. Defaults are the
authors' (norm band (0.1, 3.0) x median, a block of 10 % of the coordinates, MeanShift with
``estimate_bandwidth(quantile=0.5)``).
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from common.aggregation.preagg.clipping import clipped_mean_weights, row_norms
from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix, median_of, weighted_sum
from common.errors import ConfigError
from common.params import Param

__all__ = ["sign_features", "largest_meanshift_cluster", "signguard_kept", "signguard",
           "SignGuard"]


def sign_features(x: Tensor, frac: float, generator: torch.Generator) -> Tensor:
    """(n, 3) float64: per row the fractions of positive, zero and negative coordinates on one
    random contiguous block of ``max(1, floor(frac d))`` coordinates, each column divided by its
    largest value (a column of zeros stays zero)."""
    d = x.shape[1]
    b = max(1, int(frac * d))
    start = int(torch.randint(d - b + 1, (1,), generator=generator))
    block = x[:, start:start + b]
    pos = (block > 0).sum(1).double() / b
    zero = (block == 0).sum(1).double() / b
    feat = torch.stack([pos, zero, 1.0 - pos - zero], dim=1).clamp_(min=0.0)
    top = feat.amax(0)
    return feat / torch.where(top > 0, top, torch.ones_like(top))


def largest_meanshift_cluster(features: Tensor) -> Tensor:
    """Indices of the largest MeanShift cluster of the rows of ``features`` (bandwidth
    ``estimate_bandwidth(quantile=0.5)``, bin seeding, orphans left out; ties: scikit-learn's
    first label, the densest). All rows when they are too alike to separate (zero bandwidth)."""
    from sklearn.cluster import MeanShift, estimate_bandwidth  # noqa: PLC0415 - slow import

    n = features.shape[0]
    pts = features.cpu().numpy()
    bandwidth = float(estimate_bandwidth(pts, quantile=0.5)) if n > 1 else 0.0
    if not bandwidth > 0:
        return torch.arange(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "binning data failed": MeanShift then seeds every point
        labels = torch.as_tensor(MeanShift(bandwidth=bandwidth, bin_seeding=True,
                                           cluster_all=False).fit(pts).labels_)
    counts = torch.bincount(labels[labels >= 0], minlength=1)
    return torch.nonzero(labels == int(torch.argmax(counts))).flatten()


def signguard_kept(x: Tensor, lower: float = 0.1, upper: float = 3.0, frac: float = 0.1,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, float]:
    """(kept rows, row norms, median norm): the rows inside the norm band
    ``lower M < ||x_i|| < upper M`` (M the median norm) that also fall in the largest cluster
    of :func:`sign_features`."""
    check_matrix(x)
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    norms = row_norms(x).double().cpu()
    med = median_of(norms)
    band = (norms > lower * med) & (norms < upper * med)
    cluster = torch.zeros_like(band)
    cluster[largest_meanshift_cluster(sign_features(x, frac, g))] = True
    return torch.nonzero(band & cluster).flatten(), norms, med


def signguard(x: Tensor, lower: float = 0.1, upper: float = 3.0, frac: float = 0.1,
              generator: torch.Generator | None = None) -> Tensor:
    """SignGuard.

    Formula: with M the median of the norms and K the rows :func:`signguard_kept` keeps,
    ``(1/|K|) sum_{i in K} x_i min(1, M / ||x_i||)`` (zero when K is empty). Parameters:
    x -- (n, d); lower, upper -- the norm band around M; frac -- fraction of the coordinates
    in the sign-statistics block; generator -- the block's position. Precondition:
    ``0 <= lower < upper``; it uses no f (the clustering assumes an honest majority).
    Reference: Xu et al., ICDCS 2022.
    """
    kept, norms, med = signguard_kept(x, lower, upper, frac, generator)
    return weighted_sum(clipped_mean_weights(kept, norms, med).to(x.device), x)


@RULES.register
class SignGuard(Rule):
    """SignGuard: norm band and sign-statistics clustering, then the mean clipped to the
    median norm; info: the kept rows (``selected``) and the median norm."""

    name = "signguard"
    params = (Param("lower", float, 0.1, "norm band's lower end, a multiple of the median norm",
                    low=0),
              Param("upper", float, 3.0, "norm band's upper end, a multiple of the median norm",
                    low=0, low_open=True),
              Param("frac", float, 0.1, "fraction of the coordinates whose signs are counted",
                    low=0, low_open=True, high=1))

    @classmethod
    def check_values(cls, values) -> None:
        if not values["lower"] < values["upper"]:
            raise ConfigError(f"signguard needs --signguard-lower < --signguard-upper, got "
                              f"{values['lower']} and {values['upper']}")

    def aggregate(self, x, honest):
        v = self.values
        kept, norms, med = signguard_kept(x, v["lower"], v["upper"], v["frac"], self.generator)
        self.info = {"selected": kept.tolist(), "median_norm": float(f"{med:.4g}")}
        return weighted_sum(clipped_mean_weights(kept, norms, med).to(x.device), x)
