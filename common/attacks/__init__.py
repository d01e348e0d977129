"""Attacks: what the Byzantine workers send. One module per attack (or family), each registering
itself in :data:`ATTACKS`; importing this package imports them all and re-exports each module's
``__all__``, so a new module here is a new ``--attack NAME`` without editing another file."""
from common.attacks.base import (
    ATTACKS,
    Attack,
    AttackInput,
    Defense,
    attack_names,
    make_attack,
    run_attack,
    run_defense,
)
from common.params import discover

__all__ = ["ATTACKS", "Attack", "AttackInput", "Defense", "attack_names", "make_attack",
           "run_attack", "run_defense"]

__all__ += discover(__name__, __path__, globals())
