"""The parameter server's state and step: pre-aggregators, the protocol's rule, the optimizer step.

Both transports drive the same :class:`Server`; it never sees how messages arrived.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.preagg import make_chain
from common.protocols import protocol_of
from common.run.config import Config
from common.run.problem import Problem
from common.run.schedule import learning_rate
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


class Server:
    """Holds the model as a flat vector; turns a round's messages into a step (the rule is the
    run's protocol's: :meth:`common.protocols.Protocol.server_rule`).

    Step: ``x <- x - lr_t * u`` with ``u = agg + lambda x`` (weight decay at the server), or with
    server momentum ``buf <- m buf + u; u = buf`` (the signSGD master of the coding paper).
    """

    def __init__(self, cfg: Config, problem: Problem, device: torch.device) -> None:
        self.cfg, self.problem, self.device = cfg, problem, device
        n = cfg.num_workers
        self.params = problem.init_params.clone().to(device)
        self.protocol = protocol_of(cfg)
        self.chain = make_chain(cfg.pre, n, cfg.f)
        self.rule = self.protocol.server_rule(cfg, problem, device, self.params,
                                              self.chain.out_count(n))
        self.rule.compiled = compile_rules(cfg, problem.dim)
        self.buf = torch.zeros_like(self.params) if cfg.server_momentum > 0 else None

    def aggregate(self, messages: Tensor, honest: Tensor, t: int) -> tuple[Tensor, dict]:
        """The robust update of round t and the rule's diagnostics."""
        g = round_generator(self.cfg.run_seed, t, "server")
        x = self.chain(messages, g)
        out = self.rule(x, honest=honest.to(x.device))
        info = dict(self.rule.info)
        if "selected" in info and len(self.chain):
            # Selected rows index the pre-aggregated vectors; the stages' diagnostics
            # (bucket permutation, resampling groups, NNM neighbours) map them back to workers.
            info["pre"] = self.chain.info
        return out, info

    def step(self, update: Tensor, t: int) -> float:
        lr = learning_rate(self.cfg, t)
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
