"""The protocol base class and the registry of protocols.

A protocol is what workers send and how the server turns it into a step: gradient messages
(the default), signSGD votes, client models (RSA), gradients filtered by guiding gradients
(DiverseFL). One object per protocol, in its own module of this package, owns everything that
differs between them: the settings it implies and its validation, its worker-side computation
(a client class driven by the worker group), its server-side step, its wire format, its
start-up exchange and its round diagnostics. Trainer, server, both transports and the worker
ranks ask the run's protocol (:func:`protocol_of`); none of them compares names.

A rule names its protocol (``Rule.protocol``); ``--agg NAME`` thereby selects it, unless a
protocol claims the run by its settings (:meth:`Protocol.claims`: the federated mode's flags).
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from common.aggregation.rules import RULES
from common.errors import require
from common.params import Param, Registry
from common.rows import take_rows
from common.run.schedule import learning_rate
from common.wire.formats import FloatRows

__all__ = ["Protocol", "Clients", "PROTOCOLS", "protocol_of", "plain_uploads"]

#: Every protocol by name.
PROTOCOLS = Registry("protocol")


def plain_uploads(cfg, chain) -> None:
    """ConfigError unless every client's upload reaches the rule as it was sent: no
    pre-aggregation (it would mix clients) and no worker momentum."""
    fix = (["--pre none"] if chain.stages else []) + (["--momentum 0"] if cfg.momentum else [])
    require(not fix, f"--agg {cfg.agg} works on each client's own plain gradient or model "
         f"(no pre-aggregation, no worker momentum); add {' '.join(fix)}")


class Clients:
    """A protocol's worker side for one worker group: what the group's workers compute and send
    each round, using the group's capabilities (``group``: a :class:`worker.group.WorkerGroup`,
    never imported here: data and batches, gradients at shared or per-client parameters, its
    per-worker ``state`` tensors, ``attack_rows`` / ``attack_craft``)."""

    def __init__(self, group) -> None:
        self.group = group

    def compute(self, params: Tensor, t: int, byz: Tensor,
                active: Tensor | None = None) -> Tensor:
        """The group's messages of round t in the protocol's wire format (``byz``: the group's
        Byzantine mask; ``active``: the group's workers taking part this round, None for all,
        given only by protocols that sample them, :meth:`Protocol.participants`). Byzantine
        rows are attacked, except for omniscient attacks, whose rows the transport has crafted
        once the round's honest messages are known."""
        raise NotImplementedError

    def craft(self, own: Tensor, honest: Tensor | None, t: int, rows: Tensor,
              out: Tensor | None = None) -> Tensor:
        """The Byzantine rows ``rows`` crafted from their own messages and the honest ones (the
        default: the attack applied to them as they are)."""
        return self.group.attack_craft(own, honest, t, rows, out)


class GradientClients(Clients):
    """Every worker sends its momentum (its gradient when the momentum is 0)."""

    def compute(self, params, t, byz, active=None):
        return self.group.momentum_messages(params, t, byz)


