"""FLTrust (X. Cao, M. Fang, J. Liu, N. Z. Gong, "FLTrust: Byzantine-robust Federated Learning
via Trust Bootstrapping", NDSS 2021): the server's own gradient on a small root dataset bootstraps
trust in the clients' messages.

The server holds ``--root-size`` training samples, drawn once from the training set with the run
seed (:func:`root_indices`) and left out of every worker's shard
(:meth:`FLTrust.reserved_samples`): no worker ever holds them. Each round the server computes
its reference g0 at the current model: the gradient of the mean cross-entropy over the whole root
set, carried through the same momentum as the workers' (``--momentum``, ``--momentum-style``), so
that g0 and the messages it judges are the same kind of vector. Then (:func:`fltrust`)

    TS_i = ReLU(cos(x_i, g0)),     out = sum_i TS_i (||g0|| / ||x_i||) x_i / sum_j TS_j

(zero when every trust score is zero). Rank 0 computes g0 in one process and under MPI alike:
every process builds the same problem, data included, so nothing crosses the wire.

In federated mode (:mod:`common.protocols.federated`) the messages are the clients' updates
x - x_local after K local steps, and so is the reference, as in the paper: g0 = x - x_K after
``--local-steps`` K steps of the server on its root set (the whole root set each step) at the
clients' local learning rate and momentum (:meth:`FLTrustServer.local_update`).

Diagnostics per round (``metrics.jsonl``, key ``rule``): ``trust`` per row (4 significant
digits), ``trusted`` (rows of positive trust) and ``g0_norm``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.preagg.clipping import row_norms
from common.aggregation.rules import RULES, Rule
from common.aggregation.tensors import check_matrix, safe_norm, weighted_sum
from common.compute.paths import choose_path
from common.errors import require
from common.params import Param
from common.protocols.base import PROTOCOLS
from common.protocols.diversefl import GuidingGradients
from common.protocols.federated import federated, local_lr, local_momentum
from common.protocols.gradient import Gradient
from common.seeding import round_generator

__all__ = ["trust_weights", "fltrust", "root_indices", "FLTrustRule", "FLTrustServer", "FLTrust",
           "FLTRUST"]


def trust_weights(x: Tensor, g0: Tensor) -> tuple[Tensor, Tensor]:
    """(weights, trust scores), both (n,) float64 on the CPU, with ``fltrust(x, g0) = sum_i
    w_i x_i``: ``TS_i = max(0, cos(x_i, g0))`` and ``w_i = TS_i ||g0|| / (||x_i|| sum_j TS_j)``.
    A zero row, or a zero g0, has trust 0; all weights are 0 when no row has positive trust."""
    check_matrix(x)
    norms = row_norms(x).double().cpu()
    n0 = float(safe_norm(g0.double()))
    dots = (x @ g0.to(x.dtype)).double().cpu()
    if not bool(torch.isfinite(dots).all()):  # huge finite rows: float64, one row at a time
        g64 = g0.double()
        dots = torch.stack([torch.dot(r.double(), g64) for r in x]).cpu()
    ok = (norms > 0) & torch.isfinite(norms) & (n0 > 0)
    cos = torch.where(ok, dots / (norms.clamp(min=1e-300) * max(n0, 1e-300)), 0.0)
    trust = cos.clamp(0.0, 1.0)
    total = float(trust.sum())
    if total == 0.0:
        return torch.zeros_like(trust), trust
    return torch.where(ok, trust * n0 / (norms.clamp(min=1e-300) * total), 0.0), trust


def fltrust(x: Tensor, g0: Tensor) -> Tensor:
    """FLTrust's aggregate.

    Formula: ``sum_i TS_i (||g0|| / ||x_i||) x_i / sum_j TS_j`` with ``TS_i = ReLU(cos(x_i,
    g0))`` (zero when all TS_i are zero). Parameters: x -- (n, d) messages; g0 -- (d,) the
    server's reference gradient. No precondition on f: trust comes from g0, so it tolerates any
    number of Byzantine rows as long as g0 is honest. The output's norm is at most ||g0||.
    Reference: Cao et al., NDSS 2021.
    """
    w, _ = trust_weights(x, g0)
    return weighted_sum(w.to(x.device), x)


def root_indices(cfg, n_train: int) -> Tensor:
    """The training-set indices of the server's root set: a seeded draw of ``--root-size``."""
    size = cfg.rule_values["root_size"]
    require(size < n_train, f"--root-size {size} leaves no training data for the workers "
            f"({n_train} training samples); use at most {n_train - 1}")
    g = round_generator(cfg.run_seed, 0, "fltrust-root")
    return torch.randperm(n_train, generator=g)[:size].sort().values


