"""Federated mode: K local SGD steps per client and a seeded sample of m of the n clients per
round (FedAvg, McMahan et al., AISTATS 2017), with Byzantine clients and any rule of the gradient
protocol after any pre-aggregator chain, or FLTrust (its reference is then the server's own
update on its root set: :mod:`common.protocols.fltrust`).

Round t. The server draws the round's participants, m of the n clients without replacement
(:func:`sample_clients`, keyed by (seed, t): the same on every rank and after a resume), or
takes all n. Every participant i starts from the global model x and takes K SGD steps on
minibatches of its own data (step k draws afresh, keyed by (seed, t, k, i)), with the local
learning rate eta_l(t) and its local momentum buffer v_i (``--momentum-style``; kept across the
rounds the client takes part in, in the checkpoint; a client sitting a round out keeps it; with
beta = 0 it holds the client's last gradient at a global model)::

    v_i <- beta v_i + g_i(x_i^k)            (ema: beta v_i + (1 - beta) g_i(x_i^k))
    delta_i <- delta_i + eta_l v_i,          x_i^(k+1) = x - delta_i      (delta_i starts at 0)

and sends its update ``delta_i = x - x_i^K`` (the pseudo-gradient), accumulated as above. The
server runs the chain and the rule on the m deltas, assuming f Byzantine rows among them
(``--defense-f``; default ceil(m f_true / n), the Byzantine clients' share of the sample), and
steps ``x <- x - eta_s (agg + lambda x)`` (``--weight-decay`` lambda, ``--server-momentum``
as in the gradient protocol). Non-participants compute nothing and send nothing: under MPI a
rank none of whose clients is drawn idles that round (no message, no fault).

Settings: ``--local-steps`` K (default 1), ``--local-lr`` (default ``--lr``; ``--lr-schedule``
scales it round by round), ``--local-momentum`` beta (default ``--momentum``), ``--server-lr``
eta_s (default 1: the new model is the aggregate of the client models, FedAvg), and
``--clients-per-round`` m or ``--participation`` p (m = round(p n)); any of them given selects
this protocol (:meth:`Federated.claims`).

K = 1 and the gradient protocol. With K = 1 the delta is ``eta_l v_i``: client i's momentum
message of the gradient protocol (its gradient when beta = 0) times eta_l, computed by the same
code on the same batch (step 0 of round t is the gradient protocol's batch of round t). So with
full participation the step is ``x - eta_s (agg(eta_l v) + lambda x)``, which is the gradient
protocol's ``x - lr (agg(v) + lambda x)`` with lr = eta_s eta_l for every rule that commutes
with a positive scale (mean, cm, trmean, krum, multikrum, bulyan, nnm, bucketing, ...) up to
float rounding, while rules with absolute thresholds (cclip's tau, clip:C, rfa's nu) see
messages eta_l times the gradients. At ``--local-lr 1 --server-lr LR`` the delta *is* the
momentum message and the run is the gradient protocol's run at ``--lr LR`` bit for bit, for
every rule (tests/test_federated.py).

Attacks act on the deltas: message attacks transform the Byzantine clients' own deltas or craft
from the round's usable honest deltas (omniscient ones see the sampled honest clients only);
data attacks (labelflip, backdoor) poison every local step's batch; backdoor's ``scale``
multiplies the delta (model replacement, Bagdasaryan et al. 2020). The attack is built for the
rows the server sees: m rows, ceil(m f_true / n) Byzantine (ALIE's default z).

Vectorised: step 0 is at the shared global model, so the group's gradient path runs it as in
the gradient protocol (one linear pass, one vmap or the loop) straight into the momentum rows;
steps 1..K-1 are at per-client parameters (:meth:`worker.group.WorkerGroup.local_steps`): for
the Linear/ReLU models the linear path generalised to per-client weights (one ``baddbmm`` per
layer for all clients, the update fused into the weight gradient's product:
:mod:`common.compute.linear_steps`), else one ``vmap`` of ``functional_call`` over the stacked
(m, d) parameters, or the per-client loop where the model's path is the loop (convolutions on
CPU). ``bench/rounds.py --part local`` measures them against a plain per-client loop.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from common.aggregation.rules import RULES
from common.errors import ConfigError, require
from common.protocols.base import PROTOCOLS, Clients, Protocol
from common.protocols.gradient import Gradient
from common.rows import put_rows, take_rows
from common.run.schedule import learning_rate
from common.seeding import round_rng

__all__ = ["Federated", "FEDERATED", "LocalClients", "federated", "check_federated",
           "sample_clients", "local_lr", "local_momentum", "server_lr"]


def federated(cfg) -> bool:
    """Whether any federated setting differs from its default (federated mode is on)."""
    return (cfg.local_steps != 1 or cfg.clients_per_round != 0 or cfg.local_lr is not None
            or cfg.local_momentum is not None or cfg.server_lr is not None)


def check_federated(cfg) -> None:
    """ConfigError naming the flag for a federated setting out of its range."""
    n = cfg.num_workers
    require(cfg.local_steps >= 1, f"--local-steps must be >= 1, got {cfg.local_steps}")
    require(cfg.local_lr is None or cfg.local_lr > 0,
            f"--local-lr must be a positive number, got {cfg.local_lr}")
    require(cfg.server_lr is None or cfg.server_lr > 0,
            f"--server-lr must be a positive number, got {cfg.server_lr}")
    require(cfg.local_momentum is None or 0 <= cfg.local_momentum < 1,
            f"--local-momentum must be in [0, 1), got {cfg.local_momentum}")
    require(0 <= cfg.clients_per_round <= n,
            f"--clients-per-round must be in [1, n = {n}] (0: every client), got "
            f"{cfg.clients_per_round}")


def sample_clients(seed: int, t: int, n: int, m: int) -> np.ndarray:
    """The m distinct clients of round t, sorted: a uniform draw without replacement keyed by
    (seed, t), so every process, and a resumed run, draws the same."""
    return np.sort(round_rng(seed, t, "clients").choice(n, size=m, replace=False))


def local_lr(cfg, t: int) -> float:
    """eta_l of round t: ``--local-lr`` (default ``--lr``) times the lr schedule's factor."""
    lr = learning_rate(cfg, t)
    return lr if cfg.local_lr is None else cfg.local_lr * (lr / cfg.lr)


