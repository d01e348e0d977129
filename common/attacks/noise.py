"""``gaussian``: each Byzantine row independent N(0, std^2 I) noise (the papers' Gaussian attack),
drawn on the CPU with the round's generator, so the same seed gives the same messages on any
device; ``inf``: every coordinate +inf (ByzFL's Inf attack), which the server's message policy
must drop (master/messages.py)."""
from __future__ import annotations

import torch
from torch import Tensor

from common.attacks.base import ATTACKS, Attack, AttackInput
from common.params import Param

__all__ = ["gaussian_rows", "Gaussian", "Inf"]


def gaussian_rows(b: int, d: int, std: float, generator: torch.Generator,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """(b, d) independent N(0, std^2) entries, drawn on the CPU with ``generator``.

    Drawing on the CPU keeps the values identical whatever the target device.
    """
    x = torch.randn(b, d, generator=generator, dtype=torch.float32)
    return (x * std).to(device=device, dtype=dtype)


@ATTACKS.register
class Gaussian(Attack):
    """Each Byzantine row is independent N(0, std^2 I) noise."""

    name = "gaussian"
    reads_own = False
    per_worker_random = True
    params = (Param("std", float, 200.0, "standard deviation of the noise", low=0),)

    def _setup(self, std: float) -> None:
        self.std = std

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        b, d = own.shape
        return gaussian_rows(b, d, self.std, inp.generator, device=own.device, dtype=own.dtype)


@ATTACKS.register
class Inf(Attack):
    """Every coordinate of every Byzantine row is +inf (the server must drop the row)."""

    name = "inf"
    reads_own = False

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return torch.full_like(own, float("inf"))
