"""The sign protocol: election-coded signSGD (Sohn, Han, Choi, Moon, NeurIPS 2020).

Each round the master's global minibatch of B = ``--batch_size`` samples is cut into n slices
of ``s = B // n`` samples (the remainder ``B mod n`` is not used; e.g. B = 120, n = 5: 24 per
slice). Node j computes the gradient of every slice k with ``G[j, k] = 1`` (the allocation
matrix of :func:`common.coding.make_code`), takes its sign and sends the local majority
``sign(sum_k sign(g_k))`` (:func:`common.coding.node_votes`), bit-packed
(:class:`common.wire.formats.VoteWire`). Byzantine nodes send the attack applied to their own
vote (``reverse``: minus it, ``directional``: all -1, ``random``: uniform +-1). The master takes
``sign(sum_j vote_j)`` (ties give 0) and steps with momentum and weight decay at the master
(``--server-momentum 0.9 --weight-decay 1e-4`` by default): ``buf <- m buf + (vote + lambda
x)``, ``x <- x - lr buf``.

Sampling. The paper draws the global minibatch iid from the whole training set (a shuffled
data loader; the master assigns slices to nodes per G), so the batch of round t is samples
``t*B .. t*B + B-1`` of an endless sequence of epochs, each a fresh permutation of the training
set keyed by (run seed, epoch); ``--partition`` does not apply. Every group draws the same
sequence, so a node's vote does not depend on which process hosts it.

``--agg signmv`` selects the protocol, and so do ``--redundancy`` or ``--deterministic``
without ``--agg`` (the seed's commands, which name no rule).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from common.attacks import ATTACKS
from common.coding import deterministic_code, make_code, node_votes
from common.data.partition import parse_scheme
from common.errors import require
from common.protocols.base import PROTOCOLS, Clients, Protocol
from common.seeding import round_generator
from common.wire.formats import VoteWire

__all__ = ["Sign", "SIGN", "SIGN_DEFAULTS", "code_for", "CodedClients", "MajorityVote"]


def code_for(cfg) -> np.ndarray:
    """The run's (n, n) allocation matrix: the same on every rank (Bernoulli: seeded by run seed)."""
    return make_code(cfg.num_workers, cfg.rule_values["redundancy"],
                     cfg.rule_values["deterministic"], cfg.run_seed)


class CodedClients(Clients):
    """The election-coded nodes of a worker group.

    The group computes each slice gradient its nodes need once (one batched call over the
    slices, or a loop for convolutional models: ``group.gradients``), and :meth:`compute`
    returns the nodes' packed votes as a (k, width) uint8 stack.
    """

    def __init__(self, group) -> None:
        super().__init__(group)
        cfg, ids = group.cfg, group.ids
        self.G = code_for(cfg)
        self.wire: VoteWire = group.wire
        rows = self.G[ids.start:ids.stop]
        self.slices = np.flatnonzero(rows.any(axis=0))          # slices this group computes
        self.local_G = torch.as_tensor(rows[:, self.slices], dtype=torch.float32,
                                       device=group.device)
        self.slice_size = cfg.batch_size // cfg.num_workers
        self._perm: tuple[int, Tensor] | None = None

    def _epoch_perm(self, epoch: int) -> Tensor:
        g = self.group
        if self._perm is None or self._perm[0] != epoch:
            gen = round_generator(g.cfg.run_seed, epoch, "coded_epoch")
            self._perm = (epoch, torch.randperm(len(g.y), generator=gen).to(g.device))
        return self._perm[1]

    def slice_indices(self, t: int) -> Tensor:
        """(n, s) training-set indices of the n slices of round t's global minibatch."""
        g = self.group
        n, B, s = g.cfg.num_workers, g.cfg.batch_size, self.slice_size
        N = len(g.y)
        pos = torch.arange(t * B, t * B + n * s)
        epochs, within = pos // N, pos % N
        idx = torch.empty(n * s, dtype=torch.long, device=g.device)
        for e in epochs.unique().tolist():
            sel = epochs == e
            idx[sel.to(g.device)] = self._epoch_perm(e)[within[sel].to(g.device)]
        return idx.view(n, s)

    def votes(self, params: Tensor, t: int, byz: Tensor) -> Tensor:
        """(k, d) float votes of the group's nodes in round t (Byzantine rows attacked)."""
        g = self.group
        idx = self.slice_indices(t)[torch.as_tensor(self.slices, device=g.device)]
        grads = g.gradients(params, g.x[idx], g.y[idx])                 # (m, d), m slices
        slice_losses = g.losses.to(self.local_G.device)
        g.losses = ((self.local_G @ slice_losses) / self.local_G.sum(1)).cpu()
        v = node_votes(torch.sign(grads), self.local_G)                 # ties give 0
        for j, node in enumerate(g.ids):
            if self.wire.bits[node] == 1:
                zero = v[j] == 0
                if zero.any():  # an exactly-zero slice gradient coordinate: a fair coin
                    gen = round_generator(g.cfg.run_seed, t, "vote_tiebreak", node)
                    coin = torch.randint(0, 2, (v.shape[1],), generator=gen).to(v) * 2 - 1
                    v[j] = torch.where(zero, coin, v[j])
        if byz.any():
            g.attack_rows(v, byz.nonzero().flatten(), None, t)
        return v

    def compute(self, params: Tensor, t: int, byz: Tensor,
                active: Tensor | None = None) -> Tensor:
        """The group's (k, width) uint8 stack of packed votes for round t."""
        return self.wire.stack(self.pack_all(self.votes(params, t, byz).cpu()))

    def pack_all(self, votes: Tensor) -> list[np.ndarray]:
        """Each node's packed buffer (what an MPI rank sends, one buffer per node)."""
        return [self.wire.pack(votes[j], node) for j, node in enumerate(self.group.ids)]