def local_momentum(cfg) -> float:
    """The clients' momentum beta: ``--local-momentum``, default ``--momentum``."""
    return cfg.momentum if cfg.local_momentum is None else cfg.local_momentum


def server_lr(cfg) -> float:
    """eta_s: ``--server-lr``, default 1."""
    return 1.0 if cfg.server_lr is None else cfg.server_lr


class LocalClients(Clients):
    """A worker group's clients training locally; ``rows``: the group-local client of each row
    of the last round's messages."""

    def __init__(self, group) -> None:
        super().__init__(group)
        self.rows = torch.arange(group.k, device=group.device)

    def compute(self, params: Tensor, t: int, byz: Tensor,
                active: Tensor | None = None) -> Tensor:
        """The (m, d) deltas of the group's participants (``active``; None: all k)."""
        g = self.group
        rows = self.rows = (torch.arange(g.k, device=g.device) if active is None
                            else active.nonzero().flatten())
        bad = byz[rows]
        out = torch.empty(len(rows), g.flat.dim, device=g.device)
        losses = torch.full((len(rows),), math.nan)   # skipped clients report no loss
        h = g.rows_to_compute(bad)
        out[h:] = 0                                   # skipped: the attack overwrites them
        if h:
            losses[:h] = self.train(params, t, rows[:h], bad[:h], out[:h])
        g.losses = losses
        if g.upload is not None:   # e.g. the noisy median: keyed by the client, not the row
            for j in (~bad).nonzero().flatten().tolist():
                g.upload(out[j:j + 1], [0], t, g.ids.start + int(rows[j]), g.cfg.run_seed)
        if bad.any() and not g.attack.omniscient:
            g.attack_rows(out, bad.nonzero().flatten(), None, t)
        return out

    def train(self, params: Tensor, t: int, rows: Tensor, bad: Tensor, out: Tensor) -> Tensor:
        """K local steps of the group-local clients ``rows`` (sorted; ``bad``: their Byzantine
        mask) from the global model ``params``: ``out`` (len(rows), d) <- their deltas, their
        momentum rows updated. Returns the losses of step 0 (at the global model)."""
        g, cfg = self.group, self.group.cfg
        h = len(rows)
        prefix = int(rows[-1]) == h - 1        # the first h clients: their momenta are a view
        v = g.momenta[:h] if prefix else take_rows(g.momenta, rows)
        drawn = None if h == g.k else rows
        beta, ema, lr = local_momentum(cfg), cfg.momentum_style == "ema", local_lr(cfg, t)
        x, y = g.round_batches(t, bad, 0, drawn)
        g.grads_into(params, x, y, v, beta, ema)   # at the shared model: the group's fast path
        losses = g.losses
        if cfg.local_steps == 1:
            torch.mul(v, lr, out=out)              # delta = lr v, exactly
        else:
            torch.add(params.unsqueeze(0), v, alpha=-lr, out=out)  # out: the clients' models
            steps = [g.round_batches(t, bad, k, drawn) for k in range(1, cfg.local_steps)]
            g.local_steps(out, v, torch.stack([s[0] for s in steps]),
                          torch.stack([s[1] for s in steps]), beta, ema, lr)
            torch.sub(params.unsqueeze(0), out, out=out)          # delta = x - x_local
        if not prefix:
            put_rows(g.momenta, rows, v)
        return losses

    def craft(self, own: Tensor, honest: Tensor | None, t: int, rows: Tensor,
              out: Tensor | None = None) -> Tensor:
        """The attack on the message rows ``rows``, keyed by their clients."""
        return self.group.attack_craft(own, honest, t, self.rows[rows.to(self.rows.device)], out)


