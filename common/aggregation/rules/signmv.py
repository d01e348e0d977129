"""``signmv``: majority vote of signs (J. Bernstein, J. Zhao, K. Azizzadenesheli, A. Anandkumar,
"signSGD with Majority Vote is Communication Efficient and Fault Tolerant", ICLR 2019). As a
tensor rule it votes on float messages; the sign protocol (:mod:`common.protocols.sign`) counts
bit-packed votes with the same result."""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.rules.base import RULES, Rule
from common.aggregation.tensors import check_matrix
from common.params import Param

__all__ = ["sign_majority", "SignMajority"]


def sign_majority(x: Tensor) -> Tensor:
    """Majority vote of signs: ``sign(sum_i sign(x_i))`` (values in {-1, 0, 1}; ties give 0).

    Reference: Bernstein et al., "signSGD with Majority Vote", ICLR 2019.
    """
    check_matrix(x)
    return torch.sign(torch.sign(x).sum(dim=0))


@RULES.register
class SignMajority(Rule):
    """Majority vote of signs, sign(sum_i sign(x_i)) (the sign protocol's rule)."""

    name = "signmv"
    protocol = "sign"
    # The election code the nodes vote with (the sign protocol, common/protocols/sign.py).
    params = (Param("redundancy", float, 1.0, "r = ones in the allocation matrix G / n, in "
                    "[1, n]; 1 is plain signSGD-MV", key="redundancy"),
              Param("deterministic", bool, False, "True: a known deterministic code; False: a "
                    "Bernoulli code drawn from the run seed", key="deterministic"))

    def aggregate(self, x, honest):
        return sign_majority(x)
