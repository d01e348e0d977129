"""Vote attacks of the sign protocol (Sohn et al., election coding, NeurIPS 2020; Bernstein et al.,
signSGD, ICLR 2019): ``reverse`` (minus the node's vote), ``directional`` (all -1), ``random``
(uniform +-1)."""
from __future__ import annotations

import torch
from torch import Tensor

from common.attacks.base import ATTACKS, Attack, AttackInput

__all__ = ["reverse_votes", "directional_votes", "random_votes", "ReverseVote",
           "DirectionalVote", "RandomVote"]


def reverse_votes(own: Tensor) -> Tensor:
    """Reverse vote attack: ``-sign(own)`` (values in {-1, 0, 1})."""
    return -torch.sign(own)


def directional_votes(b: int, d: int, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Directional vote attack: every entry -1."""
    return torch.full((b, d), -1.0, device=device, dtype=dtype)


def random_votes(b: int, d: int, generator: torch.Generator, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Random vote attack: independent uniform +-1 entries drawn on the CPU with ``generator``."""
    bits = torch.randint(0, 2, (b, d), generator=generator)
    return (bits * 2 - 1).to(device=device, dtype=dtype)


@ATTACKS.register
class ReverseVote(Attack):
    """Minus the node's own vote: each row = ``-sign(own)`` (values -1, 0, 1).

    Reference: Sohn et al. (Election coding, NeurIPS 2020); Bernstein et al. (signSGD, 2019).
    """

    name = "reverse"
    on_votes = True

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return reverse_votes(own)


@ATTACKS.register
class DirectionalVote(Attack):
    """Every entry -1 (all Byzantine nodes push the same way)."""

    name = "directional"
    on_votes = True

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        b, d = own.shape
        return directional_votes(b, d, device=own.device, dtype=own.dtype)


@ATTACKS.register
class RandomVote(Attack):
    """Independent uniform +-1 entries per Byzantine row (generator)."""

    name = "random"
    on_votes = True
    per_worker_random = True

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        b, d = own.shape
        return random_votes(b, d, inp.generator, device=own.device, dtype=own.dtype)
