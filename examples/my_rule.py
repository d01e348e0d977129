"""A plugin: one robust rule and one attack, registered by name from outside the project.

    python main.py --plugin examples.my_rule --agg my_rule --attack my_attack -n 10 -f 2 --pre none
    mpiexec -n 3 python MPI_main.py --plugin examples.my_rule --agg my_rule --attack my_attack ...

A plugin module registers classes in the project's registries as the built-in ones do; every
declared parameter becomes a flag (``--my-rule-keep``, ``--my-attack-scale``), is listed by
``--list`` and checked by its declaration, and the run's ``config.json`` records the plugin so
``--resume`` and every MPI rank import it too.

``my_rule`` (norm-filtered mean): keep the ``ceil(keep * n)`` messages of smallest Euclidean
norm and average them. Robust to a minority of large attacks (bit flips scaled up, Gaussian
noise), not to small ones (ALIE). ``my_attack`` (scaled sign flip): every Byzantine worker sends
``-scale`` times its own message.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from common.aggregation.rules import RULES, Rule
from common.aggregation.tensors import check_matrix, rows_mean
from common.attacks import ATTACKS, Attack, AttackInput
from common.params import Param

__all__ = ["norm_filtered_mean", "NormFilteredMean", "ScaledFlip"]


def norm_filtered_mean(x: Tensor, keep: float) -> Tensor:
    """The mean of the ``ceil(keep n)`` rows of x of smallest norm (ties: lowest index).

    Formula: ``(1/m) sum_{i in S} x_i``, S the m = ceil(keep n) rows of least ``||x_i||``.
    Precondition: 0 < keep <= 1.
    """
    check_matrix(x)
    m = max(1, math.ceil(keep * x.shape[0]))
    norms = torch.linalg.vector_norm(x.double(), dim=1)
    order = torch.sort(torch.nan_to_num(norms, nan=math.inf), stable=True).indices
    return rows_mean(x, order[:m])


@RULES.register
class NormFilteredMean(Rule):
    """Norm-filtered mean: the mean of the smallest-norm fraction ``keep`` of the messages."""

    name = "my_rule"
    params = (Param("keep", float, 0.5, "fraction of the messages (smallest norms) averaged",
                    low=0, low_open=True, high=1),)

    def aggregate(self, x, honest):
        return norm_filtered_mean(x, self.values["keep"])


@ATTACKS.register
class ScaledFlip(Attack):
    """Scaled sign flip: every Byzantine worker sends ``-scale`` times its own message."""

    name = "my_attack"
    params = (Param("scale", float, 10.0, "factor of the flipped message", low=0),)

    def _setup(self, scale: float) -> None:
        self.scale = scale

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return own * -self.scale
