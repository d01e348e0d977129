"""The parameter server's state and step: pre-aggregators, the protocol's rule, the optimizer step.

Both transports drive the same :class:`Server`; it never sees how messages arrived.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from common.aggregation.preagg import Chain, make_chain
from common.errors import ConfigError, one_line
from common.protocols import GRADIENT, protocol_of
from common.run.config import Config
from common.run.problem import Problem
from common.seeding import round_generator

# Compiling the sorting network costs 1-10 s once and saves about 33 ns per coordinate and round
# over the eager network (cm at (25, 1e6): 42 ms eager, 10 ms compiled): from 5e8
# coordinate-rounds the saving (~16 s) exceeds even a slow compile.
COMPILE_MIN_WORK = 5e8


def compile_rules(cfg: Config, dim: int) -> bool:
    """``--compile-rules``: whether the rule's sorting network runs compiled (see
    :mod:`common.aggregation.sortnet`); ``auto`` compiles when the run is long enough to repay it."""
    if cfg.compile_rules == "auto":
        return dim * cfg.rounds >= COMPILE_MIN_WORK
    return cfg.compile_rules == "on"


def aggregate_usable(chain: Chain, rule, messages: Tensor, honest: Tensor, f: int,
                     dropped: Sequence[int] = (), generator: torch.Generator | None = None,
                     usable_rows: Callable = GRADIENT.usable_rows,
                     rule_generator: torch.Generator | None = None,
                     clients: Sequence[int] | None = None) -> tuple[Tensor | None, dict]:
    """The chain and the rule on the round's usable messages: (update, diagnostics).

    ``dropped``: the workers whose message is unusable this round (:mod:`master.messages`).
    Their rows never reach the chain or the rule (``usable_rows``: the protocol's way to leave
    them out), which run on the others with f lowered by as many: a worker whose message is
    unusable is certainly faulty, and f bounds the faulty workers, crashed or Byzantine. When
    nothing is left, or the chain's or the rule's precondition fails on what is left, the update
    is None and ``info["skipped"]`` says why: the model does not move this round.
    ``generator`` draws the chain's randomness, ``rule_generator`` the rule's (randomized rules:
    its own stream, so the rule's draws do not depend on what the chain drew). ``clients``: the
    worker of each row when not row i = worker i (a sample of the clients); ``dropped`` and
    ``info["workers"]`` index rows."""
    workers = None if clients is None else torch.as_tensor(clients, dtype=torch.long)
    if dropped:
        gone = set(dropped)
        keep = torch.tensor([i for i in range(messages.shape[0]) if i not in gone],
                            dtype=torch.long)
        if not len(keep):
            return None, {"skipped": "no usable message"}
        messages, honest = usable_rows(messages, honest, keep)
        f, workers = max(0, f - len(gone)), keep if workers is None else workers[keep]
    try:
        x = chain(messages, generator, f)
        out = rule(x, honest=honest.to(x.device), f=f, workers=workers,
                   generator=rule_generator)
    except ConfigError as e:
        if not dropped:  # the start-up check passed on all n rows: a defect, not a fault
            raise
        return None, {"skipped": f"{len(dropped)} unusable messages dropped: {one_line(e)}"}
    info = dict(rule.info)
    if dropped:
        info["workers"] = workers.tolist()  # the worker of each row the chain saw
    if "selected" in info and len(chain):
        # Selected rows index the pre-aggregated vectors; the stages' diagnostics
        # (bucket permutation, resampling groups, NNM neighbours) map them back to workers.
        info["pre"] = chain.info
    return out, info


class Server:
    """Holds the model as a flat vector; turns a round's messages into a step (the rule is the
    run's protocol's: :meth:`common.protocols.Protocol.server_rule`).

    Step: ``x <- x - lr_t * u`` with ``u = agg + lambda x`` (weight decay at the server), or with
    server momentum ``buf <- m buf + u; u = buf`` (the signSGD master of the coding paper).
    """

    def __init__(self, cfg: Config, problem: Problem, device: torch.device) -> None:
        self.cfg, self.problem, self.device = cfg, problem, device
        n = cfg.participants  # the rows of a round's messages
        self.params = problem.init_params.clone().to(device)
        self.protocol = protocol_of(cfg)
        self.chain = make_chain(cfg.pre, n, cfg.f)
        self.rule = self.protocol.server_rule(cfg, problem, device, self.params,
                                              self.chain.out_count(n))
        self.rule.compiled = compile_rules(cfg, problem.dim)
        self.buf = torch.zeros_like(self.params) if cfg.server_momentum > 0 else None

    def aggregate(self, messages: Tensor, honest: Tensor, t: int, dropped: Sequence[int] = (),
                  clients: Sequence[int] | None = None) -> tuple[Tensor | None, dict]:
        """The robust update of round t and the rule's diagnostics (:func:`aggregate_usable`;
        ``clients``: the worker of each row, when the protocol samples them)."""
        if hasattr(self.rule, "round"):   # a rule whose server-side work follows the round
            self.rule.round = t
        return aggregate_usable(self.chain, self.rule, messages, honest, self.cfg.f, dropped,
                                round_generator(self.cfg.run_seed, t, "server"),
                                self.protocol.usable_rows,
                                round_generator(self.cfg.run_seed, t, "rule"), clients)

    def step(self, update: Tensor, t: int) -> float:
        """``x <- x - lr (update + lambda x)`` (through the server momentum buffer if any), lr
        the protocol's step size of round t; returns lr."""
        lr = self.protocol.step_size(self.cfg, t)
        u = update.to(self.params.device)
        if self.cfg.weight_decay:
            u = u + self.cfg.weight_decay * self.params
        if self.buf is not None:
            self.buf.mul_(self.cfg.server_momentum).add_(u)
            u = self.buf
        self.params.add_(u, alpha=-lr)
        return lr

    def state_dict(self) -> dict:
        return {"params": self.params.cpu(), "rule": self.rule.state_dict(),
                "buf": None if self.buf is None else self.buf.cpu()}

    def load_state_dict(self, d: dict) -> None:
        self.params.copy_(d["params"].to(self.device))
        self.rule.load_state_dict(d["rule"])
        if self.buf is not None:
            self.buf.copy_(d["buf"].to(self.device))
