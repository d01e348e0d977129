"""``mimic`` (Karimireddy, He, Jaggi, ICLR 2022: copy one honest worker chosen by the top
principal direction of the honest messages) and ``mimic2`` (the two-dataset layout attack of the
resampling paper, arXiv:2006.09365v1)."""
from __future__ import annotations

import torch
from torch import Tensor

from common.attacks.base import ATTACKS, Attack, AttackInput, repeat_rows
from common.data.partition import mimic2_layout
from common.errors import ConfigError
from common.params import Param

__all__ = ["mimic_power_step", "mimic_pick", "Mimic", "Mimic2"]


def mimic_power_step(honest: Tensor, mu: Tensor, z: Tensor, steps: int = 1) -> Tensor | None:
    """``steps`` power-iteration steps ``z <- normalise(sum_i (x_i - mu)(x_i - mu)^T z)``.

    Computed as ``X_c^T (X_c z)`` with X_c the centred rows (never forms the d x d matrix).
    Returns None when the centred rows are all zero along z (no direction to learn).
    """
    xc = honest - mu.unsqueeze(0)
    for _ in range(steps):
        v = xc.t() @ (xc @ z)
        nv = v.norm()
        if not torch.isfinite(nv) or nv <= 0:
            return None
        z = v / nv
    return z


def mimic_pick(honest: Tensor, z: Tensor) -> int:
    """Index of the honest row maximising ``<x_i, z>`` (first one on ties)."""
    return int(torch.argmax(honest @ z).item())


@ATTACKS.register
class Mimic(Attack):
    """Copy one honest worker, picked by the top direction of the honest messages.

    ``mimic`` (Karimireddy, He, Jaggi, "Byzantine-robust learning on heterogeneous datasets
    via bucketing", ICLR 2022; omniscient). Every Byzantine row = ``honest[i*]``.

    Warmup (the first ``warmup`` rounds this object sees): estimate the top principal direction z
    of the centred honest messages with the online power method of the paper:

    * first round: mu = mean of the honest rows, z_0 a random unit vector drawn with the
      generator (CPU), then ``z <- normalise((sum_i (x_i - mu)(x_i - mu)^T)^k z)`` with
      k = ``power_steps``;
    * later warmup rounds t = 1, 2, ...: mu <- t/(t+1) mu + 1/(t+1) mean_t (running mean), and
      ``z <- normalise(t/(t+1) z + 1/(t+1) u)``, u the power step(s) above on this round's
      messages (an online estimate of the top eigenvector of the covariance summed over rounds).

    In each warmup round the target is ``i* = argmax_i <x_i, z>`` by the current z; after warmup
    i* (a position within the rows of ``honest``) stays fixed. If a later round has fewer honest
    rows than i* + 1, the target is re-picked by z. When the centred messages carry no
    direction (h = 1 or identical rows) z is left unchanged.

    Parameters: ``warmup`` (default 1, >= 1), ``power_steps`` (default 3, >= 1).
    ``info = {"target": i*}``; ``state_dict`` holds z, mu, i* and the rounds seen. The state is
    updated whenever honest messages are given, even with b = 0, so every replica stays in sync.
    """

    name = "mimic"
    reads_own = False
    omniscient = True
    params = (Param("warmup", int, 1, "rounds spent estimating the direction to copy", low=1),
              Param("power_steps", int, 3, "power-iteration steps per warmup round", low=1))

    def _setup(self, warmup: int, power_steps: int) -> None:
        self.warmup, self.power_steps = warmup, power_steps
        self.t = 0
        self.z: Tensor | None = None
        self.mu: Tensor | None = None
        self.target: int | None = None

    def _update(self, honest: Tensor, generator: torch.Generator) -> None:
        x = honest.detach().to(torch.float32)
        mean = x.mean(dim=0)
        if self.t == 0 or self.z is None or self.mu is None:
            self.mu = mean
            z0 = torch.randn(x.shape[1], generator=generator, dtype=torch.float32)
            n0 = z0.norm()
            z0 = z0 / n0 if n0 > 0 else z0
            z0 = z0.to(x.device)
            u = mimic_power_step(x, self.mu, z0, self.power_steps)
            self.z = z0 if u is None else u
        else:
            t = self.t
            mu = self.mu.to(x.device)
            z = self.z.to(x.device)
            mu = t / (t + 1) * mu + mean / (t + 1)
            u = mimic_power_step(x, mu, z, self.power_steps)
            if u is not None:
                z = t / (t + 1) * z + u / (t + 1)
                nz = z.norm()
                if nz > 0:
                    z = z / nz
            self.mu, self.z = mu, z
        self.target = mimic_pick(x, self.z)

    def craft(self, inp: AttackInput, out: Tensor | None = None) -> Tensor:
        self.info = {}
        own = self._check_own(inp)
        b, d = own.shape
        if b == 0 and inp.honest is None:
            return own.new_empty((0, d))
        honest = self._honest(inp)
        if self.t < self.warmup:
            self._update(honest, inp.generator)
        elif self.target is None or self.target >= honest.shape[0]:
            z = self.z.to(device=honest.device, dtype=torch.float32)
            self.target = mimic_pick(honest.to(torch.float32), z)
        self.t += 1
        self.info = {"target": int(self.target)}
        if b == 0:
            return own.new_empty((0, d))
        return repeat_rows(honest[self.target], b, own, out)

    def state_dict(self) -> dict:
        return {
            "t": self.t,
            "target": self.target,
            "z": None if self.z is None else self.z.detach().cpu().clone(),
            "mu": None if self.mu is None else self.mu.detach().cpu().clone(),
        }

    def load_state_dict(self, d: dict) -> None:
        self.t = int(d.get("t", 0))
        tgt = d.get("target")
        self.target = None if tgt is None else int(tgt)
        z, mu = d.get("z"), d.get("mu")
        self.z = None if z is None else torch.as_tensor(z, dtype=torch.float32).clone()
        self.mu = None if mu is None else torch.as_tensor(mu, dtype=torch.float32).clone()


@ATTACKS.register
class Mimic2(Attack):
    """The two-dataset layout attack: the Byzantine workers hold dataset A and send its gradient.

    ``mimic2``: the two-dataset layout attack of the resampling paper
    (Karimireddy, He, Jaggi 2020, arXiv:2006.09365v1).

    The data layout does the work: half the honest workers share dataset A, the other half
    dataset B, and the Byzantine workers also hold A (``common/partition.py``:
    ``mimic2_layout``). The Byzantine workers then behave honestly -- ``craft`` returns ``own``,
    the gradient of A -- which tips the majority to A so that median-like rules sit on A and
    ignore B. Needs no honest messages (``omniscient = False``). No parameters.
    """

    name = "mimic2"


    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.byz_schedule != "fixed":
            raise ConfigError("mimic2 changes the data layout; it needs --byz-schedule fixed")

    @classmethod
    def data_layout(cls, labels, num_honest, f, num_classes, generator):
        honest, byz = mimic2_layout(labels, num_honest, num_classes, generator)
        return list(honest) + [byz] * f