class FLTrustServer:
    """The server's FLTrust rule (``rule(x, honest, f=..., workers=...)``): g0 at the server's
    live parameters (``params`` is updated in place by the server's step), then :func:`fltrust`.
    State: g0's momentum buffer. ``round``: the round being aggregated (the server sets it)."""

    name = "fltrust"
    stateful = True

    def __init__(self, cfg, problem, device: torch.device, params: Tensor) -> None:
        self.cfg, self.params = cfg, params
        idx = root_indices(cfg, len(problem.dataset.y_train))
        ds = problem.dataset
        root = (ds.x_train[idx].to(torch.float32), ds.y_train[idx].to(torch.int64))
        self.reference = GuidingGradients(problem, [root], choose_path(cfg, problem.model), device)
        self.buf: Tensor | None = None
        self.info: dict = {}
        self.round = 0

    def g0(self) -> Tensor:
        """This round's reference: the root-set gradient through the workers' momentum (in
        federated mode: :meth:`local_update`)."""
        if federated(self.cfg):
            return self.local_update()
        return self._momentum(self.reference(self.params)[0], self.cfg.momentum)

    def _momentum(self, g: Tensor, beta: float) -> Tensor:
        """The buffer after ``buf <- beta buf + g`` (ema: ``beta buf + (1 - beta) g``); g if
        beta is 0."""
        if not beta:
            return g
        if self.buf is None:
            self.buf = torch.zeros_like(g)
        if self.cfg.momentum_style == "ema":
            self.buf.lerp_(g, 1.0 - beta)
        else:
            self.buf.mul_(beta).add_(g)
        return self.buf

    def local_update(self) -> Tensor:
        """The server's update as a client computes its own: K SGD steps on the root set from
        the global model at the clients' local lr of this round and their momentum (the
        buffer carried across rounds); ``x - x_K``."""
        lr, beta = local_lr(self.cfg, self.round), local_momentum(self.cfg)
        theta = self.params.clone()
        for _ in range(self.cfg.local_steps):
            theta.sub_(self._momentum(self.reference(theta)[0], beta), alpha=lr)
        return self.params - theta

    def __call__(self, x: Tensor, honest: Tensor | None = None, f: int | None = None,
                 workers: Tensor | None = None, generator=None) -> Tensor:
        g0 = self.g0().to(x.device)
        w, trust = trust_weights(x, g0)
        self.info = {"trust": [float(f"{v:.4g}") for v in trust.tolist()],
                     "trusted": int((trust > 0).sum()),
                     "g0_norm": float(f"{float(safe_norm(g0.double())):.4g}")}
        return weighted_sum(w.to(x.device), x)

    def state_dict(self) -> dict:
        return {"buf": None if self.buf is None else self.buf.cpu().clone()}

    def load_state_dict(self, d: dict) -> None:
        buf = d.get("buf")
        self.buf = None if buf is None else buf.to(self.params.device).clone()


@RULES.register
class FLTrustRule(Rule):
    """FLTrust: messages weighted by ReLU(cos) with the server's root-set gradient g0 and
    rescaled to ||g0||; needs no bound on f."""

    name = "fltrust"
    protocol = "fltrust"
    tensor_rule = False
    stateful = True
    params = (Param("root_size", int, 100, "training samples the server holds as its root set "
                    "(the paper's 100; never any worker's)", low=1, key="root_size"),)


class FLTrust(Gradient):
    """Gradient messages judged against the server's own gradient on its root set (in
    federated mode: updates against its own update)."""

    name = "fltrust"

    def reserved_samples(self, cfg, n_train: int) -> Tensor:
        return root_indices(cfg, n_train)

    def server_rule(self, cfg, problem, device, params, n_in) -> FLTrustServer:
        return FLTrustServer(cfg, problem, device, params)


FLTRUST = PROTOCOLS.register(FLTrust())
