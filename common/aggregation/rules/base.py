"""The rule base class and the registry of every ``--agg`` name.

A robust rule maps the n messages the server received in a round (rows of ``x``, after any
pre-aggregation) to one d-vector. Each rule lives in its own module of this package: a pure
function holding the mathematics (docstring: formula, parameters, preconditions, reference)
beside a thin registered :class:`Rule` subclass that declares its parameters once
(:class:`common.params.Param`), checks its preconditions with a clear
:class:`~common.errors.ConfigError`, reports per-call diagnostics (``info``) and, for centered
clipping, keeps the state carried across rounds. A new module in this package registers itself
(``@RULES.register``) and is found without editing anything else.

Conventions: n is the number of rows the rule sees (after pre-aggregation), f the number of
Byzantine rows the defense assumes. Every rule works on any device and floating dtype of its
input and returns a tensor of the same device and dtype (scores and distances excepted: they
are float64). The server drops unusable and non-finite rows before it calls a rule (and lowers f
by as many, :mod:`master.messages`); rules must stay finite when up to f rows hold huge finite
values (:mod:`common.aggregation.tensors`).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from common.aggregation.tensors import check_matrix
from common.errors import ConfigError
from common.params import Param, Registry

__all__ = ["Rule", "RULES", "rule_names", "tensor_rule_names", "make_rule", "check_majority"]

#: Every ``--agg`` name. Rules of the gradient protocol live in this package; rules that need a
#: protocol of their own (signSGD votes, DiverseFL, RSA) register from :mod:`common.protocols`.
RULES = Registry("rule")


class Rule:
    """A robust rule: declared parameters around a pure function.

    Class attributes: ``name`` (registry name), ``params`` (the :class:`Param` declarations),
    ``protocol`` (the name of the protocol whose messages it aggregates; ``gradient`` unless the
    rule needs another), ``tensor_rule`` (callable as ``rule(x, honest)`` on any (n, d) stack;
    False for rules that need their protocol's context), ``per_worker`` (needs one row per
    worker, in worker order: no pre-aggregator may run before it), ``stateful`` (keeps state across
    rounds). Instance attributes: ``n`` and ``f`` (rows seen after pre-aggregation, Byzantine
    rows assumed), ``values`` (the resolved parameters; None means "default, derived from n and
    f at call time"), ``info`` (JSON-ready diagnostics of the last call) and ``compiled``: the
    order-statistic rules run their sorting network as a compiled kernel
    (:mod:`common.aggregation.sortnet`); others ignore it.

    ``__init__`` checks the preconditions and raises :class:`ConfigError` naming the violated
    bound; a call with a different number of rows (or another f) re-checks them for that count.
    """

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    protocol: ClassVar[str] = "gradient"
    tensor_rule: ClassVar[bool] = True
    per_worker: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    def __init__(self, n: int, f: int, **params: Any) -> None:
        self.n = _count("n", n, self.name)
        self.f = _count("f", f, self.name)
        if self.n < 1:
            raise ConfigError(f"{self.name} needs n >= 1 vectors, got n={self.n}")
        if self.f < 0:
            raise ConfigError(f"{self.name} needs f >= 0, got f={self.f}")
        self.values: dict[str, Any] = RULES.resolve(self.name, params)
        self.info: dict[str, Any] = {}
        self.compiled = False
        self.workers: Tensor | None = None  # the call's ``workers`` (None: row j is worker j)
        self.generator: torch.Generator | None = None  # the call's ``generator``
        self.check(self.n)

    def check(self, n: int) -> None:
        """Raise ConfigError if the rule cannot run on n rows (with this f and these values)."""

    def __call__(self, x: Tensor, honest: Tensor | None = None, f: int | None = None,
                 workers: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """The rule on the rows x. ``f``: the Byzantine rows assumed for this call when it is not
        the configured one (the server lowers it by the messages it dropped as unusable, see
        :mod:`master.messages`); the preconditions are re-checked for the rows and f of the call.
        ``workers``: the worker of each row when the server dropped some (per-worker rules).
        ``generator``: the randomness of randomized rules (a CPU generator; None: one seeded 0,
        so a call without it is reproducible)."""
        check_matrix(x)
        self.workers = workers
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        configured = self.f
        if f is not None:
            self.f = _count("f", f, self.name)
        try:
            if x.shape[0] != self.n or self.f != configured:
                self.check(x.shape[0])
            self.info = {}
            return self.aggregate(x, honest)
        finally:
            self.f = configured

    def aggregate(self, x: Tensor, honest: Tensor | None) -> Tensor:
        """The rule's output for the rows x (``honest``: the true honest mask, for the oracle)."""
        raise NotImplementedError

    @classmethod
    def upload_transform(cls, values: dict[str, Any]):
        """What honest workers do to their message before upload under this rule, as a function
        ``(msgs, rows, t, first_worker, seed) -> None`` changing the rows ``rows`` of ``msgs`` in
        place, or None (the default: they send it as computed)."""
        return None

    def state_dict(self) -> dict:
        """State carried across rounds (empty for stateless rules)."""
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Restore :meth:`state_dict` output."""

    def __repr__(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.values.items())
        return f"{type(self).__name__}(n={self.n}, f={self.f}{', ' if ps else ''}{ps})"


def check_majority(name: str, n: int, f: int) -> None:
    """ConfigError unless ``0 <= f`` and ``n > 2f`` (an honest majority of the rows ``name`` sees)."""
    if f < 0 or n <= 2 * f:
        raise ConfigError(f"{name} needs n > 2f, got n={n}, f={f} "
                          "(the rule sees n vectors after pre-aggregation)")


def _count(what: str, value: Any, rule: str) -> int:
    return Param(what, int).check(value, rule)


def rule_names() -> list[str]:
    """Every registered rule name (aliases included), sorted."""
    return RULES.names()


def tensor_rule_names() -> list[str]:
    """The rules callable on any (n, d) stack as ``rule(x, honest)``, sorted."""
    return [cls.name for cls in RULES.values() if cls.tensor_rule]


def make_rule(name: str, n: int, f: int, **params: Any) -> Rule:
    """Build the rule ``name`` for n input rows and f assumed Byzantine rows.

    Params that are None mean "default". Raises ConfigError for an unknown name (listing the
    choices), an unknown parameter, or an unmet precondition.
    """
    return RULES.get(name)(n, f, **params)
