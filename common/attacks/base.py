"""Attacks: what the Byzantine workers send (spec: the "Attacks" table of ALGORITHMS.md).

Every attack is a pure tensor function plus a thin registered class around it that declares
its parameters once (:class:`common.params.Param`); each lives in its own module of this
package and registers itself (``@ATTACKS.register``). The worker code builds one
object per run with :func:`make_attack` and each round calls

* ``attack.poison_labels(y)`` on the labels of a Byzantine worker's batch (data-level attacks;
  identity for the others), then computes that worker's honest message on the poisoned batch, and
* ``attack.craft(AttackInput(own, honest, n, round, generator))`` to turn the ``(b, d)`` stack of
  those messages into the ``(b, d)`` messages actually sent.

Omniscient attacks (``attack.omniscient``: ``nm``, ``alie``, ``ipm``, ``mimic``) also need the
honest messages of the round (``AttackInput.honest``, shape ``(h, d)``), which reach them through
the transport. Notation: n workers this round, f Byzantine (the f given to the constructor),
H the honest set (the rows of ``honest``), mu = mean over H.

Conventions shared by every attack:

* outputs live on the device (and have the dtype) of ``own``; inputs are never modified in place;
* ``b = 0`` gives an empty ``(0, d)`` tensor; ``h = 1`` is handled (e.g. ALIE uses sigma = 0);
* colluding attacks (``nm``, ``alie``, ``ipm``, ``mimic``) send the same vector on every
  Byzantine row; ``bitflip``/``signflip``/``labelflip``/``backdoor``/``reverse`` transform each
  worker's own row and ``gaussian``/``random`` draw independent rows;
* randomness comes only from ``AttackInput.generator`` (a CPU generator), so runs are
  reproducible and independent of the device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from common.errors import ConfigError
from common.params import Param, Registry

__all__ = ["AttackInput", "Defense", "Attack", "ATTACKS", "attack_names", "make_attack",
           "run_attack", "run_defense", "repeat_rows"]

#: Every attack by name.
ATTACKS = Registry("attack")


@dataclass
class AttackInput:
    """Everything an attack may look at in one round.

    own:       (b, d) what each Byzantine worker would honestly send this round (its momentum or
               gradient, computed on its possibly poisoned batch).
    honest:    (h, d) the honest workers' messages of this round (omniscient attacks only; may be
               None for the others).
    n:         total number of workers this round.
    round:     round index (0-based).
    generator: CPU generator for randomised attacks.
    """

    own: Tensor
    honest: Tensor | None
    n: int
    round: int
    generator: torch.Generator


@dataclass(frozen=True)
class Defense:
    """What the server runs on the messages, for attacks that aim at it (:meth:`Attack.bind`):
    its ``--pre`` chain, its rule and the rule's parameters, and the f both assume."""

    pre: str
    agg: str
    f: int
    agg_params: dict[str, Any] = field(default_factory=dict)


def repeat_rows(vec: Tensor, b: int, like: Tensor, out: Tensor | None = None) -> Tensor:
    """b identical rows equal to ``vec``: written into ``out`` if given, else a fresh contiguous
    tensor on ``like``'s device/dtype."""
    vec = vec.to(device=like.device, dtype=like.dtype)
    if out is None:
        return vec.unsqueeze(0).repeat(b, 1)
    return out.copy_(vec.expand(b, -1))


