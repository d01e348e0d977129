"""RSA, l1 variant (Li et al., AAAI 2019): the clients' side. See :mod:`master.rsa` for the master.

Every client j keeps its own model theta_j (initialised at the model's initial parameters; part
of the group's checkpoint state). In round t, with the master's model theta_M broadcast:

    theta_j <- theta_j - lr_t (grad_j(theta_j)/n + delta sign(theta_j - theta_M))

where grad_j is the gradient of the mean cross-entropy on client j's minibatch at its own model
(all k gradients in one ``vmap`` call over the stacked (k, d) models, or a per-client loop for
convolutional models), and n the number of clients (ALGORITHMS.md). The client then uploads its
new theta_j, so the master's step of the same round sees this round's local progress (and this
round's data attack).

Byzantine clients: their own model follows the same update (on their possibly poisoned batch);
what they upload is the attack applied to their model's displacement from theta_M,
``theta_M + craft(theta_j - theta_M)``. So ``signflip`` uploads the reflection of theta_j about
theta_M (``2 theta_M - theta_j``: each coordinate pulls the master the other way), ``backdoor``
uploads ``theta_M + scale (theta_j - theta_M)`` (model replacement), ``labelflip`` uploads the
model trained on flipped labels, ``gaussian`` uploads theta_M plus noise, and omniscient attacks
see the honest clients' displacements.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad_and_value, vmap

from common.attacks import Attack
from common.config import Config
from common.problem import Problem
from common.schedule import learning_rate
from worker.group import WorkerGroup


def rsa_client_step(thetas: Tensor, grads: Tensor, theta_m: Tensor, lr: float, n: int,
                    delta: float) -> Tensor:
    """New (k, d) client models: ``theta_j - lr (grad_j / n + delta sign(theta_j - theta_M))``."""
    return thetas - lr * (grads / n + delta * torch.sign(thetas - theta_m.unsqueeze(0)))


class RSAGroup(WorkerGroup):
    """k RSA clients: a :class:`WorkerGroup` whose state is the clients' own models."""

    def __init__(self, cfg: Config, problem: Problem, ids: range, attack: Attack,
                 device: torch.device) -> None:
        super().__init__(cfg, problem, ids, attack, device)
        self.thetas = problem.init_params.to(device).unsqueeze(0).repeat(self.k, 1)
        self.center = problem.init_params.to(device).clone()  # theta_M of the current round
        self._vgrad_own = vmap(grad_and_value(self._loss), in_dims=(0, 0, 0))

    def model_gradients(self, thetas: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """(k, d) gradient of client j's minibatch loss at its own model ``thetas[j]``."""
        if self.path != "loop":  # per-client models: the linear path's shared layers do not apply
            grads, losses = self._vgrad_own(self.flat.views(thetas), x, y)
            self.losses = losses.detach().cpu()
            return self.flat.flatten_dict(grads, self.k)
        out = torch.empty(self.k, self.flat.dim, device=self.device)
        losses = []
        for i in range(self.k):
            self.flat.load_into(self.model, thetas[i])
            self.model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x[i]), y[i])
            loss.backward()
            self.flat.flatten_grads(self.model, out[i])
            losses.append(loss.detach())
        self.losses = torch.stack(losses).cpu()
        return out

    def compute(self, params: Tensor, t: int, byz: Tensor) -> Tensor:
        """Step every client's model against theta_M = ``params``; return the (k, d) uploads."""
        self.center = params.to(self.device).clone()
        x, y = self.round_batches(t, byz)
        g = self.model_gradients(self.thetas, x, y)
        self.thetas = rsa_client_step(self.thetas, g, self.center, learning_rate(self.cfg, t),
                                      self.cfg.num_workers, self.cfg.rsa_delta)
        msgs = self.thetas.clone()
        if byz.any() and not self.attack.omniscient:
            rows = byz.nonzero().flatten()
            self.attack_rows(msgs, rows, None, t)
        return msgs

    def craft(self, own: Tensor, honest: Tensor | None, t: int, local_rows: Tensor,
              out: Tensor | None = None) -> Tensor:
        """Attacked uploads ``theta_M + craft(theta_j - theta_M)`` (attacks act on displacements)."""
        c = self.center
        moved = super().craft(own - c, None if honest is None else honest.to(c.device) - c,
                              t, local_rows)
        return moved + c if out is None else torch.add(moved, c, out=out)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "thetas": self.thetas.cpu()}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.thetas = d["thetas"].to(self.device).clone()
