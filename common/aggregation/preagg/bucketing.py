"""``bucketing:s``: S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-Robust Learning on
Heterogeneous Datasets via Bucketing", ICLR 2022. The rule then sees ceil(n/s) vectors (its f
stays the configured f)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from common.aggregation.preagg.base import PREAGGREGATORS, PreAggregator
from common.aggregation.preagg.mixing import cpu_randperm, group_means
from common.aggregation.tensors import check_matrix
from common.errors import ConfigError
from common.params import Param

__all__ = ["bucketing_matrix", "bucketing", "Bucketing"]


def bucketing_matrix(n: int, s: int, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor]:
    """The bucketing mixing matrix and the permutation it came from.

    Returns ``(W, perm)``: perm is a random permutation of range(n) (CPU, drawn with
    ``generator``); bucket b holds ``perm[b*s : (b+1)*s]`` (the last bucket may be smaller) and
    row b of the (ceil(n/s), n) float64 matrix W puts weight 1/|bucket b| on its members.
    """
    if s < 1:
        raise ConfigError(f"bucketing needs a bucket size s >= 1, got s={s}")
    perm = cpu_randperm(n, generator)
    k = math.ceil(n / s)
    w = torch.zeros(k, n, dtype=torch.float64)
    for b in range(k):
        members = perm[b * s:(b + 1) * s]
        w[b, members] = 1.0 / members.numel()
    return w, perm


def bucketing(x: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Bucketing: shuffle the n rows, cut them into ceil(n/s) buckets of s consecutive rows (the
    last bucket may be smaller) and average each bucket.

    Formula: ``y_b = (1/|B_b|) sum_{i in B_b} x_i`` with ``B_b = perm[b s : (b+1) s]``.
    Parameters: x -- (n, d); s >= 1; generator -- CPU torch.Generator for the permutation.
    Returns a (ceil(n/s), d) tensor. Reference: Karimireddy, He, Jaggi, ICLR 2022.
    """
    check_matrix(x, "a pre-aggregator")
    return group_means(x, _bucket_groups(x.shape[0], int(s), generator)[0])


def _bucket_groups(n: int, s: int, generator: torch.Generator | None
                   ) -> tuple[list[list[int]], Tensor]:
    """The buckets of :func:`bucketing_matrix` as index lists, and the permutation."""
    if s < 1:
        raise ConfigError(f"bucketing needs a bucket size s >= 1, got s={s}")
    perm = cpu_randperm(n, generator)
    order = perm.tolist()
    return [order[b:b + s] for b in range(0, n, s)], perm


@PREAGGREGATORS.register
class Bucketing(PreAggregator):
    """Means of ceil(n/s) buckets of a random permutation; info: the permutation and s."""

    name = "bucketing"
    params = (Param("s", int, 2, "bucket size", low=1),)

    def out_count(self, n: int) -> int:
        return math.ceil(n / self.values["s"])

    def warnings(self, n: int) -> list[str]:
        s = self.values["s"]
        if s >= n > 1:
            return [f"bucketing:{s} with {n} messages puts them all in one bucket: the rule sees "
                    "their mean only (no robustness); a bucket size below n/2 was meant?"]
        return []

    def apply(self, x, generator, out):
        s = self.values["s"]
        groups, perm = _bucket_groups(x.shape[0], s, generator)
        self.info = {"s": s, "permutation": perm.tolist()}
        return group_means(x, groups, out)
