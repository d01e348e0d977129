"""Schedules: the learning rate per round, and who is Byzantine in each round.

Both are pure functions of the config and the round (the Markov schedule also of its small
state), so the server, every worker process and a resumed run agree without talking.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from common.seeding import round_rng

if TYPE_CHECKING:
    from common.run.config import Config

LR_SCHEDULES = ("constant", "sqrt", "step", "warmup")
BYZ_SCHEDULES = ("fixed", "random", "markov")


def learning_rate(cfg: Config, t: int) -> float:
    """Learning rate of round ``t`` (0-based).

    constant: lr; sqrt: lr / sqrt(t + 1) (DiverseFL's 0.001/sqrt(r) with r = t + 1);
    step: lr * gamma^(number of milestones <= t); warmup: linear from warmup_start to lr over
    warmup_rounds, then lr (then step decay if milestones are given).
    """
    if cfg.lr_schedule == "sqrt":
        return cfg.lr / math.sqrt(t + 1)
    lr = cfg.lr
    if cfg.lr_schedule == "warmup" and t < cfg.warmup_rounds:
        return cfg.warmup_start + (cfg.lr - cfg.warmup_start) * t / cfg.warmup_rounds
    if cfg.lr_schedule in ("step", "warmup") and cfg.lr_milestones:
        lr *= cfg.lr_gamma ** sum(1 for m in cfg.lr_milestones if t >= m)
    return lr


class ByzantineSchedule:
    """Which workers are Byzantine in each round.

    fixed: the last f workers (as in the bucketing code); random: f workers drawn uniformly
    every round (DiverseFL); markov: a persistent schedule (DiverseFL's backdoor): an honest
    worker turns Byzantine with probability p and stays Byzantine for k rounds (the round it
    turns and the k - 1 after), then is honest again and may turn in the next round. At most f
    workers are Byzantine at once (f is the attacker's budget): when more workers draw a turn
    than there are free slots, a uniformly random subset of them turns. Without the cap,
    p = 0.5 and k = 5 would make k p / (k p + 1 - p) = 5/6 of all workers Byzantine.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.n, self.f = cfg.num_workers, cfg.num_byzantine
        self.remaining = np.zeros(self.n, dtype=np.int64)  # markov: Byzantine rounds left
        self.last_round = -1

    def mask(self, t: int) -> np.ndarray:
        """Boolean (n,) mask of the Byzantine workers in round t (call once per round, in order)."""
        kind = self.cfg.byz_schedule
        mask = np.zeros(self.n, dtype=bool)
        if self.f == 0:
            return mask
        if kind == "fixed":
            mask[self.n - self.f:] = True
        elif kind == "random":
            rng = round_rng(self.cfg.run_seed, t, "byzantine")
            mask[rng.choice(self.n, size=self.f, replace=False)] = True
        else:
            assert t == self.last_round + 1, "the markov schedule advances one round at a time"
            rng = round_rng(self.cfg.run_seed, t, "byzantine")
            turn = (self.remaining == 0) & (rng.random(self.n) < self.cfg.markov_p)
            slots = self.f - int((self.remaining > 0).sum())
            order = rng.permutation(self.n)
            turning = order[turn[order]][:max(slots, 0)]
            self.remaining[turning] = self.cfg.markov_k
            mask = self.remaining > 0
            self.remaining[mask] -= 1
        self.last_round = t
        return mask

    def state_dict(self) -> dict:
        return {"remaining": self.remaining.tolist(), "last_round": self.last_round}

    def load_state_dict(self, d: dict) -> None:
        self.remaining = np.asarray(d["remaining"], dtype=np.int64)
        self.last_round = int(d["last_round"])
