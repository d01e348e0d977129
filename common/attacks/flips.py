"""``bitflip`` / ``signflip`` (minus the worker's own message: the "bit flipping" attack of
Karimireddy, He, Jaggi, ICML 2021 / ICLR 2022; DiverseFL's "sign flip") and ``labelflip``
(honest training on labels y -> C - 1 - y: Allen-Zhu et al. 2020; Karimireddy et al. 2021)."""
from __future__ import annotations

from torch import Tensor

from common.attacks.base import ATTACKS, Attack, AttackInput

__all__ = ["negate", "flip_labels", "BitFlip", "SignFlip", "LabelFlip"]


def negate(own: Tensor) -> Tensor:
    """Bit-flip / sign-flip: every Byzantine worker sends ``-own`` (a new tensor)."""
    return -own


def flip_labels(y: Tensor, num_classes: int) -> Tensor:
    """Label flip: ``y -> C - 1 - y`` (``9 - y`` for 10 classes). Returns a new tensor."""
    return (num_classes - 1) - y


@ATTACKS.register
class BitFlip(Attack):
    """Each Byzantine worker sends minus its own honest message, ``-own`` (per worker)."""

    name = "bitflip"
    on_votes = True

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return negate(own)


@ATTACKS.register
class SignFlip(BitFlip):
    """Same behaviour as ``bitflip`` (``-own``); the DiverseFL paper's name."""

    name = "signflip"


@ATTACKS.register
class LabelFlip(Attack):
    """Train honestly on labels ``y -> C - 1 - y`` (``craft`` returns ``own`` unchanged)."""

    name = "labelflip"

    def poison_labels(self, y: Tensor) -> Tensor:
        return flip_labels(y, self.num_classes)
