"""RSA, l1 variant (L. Li, W. Xu, T. Chen, G. B. Giannakis, Q. Ling, "RSA: Byzantine-Robust
Stochastic Aggregation Methods for Distributed Learning from Heterogeneous Datasets", AAAI 2019).

Every client j keeps its own model theta_j (initialised at the model's initial parameters; part
of the group's checkpoint state); the master keeps theta_M. In round t, with theta_M broadcast:

    client: theta_j <- theta_j - lr_t (grad_j(theta_j)/n + delta sign(theta_j - theta_M))
    master: theta_M <- theta_M - lr_t (lambda theta_M + delta sum_j sign(theta_M - theta_j))

where grad_j is the gradient of the mean cross-entropy on client j's minibatch at its own model
(all k gradients in one ``vmap`` call over the stacked (k, d) models, or a per-client loop for
convolutional models), and n the number of clients (ALGORITHMS.md). The client uploads its new
theta_j, so the master's step of the same round sees this round's local progress. The master's
rule returns ``delta sum_j sign(theta_M - theta_j)``; the server's step adds ``lambda theta_M``
(``--weight-decay``). A faulty upload (zeroed by the server's message policy) is one more
outlier model: each client moves the master by at most lr * delta per coordinate.

Byzantine clients: their own model follows the same update (on their possibly poisoned batch);
what they upload is the attack applied to their model's displacement from theta_M,
``theta_M + craft(theta_j - theta_M)``. So ``signflip`` uploads the reflection of theta_j about
theta_M, ``backdoor`` uploads ``theta_M + scale (theta_j - theta_M)`` (model replacement),
``labelflip`` the model trained on flipped labels, ``gaussian`` theta_M plus noise, and
omniscient attacks see the honest clients' displacements.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation.rules import RULES, Rule
from common.params import Param
from common.protocols.base import PROTOCOLS, Clients, Protocol, plain_uploads
from common.run.schedule import learning_rate

__all__ = ["RSA", "RSARule", "RSAClients", "RSAMaster", "MODEL", "rsa_client_step",
           "rsa_master_direction"]


def rsa_client_step(thetas: Tensor, grads: Tensor, theta_m: Tensor, lr: float, n: int,
                    delta: float) -> Tensor:
    """New (k, d) client models: ``theta_j - lr (grad_j / n + delta sign(theta_j - theta_M))``."""
    return thetas - lr * (grads / n + delta * torch.sign(thetas - theta_m.unsqueeze(0)))


def rsa_master_direction(theta_m: Tensor, models: Tensor, delta: float) -> Tensor:
    """``delta * sum_j sign(theta_M - theta_j)`` for the master's (d,) model and the (n, d) uploads."""
    return delta * torch.sign(theta_m.to(models.device).unsqueeze(0) - models).sum(0)


@RULES.register
class RSARule(Rule):
    """RSA: clients upload their own models; the master moves by delta sign(theta_M - theta_j)."""

    name = "rsa"
    protocol = "model"
    tensor_rule = False
    per_worker = True
    params = (Param("delta", float, 0.2635, "RSA l1 penalty delta", low=0),)


class RSAClients(Clients):
    """k RSA clients: their own models are the group's ``thetas`` state."""

    def __init__(self, group) -> None:
        super().__init__(group)
        group.state["thetas"].copy_(group.problem.init_params.to(group.device).unsqueeze(0))
        self.center = group.problem.init_params.to(group.device).clone()  # theta_M of the round

    def compute(self, params: Tensor, t: int, byz: Tensor,
                active: Tensor | None = None) -> Tensor:
        """Step every client's model against theta_M = ``params``; return the (k, d) uploads."""
        g = self.group
        self.center = params.to(g.device).clone()
        x, y = g.round_batches(t, byz)
        thetas = g.state["thetas"]
        grads = g.model_gradients(thetas, x, y)
        thetas.copy_(rsa_client_step(thetas, grads, self.center, learning_rate(g.cfg, t),
                                     g.cfg.num_workers, g.cfg.rule_values["delta"]))
        msgs = thetas.clone()
        if byz.any() and not g.attack.omniscient:
            g.attack_rows(msgs, byz.nonzero().flatten(), None, t)
        return msgs

    def craft(self, own, honest, t, rows, out=None):
        """Attacked uploads ``theta_M + craft(theta_j - theta_M)`` (attacks act on displacements)."""
        c = self.center
        moved = self.group.attack_craft(own - c, None if honest is None else honest.to(c.device) - c,
                                        t, rows)
        return moved + c if out is None else torch.add(moved, c, out=out)


class RSAMaster:
    """The master's RSA rule (``rule(x, honest)``): ``params`` is the server's live theta_M
    (updated in place by its step). info: ``mean_l1``: mean over clients of
    ||theta_M - theta_j||_1 / d (how far the uploads are)."""

    name = "rsa"
    stateful = False

    def __init__(self, delta: float, params: Tensor) -> None:
        self.delta, self.params = delta, params
        self.info: dict = {}

    def __call__(self, x: Tensor, honest: Tensor | None = None, f: int | None = None,
                 workers: Tensor | None = None, generator=None) -> Tensor:
        self.info = {"mean_l1": float((self.params.to(x.device).unsqueeze(0) - x).abs().mean())}
        return rsa_master_direction(self.params, x, self.delta)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Stateless: theta_M is the server's parameter vector."""


class RSA(Protocol):
    """Clients keep and upload their own models (RSA, l1 variant)."""

    name = "model"

    def validate(self, cfg, chain) -> None:
        # The master combines each client's own model; worker momentum is not part of RSA.
        plain_uploads(cfg, chain)

    def clients(self, group) -> RSAClients:
        return RSAClients(group)

    def state_schema(self, cfg, dim: int) -> dict:
        return {"thetas": ((dim,), torch.float32)}

    def server_rule(self, cfg, problem, device, params, n_in) -> RSAMaster:
        return RSAMaster(cfg.rule_values["delta"], params)


MODEL = PROTOCOLS.register(RSA())
