"""``mean`` (plain averaging, the no-defense baseline) and ``oracle`` (the mean of the truly honest
rows: "OracleSGD" of Prakash & Avestimehr, DiverseFL)."""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix, rows_mean
from common.errors import ConfigError

__all__ = ["mean", "oracle", "Mean", "Oracle"]


def mean(x: Tensor) -> Tensor:
    """Arithmetic mean of the rows.

    Formula: ``(1/n) sum_i x_i`` (computed as one matrix-vector product with weights 1/n).

    Parameters: x -- (n, d) tensor. Returns a d-vector. Not robust: one Byzantine row can move
    it arbitrarily far. Reference: plain mini-batch SGD.
    """
    check_matrix(x)
    n = x.shape[0]
    return torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device) @ x


def oracle(x: Tensor, honest: Tensor) -> Tensor:
    """Mean over the truly honest rows ("OracleSGD").

    Formula: ``(1/|H|) sum_{i in H} x_i`` with ``H = {i : honest[i]}``.

    Parameters: x -- (n, d) tensor; honest -- bool tensor of shape (n,) with at least one True.
    Byzantine rows never enter the sum, whatever they hold.
    """
    check_matrix(x)
    honest = torch.as_tensor(honest).to(device=x.device).bool().flatten()
    if honest.numel() != x.shape[0]:
        raise ConfigError(f"oracle needs an honest mask of length n={x.shape[0]}, "
                          f"got {honest.numel()}")
    idx = torch.nonzero(honest).flatten()
    if idx.numel() == 0:
        raise ConfigError("oracle needs at least one honest row; the honest mask is all False")
    return rows_mean(x, idx)



@RULES.register
class Mean(Rule):
    """Plain average (no defense)."""

    name = "mean"

    def aggregate(self, x, honest):
        return mean(x)


@RULES.register
class Oracle(Rule):
    """Average of the true honest rows (OracleSGD: the server knows who is Byzantine)."""

    name = "oracle"
    per_worker = True

    def aggregate(self, x, honest):
        if honest is None:
            raise ConfigError("oracle needs the honest mask (which rows are honest); "
                              "the server must pass honest=...")
        return oracle(x, honest)
