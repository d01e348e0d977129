"""``resampling:s``: L. He, S. P. Karimireddy, M. Jaggi, "Byzantine-Robust Learning on
Heterogeneous Datasets via Resampling" (2020), Algorithm 2: n averages of s distinct messages,
every message used exactly s times."""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.preagg.base import PREAGGREGATORS, PreAggregator
from common.aggregation.preagg.mixing import cpu_randperm, group_means
from common.aggregation.tensors import check_matrix
from common.errors import ConfigError
from common.params import Param

__all__ = ["resampling_groups", "resampling", "Resampling"]


def resampling_groups(n: int, s: int, generator: torch.Generator | None = None) -> Tensor:
    """The index groups of resampling: an (n, s) LongTensor (CPU).

    Row i lists the s distinct messages averaged into output i; every message appears in exactly
    s rows (so at most s times overall). Sampler: for i = 1..n, with k = n - i + 1 groups left and
    c_j the remaining uses of message j, the messages with c_j = k must be taken (otherwise they
    could not be used up); the rest of the group is drawn uniformly without replacement among the
    other messages with c_j > 0. Invariants ``c_j <= k`` and ``sum c_j = k s`` guarantee that a
    group can always be completed.
    """
    if not 1 <= s <= n:
        raise ConfigError(f"resampling needs 1 <= s <= n (s distinct messages per average), "
                          f"got s={s}, n={n}")
    remaining = torch.full((n,), s, dtype=torch.long)
    groups = torch.empty(n, s, dtype=torch.long)
    for i in range(n):
        left = n - i
        forced = torch.nonzero(remaining == left).flatten()
        pool = torch.nonzero((remaining > 0) & (remaining < left)).flatten()
        need = s - forced.numel()
        pick = pool[cpu_randperm(pool.numel(), generator)[:need]]
        g = torch.cat([forced, pick])
        groups[i] = g
        remaining[g] -= 1
    return groups


def resampling(x: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Resampling (Algorithm 2 of He, Karimireddy, Jaggi): n averages, each of s distinct
    messages, every message used exactly s times (see :func:`resampling_groups`).

    Formula: ``y_i = (1/s) sum_{j in G_i} x_j``. Parameters: x -- (n, d); 1 <= s <= n;
    generator -- CPU torch.Generator. Returns an (n, d) tensor.
    """
    check_matrix(x, "a pre-aggregator")
    n = x.shape[0]
    groups = resampling_groups(n, int(s), generator)
    return group_means(x, groups.tolist())


@PREAGGREGATORS.register
class Resampling(PreAggregator):
    """n averages of s distinct messages, each used s times; info: the groups and s."""

    name = "resampling"
    params = (Param("s", int, 2, "messages per average", low=1),)

    def check(self, n: int) -> None:
        s = self.values["s"]
        if s > n:
            raise ConfigError(f"resampling needs s <= n (s distinct messages per average), "
                              f"got s={s}, n={n}")

    def apply(self, x, generator, out):
        s = self.values["s"]
        groups = resampling_groups(x.shape[0], s, generator).tolist()
        self.info = {"s": s, "groups": groups}
        return group_means(x, groups, out)