class Federated(Gradient):
    """Client updates after K local steps, m sampled clients per round (any federated flag).

    The updates go to any rule of the gradient protocol after any chain, or to FLTrust."""

    name = "federated"

    def claims(self, cfg) -> bool:
        return federated(cfg)

    @staticmethod
    def inner(cfg) -> Protocol:
        """The protocol the run's rule names (gradient, or fltrust: its root set and server)."""
        return PROTOCOLS.get(RULES.get(cfg.agg).protocol)

    def validate(self, cfg, chain) -> None:
        rule, inner = RULES.get(cfg.agg), self.inner(cfg)
        if not isinstance(inner, Gradient) or inner.has_startup:
            raise ConfigError(f"federated mode (--local-steps, --local-lr, --local-momentum, "
                              f"--server-lr, --clients-per-round) sends client updates to the "
                              f"rules of the gradient protocol and fltrust; --agg {rule.name} "
                              f"runs the {rule.protocol} protocol")
        m, n = cfg.participants, cfg.num_workers
        require(cfg.f < m, f"the defense assumes f = {cfg.f} Byzantine rows among the m = {m} "
                "clients of a round; --defense-f must be below m")
        require(m == n or not rule.per_worker, f"{rule.name} needs a message from every client "
                f"every round; with --clients-per-round {m} < n = {n} it sees a sample")
        super().validate(cfg, chain)   # the rule's precondition at m rows (after the chain)

    def clients(self, group) -> LocalClients:
        return LocalClients(group)

    def momentum(self, cfg) -> float:
        return local_momentum(cfg)

    def reserved_samples(self, cfg, n_train: int) -> Tensor | None:
        return self.inner(cfg).reserved_samples(cfg, n_train)

    def server_rule(self, cfg, problem, device, params, n_in):
        return self.inner(cfg).server_rule(cfg, problem, device, params, n_in)

    def participants(self, cfg, t: int) -> np.ndarray | None:
        m, n = cfg.participants, cfg.num_workers
        return None if m == n else sample_clients(cfg.run_seed, t, n, m)

    def step_size(self, cfg, t: int) -> float:
        return server_lr(cfg)

    def round_record(self, cfg, t: int, clients: np.ndarray | None) -> dict:
        out: dict = {"local_lr": local_lr(cfg, t)}
        if clients is not None:
            out["clients"] = clients.tolist()
        return out


FEDERATED = PROTOCOLS.register(Federated())