class Attack:
    """Base class: honest behaviour (identity labels, ``craft`` returns ``own``).

    Subclasses declare ``name``, ``omniscient`` and ``params`` (the declarations);
    ``__init__`` checks the values against them (a parameter passed as None takes its default),
    stores them in ``values`` and calls :meth:`_setup` with them for checks that need the
    context (e.g. the number of classes). The class methods below are the hooks through which
    an attack changes more than its messages (the data layout, the Byzantine workers' batches,
    extra test metrics, what the configuration must allow).
    """

    name: ClassVar[str] = "none"
    omniscient: ClassVar[bool] = False
    # Whether craft reads the values of ``own`` (not only its shape). When it does not and the
    # Byzantine workers never turn honest, their honest gradients are not computed at all
    # (worker/group.py: WorkerGroup._rows_to_compute).
    reads_own: ClassVar[bool] = True
    # Rows drawn at random: the worker calls craft once per Byzantine worker with a generator
    # keyed by the worker's index, so messages do not depend on how workers are grouped.
    per_worker_random: ClassVar[bool] = False
    # Attacks a signSGD node can mount on its vote (the sign protocol accepts only these).
    on_votes: ClassVar[bool] = False
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, n: int, f: int, num_classes: int, **params: Any) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"attack '{self.name}': number of workers must be >= 1, got {n!r}")
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= n:
            raise ConfigError(f"attack '{self.name}': number of Byzantine workers must be in "
                              f"[0, n={n}], got {f!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"attack '{self.name}': number of classes must be >= 1, got {num_classes!r}")
        values = ATTACKS.resolve(self.name, params)
        if self.omniscient and f > 0 and n - f < 1:
            raise ConfigError(f"attack '{self.name}' copies or combines honest messages and needs at "
                              f"least one honest worker, but n={n}, f={f}")
        self.n = n
        self.f = f
        self.num_classes = num_classes
        self.values: dict[str, Any] = values
        self.info: dict = {}
        self.defense: Defense | None = None
        self._setup(**values)

    def _setup(self, **values: Any) -> None:
        """Store the parameters and check what needs the context (override)."""

    # -- hooks -----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ConfigError if the run's configuration cannot host this attack."""

    @classmethod
    def data_layout(cls, labels: Tensor, num_honest: int, f: int, num_classes: int,
                    generator: torch.Generator) -> list[Tensor] | None:
        """The training-set indices of every worker (honest ones first, then the f Byzantine
        ones) when the attack fixes the data layout itself, else None (the partition decides)."""
        return None

    def batch_sampler(self, problem, ids: range, num_workers: int, seed: int,
                      device: torch.device):
        """An object whose ``compose(x_all, y_all, x, y, byz, t)`` rewrites the Byzantine rows
        of a worker group's batch, or None (they draw like honest workers)."""
        return None

    def test_metric(self) -> tuple[str, int, int] | None:
        """``(name, source, target)``: report the percentage of test samples of class source
        classified as target under ``name`` at every evaluation, or None."""
        return None

    def bind(self, defense: Defense) -> None:
        """Tell the attack what the server runs (the workers do, before the first round)."""
        self.defense = defense

    # -- data level ----------------------------------------------------------------------
    def poison_labels(self, y: Tensor) -> Tensor:
        """Labels the Byzantine worker trains on (identity unless the attack poisons data)."""
        return y

    # -- message level -------------------------------------------------------------------
    def craft(self, inp: AttackInput, out: Tensor | None = None) -> Tensor:
        """(b, d) messages the Byzantine workers send: a fresh tensor, or written into ``out``
        (a (b, d) tensor, e.g. the rows of the stack they go to: one copy less) and returned."""
        self.info = {}
        own = self._check_own(inp)
        if own.shape[0] == 0:
            return own.new_empty((0, own.shape[1]))
        res = self._craft(inp, own, out)
        return res if out is None or res is out else out.copy_(res)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        """The messages (fresh, or ``out`` written; :meth:`craft` copies other results there)."""
        return own.clone()

    def _check_own(self, inp: AttackInput) -> Tensor:
        own = inp.own
        if own.dim() != 2:
            raise ValueError(f"attack '{self.name}': own must have shape (b, d), got {tuple(own.shape)}")
        return own

    def _honest(self, inp: AttackInput) -> Tensor:
        h = inp.honest
        d = inp.own.shape[1]
        if h is None or h.dim() != 2 or h.shape[0] == 0 or h.shape[1] != d:
            shape = None if h is None else tuple(h.shape)
            raise ValueError(f"attack '{self.name}' is omniscient and needs the honest messages "
                             f"of the round as an (h >= 1, d={d}) tensor, got {shape}")
        return h.to(inp.own.device)

    # -- state ---------------------------------------------------------------------------
    @property
    def stateful(self) -> bool:
        """Whether the attack keeps state across rounds (mimic): under MPI every replica must
        then see every round."""
        return type(self).state_dict is not Attack.state_dict

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v!r}" for k, v in sorted(self.values.items()))
        return f"{type(self).__name__}(n={self.n}, f={self.f}{', ' if ps else ''}{ps})"


@ATTACKS.register
class NoAttack(Attack):
    """Honest behaviour (``craft`` returns ``own``): for f = 0 or clean baselines."""

    name = "none"
    on_votes = True


def attack_names() -> list[str]:
    """Sorted names of every registered attack."""
    return ATTACKS.names()


def make_attack(name: str, n: int, f: int, num_classes: int, **params: Any) -> Attack:
    """Build attack ``name``; unknown names and parameters raise :class:`ConfigError`.

    A parameter given as None takes its default.
    """
    return ATTACKS.get(name)(n, f, num_classes, **params)


def run_attack(cfg, num_classes: int) -> Attack:
    """The attack of the run ``cfg`` (a :class:`common.run.config.Config`), built for the rows
    the server aggregates each round: its ``participants`` m, of which ``sampled_byzantine``
    (ceil(m f / n)) are Byzantine in proportion; n and f themselves when every worker takes
    part in every round."""
    attack = make_attack(cfg.attack, cfg.participants, cfg.sampled_byzantine, num_classes,
                         **cfg.attack_params)
    attack.bind(run_defense(cfg))
    return attack


def run_defense(cfg) -> Defense:
    """What the server of the run ``cfg`` runs on the messages (for :meth:`Attack.bind`)."""
    return Defense(cfg.pre, cfg.agg, cfg.f, dict(cfg.agg_params))
