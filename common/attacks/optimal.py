"""``opt-alie`` and ``opt-ipm``: ALIE and IPM with their factor chosen each round against the
defense. Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan, "Fixing by
Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023 (as ByzFL's
``Optimal_ALittleIsEnough`` / ``Optimal_InnerProductManipulation``).

Each round the attack evaluates candidate factors s (ALIE's z: rows ``mu - s sigma``; IPM's
epsilon: rows ``-s mu``) by the distance ``||F(stack(s)) - mu||`` between what the server would
output, F its pre-aggregator chain and rule (built from the run's ``--pre``, ``--agg`` and rule
parameters through the registries), and the honest mean mu, and sends the rows of the best one.
The stack is the round's honest messages followed by the Byzantine rows (the server's order under
the fixed schedule); the chain's and the rule's randomness come from the attack's round
generator, so every Byzantine replica evaluates the same F.

The search spends ``evals`` evaluations: starting from ``start`` with step ``delta``, it moves to
``s + delta`` and doubles delta while the distance grows; at the first step that does not help it
multiplies delta by ``ratio`` and then tries ``best + delta`` with delta shrinking by ``ratio``
each time (ByzFL's expansion and contraction phases, same defaults). The chosen factor and its
distance are logged per round.

A rule that keeps a fixed-size state across rounds (CClip's center) is evaluated from the
attacker's replica of that state: it starts as the server's (the rule's initial state) and
advances each round on the honest messages and the chosen Byzantine rows, as the server's does
on the same stack; it is part of the attack's checkpointed state. Clipped Clustering (a growing
norm history) and protocols other than the gradient one (FLTrust's root gradient, signSGD, RSA,
DiverseFL) are refused at start-up.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from common.aggregation.preagg import make_chain
from common.aggregation.rules import RULES
from common.attacks.base import ATTACKS, Attack, AttackInput, Defense, repeat_rows
from common.attacks.omniscient import alie_vector, ipm_vector
from common.errors import ConfigError
from common.params import Param

__all__ = ["line_search", "defense_distance", "defense_eval", "unsupported", "OptALIE",
           "OptIPM"]


def line_search(score: Callable[[float], float], evals: int, start: float, delta: float,
                ratio: float) -> tuple[float, float]:
    """(best factor, its score) after ``evals`` calls of ``score`` (module docstring)."""
    best_x, best_y = start, score(start)
    left = evals - 1
    while left > 0:  # expansion
        x = best_x + delta
        y = score(x)
        left -= 1
        if y > best_y:
            best_x, best_y = x, y
            delta *= 2
        else:
            delta *= ratio
            break
    while left > 0:  # contraction
        x = best_x + delta
        y = score(x)
        left -= 1
        if y > best_y:
            best_x, best_y = x, y
        delta *= ratio
    return best_x, best_y


def defense_distance(defense: Defense, honest: Tensor, byz: Tensor, b: int, seed: int,
                     state: dict[str, Any] | None = None) -> float:
    """``||F([honest; b copies of byz]) - mean(honest)||`` for the defense F, its randomness drawn
    from generators seeded with ``seed``; a stateful rule starts from ``state``."""
    return defense_eval(defense, honest, byz, b, seed, state)[0]


def defense_eval(defense: Defense, honest: Tensor, byz: Tensor, b: int, seed: int,
                 state: dict[str, Any] | None = None) -> tuple[float, dict[str, Any]]:
    """:func:`defense_distance` and the rule's state after the call (``{}`` for a stateless
    rule): a fresh rule each call, so ``state`` itself is never changed."""
    n = honest.shape[0] + b
    stack = torch.cat([honest, byz.expand(b, -1)])
    chain = make_chain(defense.pre, n, defense.f)
    rule = RULES.get(defense.agg)(chain.out_count(n), defense.f, **defense.agg_params)
    if state:
        rule.load_state_dict(state)
    mask = torch.cat([torch.ones(honest.shape[0], dtype=torch.bool),
                      torch.zeros(b, dtype=torch.bool)])
    x = chain(stack, torch.Generator().manual_seed(seed), defense.f)
    out = rule(x, honest=mask, f=defense.f, generator=torch.Generator().manual_seed(seed + 1))
    return (float(torch.linalg.vector_norm((out - honest.mean(dim=0)).double())),
            rule.state_dict() if rule.stateful else {})


def unsupported(agg: str) -> str | None:
    """Why opt-alie / opt-ipm cannot evaluate rule ``agg`` on a worker (it keeps a growing state
    across rounds, or needs another protocol's server), e.g. ``"clippedclustering keeps a
    growing state across rounds"``;
    None when they can."""
    rule = RULES.get(agg)
    if rule.protocol != "gradient" or not rule.tensor_rule:  # FLTrust: the server's root gradient
        return f"{agg} needs the {rule.protocol} protocol's server"
    if rule.stateful and not _fixed_size_state(rule):
        return f"{agg} keeps a growing state across rounds"
    return None


def _initial_state(rule: type) -> dict[str, Any]:
    """A stateful rule's state before its first round."""
    return rule(3, 0).state_dict()


def _fixed_size_state(rule: type) -> bool:
    """Whether a stateful rule's state is tensors (or None) of a fixed shape, which the attack
    can replicate and send between ranks: CClip's center, not Clipped Clustering's history."""
    return all(v is None for v in _initial_state(rule).values())


def _search_params(delta: float) -> tuple[Param, ...]:
    return (Param("evals", int, 20, "evaluations of the defense per round", low=1),
            Param("start", float, 0.0, "first factor tried"),
            Param("delta", float, delta, "first step of the search", low=0, low_open=True),
            Param("ratio", float, 0.8, "step shrink factor after a step that does not help",
                  low=0.5, high=1, low_open=True, high_open=True))


class _Optimal(Attack):
    reads_own = False
    omniscient = True
    vector: Callable[[Tensor, float], Tensor]

    def _setup(self, **values: Any) -> None:
        self.search = values
        # The attacker's replica of a stateful rule's state (CClip's center): each round it
        # advances on the round's honest rows and the chosen Byzantine rows, as the server's.
        self.rule_state: dict[str, Any] = {}

    def bind(self, defense: Defense) -> None:
        super().bind(defense)
        rule = RULES.get(defense.agg)
        self.rule_state = _initial_state(rule) if rule.stateful else {}

    @property
    def stateful(self) -> bool:
        return bool(self.rule_state)

    def state_dict(self) -> dict:
        return {k: v.detach().cpu().clone() if isinstance(v, Tensor) else v
                for k, v in self.rule_state.items()}

    def load_state_dict(self, d: dict) -> None:
        self.rule_state = {k: d.get(k) for k in self.rule_state}

    @classmethod
    def check_config(cls, cfg) -> None:
        why = unsupported(cfg.agg)
        if why:
            raise ConfigError(f"{cls.name} evaluates the server's rule on candidate messages, "
                              f"but {why}, which a worker does not hold; use a "
                              "stateless gradient rule (or the fixed attack, e.g. --attack "
                              f"{cls.name.removeprefix('opt-')})")

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        if self.defense is None:
            raise ValueError(f"attack '{self.name}' needs the defense (Attack.bind) before "
                             "crafting")
        honest = self._honest(inp)
        b = inp.n - honest.shape[0]  # every Byzantine row of the round, on any process
        seed = int(torch.randint(0, 2**62, (1,), generator=inp.generator))

        best: list = [None, None]  # (distance, rule state) of the best candidate so far

        def score(s: float) -> float:
            dist, state = defense_eval(self.defense, honest, self.vector(honest, s), b, seed,
                                       self.rule_state)
            if best[0] is None or dist > best[0]:  # line_search keeps the first maximum too
                best[:] = [dist, state]
            return dist

        s, dist = line_search(score, **self.search)
        if self.rule_state:
            self.rule_state = best[1]
        self.info = {"factor": s, "distance": dist}
        return repeat_rows(self.vector(honest, s), own.shape[0], own, out)


@ATTACKS.register
class OptALIE(_Optimal):
    """ALIE with z chosen each round to move the server's output farthest from the honest mean."""

    name = "opt-alie"
    params = _search_params(10.0)

    @staticmethod
    def vector(honest: Tensor, z: float) -> Tensor:
        return alie_vector(honest, z)


@ATTACKS.register
class OptIPM(_Optimal):
    """IPM with epsilon chosen each round to move the server's output farthest from the mean."""

    name = "opt-ipm"
    params = _search_params(10.0)

    @staticmethod
    def vector(honest: Tensor, eps: float) -> Tensor:
        return ipm_vector(honest, eps)