class MajorityVote:
    """The master's majority vote over the (n, width) uint8 stack of packed votes:
    ``rule(stack, honest) -> sign(sum_j vote_j)`` (counted by :meth:`VoteWire.tally`).

    info: ``margin`` (mean |sum_j vote_j| / n over coordinates: how decided the vote was),
    plus ``abstained``/``invalid`` node lists when some vote could not be used.
    """

    name = "signmv"
    stateful = False

    def __init__(self, wire: VoteWire, n: int) -> None:
        self.wire, self.n = wire, n
        self.info: dict = {}

    def __call__(self, x: Tensor, honest: Tensor | None = None, f: int | None = None,
                 workers: Tensor | None = None, generator=None) -> Tensor:
        total, info = self.wire.tally(x)
        info["margin"] = float(total.abs().mean()) / self.n
        self.info = info
        return torch.sign(total)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Stateless: the momentum buffer is the server's."""

# Flags not given take the coding paper's setting. On the default data (digits, MLP) lr 1e-4
# barely moves a sign update in 150 rounds, so it uses lr 1e-3 (with master momentum 0.9 every
# coordinate moves up to 1e-2 per round); CIFAR-10 gets the paper's ResNet-18 schedule.
SIGN_DEFAULTS: dict[str, Any] = dict(attack="reverse", pre="none", partition="iid", momentum=0.0,
                                     server_momentum=0.9, weight_decay=1e-4, lr=1e-3)


class Sign(Protocol):
    """Bit-packed sign votes of election-coded nodes; the master's majority vote."""

    name = "sign"
    selected_by = ("redundancy", "deterministic")
    default_rule = "signmv"

    def defaults(self, values: dict[str, Any], given: set[str]) -> None:
        d = dict(SIGN_DEFAULTS)
        if values["dataset"] == "cifar10":
            # Paper: ResNet-18, lr 1e-4, 100 epochs, x0.1 at epochs 40/80 (n = 15: 20/40/80).
            per_epoch = math.ceil(50000 / max(1, values["batch_size"]))
            epochs = (20, 40, 80) if values["num_workers"] >= 15 else (40, 80)
            d.update(model="resnet18", lr=1e-4, rounds=100 * per_epoch, lr_schedule="step",
                     lr_milestones=tuple(e * per_epoch for e in epochs), lr_gamma=0.1,
                     eval_every=per_epoch)
        for k, v in d.items():
            if k not in given:
                values[k] = v

    def validate(self, cfg, chain) -> None:
        n, agg = cfg.num_workers, cfg.agg
        r = cfg.rule_values["redundancy"]
        require(1 <= r <= n, f"--redundancy r (ones in the allocation matrix / n) must be in [1, n] "
             f"= [1, {n}], got {r:g}")
        if cfg.rule_values["deterministic"]:
            deterministic_code(n, r)  # ConfigError listing the known codes
        require(not chain.stages, f"--agg {agg} counts packed sign votes; pre-aggregation does "
             "not apply: use --pre none")
        require(cfg.momentum == 0, f"--agg {agg}: nodes vote with fresh slice gradients and the "
             "momentum lives at the master: use --momentum 0 (and --server-momentum)")
        votes = [a.name for a in ATTACKS.values() if a.on_votes]
        require(ATTACKS.get(cfg.attack).on_votes, f"--agg {agg}: attack '{cfg.attack}' does not act "
             f"on sign votes; choose one of: {', '.join(votes)}")
        require(parse_scheme(cfg.partition) in (("iid", None), ("longtail", None), ("longtail", "iid")),
             f"--agg {agg} draws each round's global minibatch from the whole training set "
             f"and G assigns its slices; --partition {cfg.partition} does not apply (use iid)")
        require(cfg.batch_size >= n, f"--batch_size is the global minibatch cut into n slices; "
             f"it needs at least n = {n} samples, got {cfg.batch_size}")

    def clients(self, group) -> CodedClients:
        return CodedClients(group)

    def state_schema(self, cfg, dim: int) -> dict:
        return {}  # no worker momentum: the momentum lives at the master

    def wire(self, cfg, dim: int) -> VoteWire:
        return VoteWire(code_for(cfg), dim)

    def usable_rows(self, messages, honest, keep):
        # Every node's row stays (the wire reads row j as node j's code); an unusable one was
        # zeroed, which clears its presence flag: an abstention, what dropping it means in a vote.
        return messages, honest

    def server_rule(self, cfg, problem, device, params, n_in) -> MajorityVote:
        return MajorityVote(self.wire(cfg, problem.dim), cfg.num_workers)


SIGN = PROTOCOLS.register(Sign())