class Protocol:
    """Base class of a protocol (a registered instance per protocol); by default the gradient
    protocol's worker side, wire format and state: one float32 momentum row per worker.

    ``selected_by``: parameter keys that, given on the command line without ``--agg``, select
    ``default_rule`` (the election-coding seed commands name no rule).
    """

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    selected_by: ClassVar[tuple[str, ...]] = ()
    default_rule: ClassVar[str] = ""

    # -- configuration -------------------------------------------------------------------------
    def defaults(self, values: dict[str, Any], given: set[str]) -> None:
        """Fill in, in ``values`` (a config dict), the settings this protocol implies for the
        fields the user did not give (``given``)."""

    def validate(self, cfg, chain) -> None:
        """Raise ConfigError if ``cfg`` (with the pre-aggregator ``chain`` built for it) cannot
        run under this protocol."""

    def claims(self, cfg) -> bool:
        """Whether the run's settings choose this protocol whatever its rule names (the
        federated protocol: its flags); False for protocols chosen by their rules."""
        return False

    def reserved_samples(self, cfg, n_train: int) -> Tensor | None:
        """Training-set indices no worker may hold (the server's own data), or None."""
        return None

    # -- worker side -----------------------------------------------------------------------------
    def clients(self, group) -> Clients:
        """The worker side of the protocol for a worker group."""
        return GradientClients(group)

    def state_schema(self, cfg, dim: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The per-worker state tensors a worker group keeps: {name: (shape per worker,
        dtype)}. Checkpoints hold them, and MPI rank 0 sizes its buffers from this."""
        return {"momenta": ((dim,), torch.float32)}

    def transient_state(self, cfg) -> frozenset[str]:
        """Names in :meth:`state_schema` whose values no round reads before it writes them,
        under ``cfg``: checkpoints store each as one zero, expanded to its (n, ...) shape.
        The momentum rows at beta = 0: each round overwrites them with the gradient."""
        if self.momentum(cfg) != 0:
            return frozenset()
        return frozenset({"momenta"} & self.state_schema(cfg, 1).keys())

    def momentum(self, cfg) -> float:
        """The workers' momentum beta (the rows of "momenta" are ``beta m + g``)."""
        return cfg.momentum

    def wire(self, cfg, dim: int):
        """The message format (:mod:`common.wire.formats`)."""
        return FloatRows(dim)

    # -- start-up exchange -----------------------------------------------------------------------
    #: Whether the clients send the server something once, before the first round.
    has_startup: ClassVar[bool] = False

    def startup_payload(self, cfg, problem, ids: range) -> list[np.ndarray]:
        """What a worker group hosting ``ids`` sends at start-up (numeric buffers)."""
        return []

    def startup_buffers(self, cfg, problem, ids: range) -> list[np.ndarray]:
        """Zeroed buffers of exactly the sizes rank 0 expects from a group hosting ``ids``."""
        return []

    def startup_decode(self, cfg, problem, ids: range, bufs: list[np.ndarray] | None,
                       warn) -> list:
        """Per worker of ``ids``: what arrived, checked (None where it is unusable; ``bufs``
        None: nothing usable arrived). ``warn(text)`` reports each problem."""
        return [None] * len(ids)

    # -- server side -----------------------------------------------------------------------------
    def server_rule(self, cfg, problem, device: torch.device, params: Tensor, n_in: int):
        """The server's aggregator: called as ``rule(x, honest, f=..., workers=...)`` on the
        round's usable messages after the pre-aggregators (``f``: the Byzantine rows left to
        assume, ``workers``: the worker of each row, None when every message was usable), with
        ``info``, ``state_dict`` and ``load_state_dict``. ``params`` is the server's live parameter vector."""
        return RULES.get(cfg.agg)(n_in, cfg.f, **cfg.agg_params)

    def usable_rows(self, messages: Tensor, honest: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """The round's messages and honest mask reduced to the usable workers ``keep`` (sorted
        indices), for the server's rule: the rows themselves by default."""
        return take_rows(messages, keep), honest[keep]

    def start(self, rule, startup: list) -> None:
        """Hand the server's rule what the clients sent at start-up (one entry per worker)."""

    # -- rounds --------------------------------------------------------------------------------
    def participants(self, cfg, t: int) -> np.ndarray | None:
        """The sorted workers that take part in round t (the rows of its messages, in this
        order), or None: every worker, in worker order."""
        return None

    def step_size(self, cfg, t: int) -> float:
        """The learning rate of the server's step in round t (``--lr`` and its schedule)."""
        return learning_rate(cfg, t)

    def round_record(self, cfg, t: int, clients: np.ndarray | None) -> dict:
        """What ``metrics.jsonl`` records about round t besides the trainer's keys."""
        return {}


def protocol_of(cfg) -> Protocol:
    """The protocol of the run: one its settings claim (:meth:`Protocol.claims`), else the one
    its rule (``--agg``) names."""
    for proto in PROTOCOLS.values():
        if proto.claims(cfg):
            return proto
    return PROTOCOLS.get(RULES.get(cfg.agg).protocol)
