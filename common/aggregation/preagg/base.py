"""The pre-aggregator base class, the registry, and chains of stages.

A pre-aggregator maps the round's (n, d) messages to (n', d) vectors fed to a robust rule. Each
lives in its own module of this package (a pure function beside a thin registered class that
declares its parameters once); a chain is written as a comma-separated spec, each stage
``name`` or ``name:value`` (the value of its first declared parameter), e.g. ``"bucketing:2"``,
``"nnm"`` or ``"bucketing:2,nnm,resampling:3"`` (``""`` or ``"none"``: no pre-aggregation).
Each stage sees the output of the previous one; :meth:`Chain.out_count` tells the server how
many vectors the rule will see, so the rule's precondition can be checked at start-up.

Randomness comes only from the ``torch.Generator`` passed to each call (permutations are drawn
on the CPU, so a seeded CPU generator gives the same result on every device).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from common.aggregation.tensors import check_matrix
from common.errors import ConfigError
from common.params import Param, Registry

__all__ = ["PreAggregator", "PREAGGREGATORS", "preaggregator_names", "parse_chain", "Chain",
           "make_chain"]

#: Every pre-aggregator by name (parameters are written in the ``--pre`` spec, not as flags).
PREAGGREGATORS = Registry("pre-aggregator", flags=False)


class PreAggregator:
    """A chain stage. ``n`` is the number of vectors the stage receives, ``f`` the configured
    number of Byzantine workers, ``values`` its resolved parameters. ``out_count(n)`` is how many
    vectors it emits; ``info`` holds the JSON-ready diagnostics of the last call.

    A stage writes into an output buffer it keeps from call to call, so its result is valid
    until its next call (the server's rule consumes it within the round; the pure functions
    return fresh tensors). Fresh pages for a new (n, d) output each round cost as much as the
    mixing pass itself: NNM at (25, 1e6) measured 24 -> 14 ms on the project machine.
    """

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, n: int, f: int, **params: Any) -> None:
        self.n, self.f = int(n), int(f)
        self.values: dict[str, Any] = PREAGGREGATORS.resolve(self.name, params)
        self.info: dict[str, Any] = {}
        self._buf: Tensor | None = None
        if self.n < 1:
            raise ConfigError(f"{self.name} needs n >= 1 vectors, got n={self.n}")
        self.check(self.n)

    def check(self, n: int) -> None:
        """Raise ConfigError if the stage cannot run on n vectors."""

    def out_count(self, n: int) -> int:
        """How many vectors the stage emits for n inputs."""
        return n

    def warnings(self, n: int) -> list[str]:
        """Why the stage's setting, accepted for n inputs, is probably not what was meant."""
        return []

    def __call__(self, x: Tensor, generator: torch.Generator | None = None,
                 f: int | None = None) -> Tensor:
        """The stage on x; ``f``: the Byzantine vectors assumed for this call when it is not the
        configured one (as :meth:`common.aggregation.rules.Rule.__call__`)."""
        check_matrix(x, "a pre-aggregator")
        configured = self.f
        if f is not None:
            self.f = int(f)
        try:
            if x.shape[0] != self.n or self.f != configured:
                self.check(x.shape[0])
            self.info = {}
            return self.apply(x, generator, self._output(self.out_count(x.shape[0]), x))
        finally:
            self.f = configured

    def _output(self, m: int, x: Tensor) -> Tensor:
        """The (m, d) output buffer, reallocated only when the shape, dtype or device change
        (or when x is the buffer itself, e.g. a stage applied to its own last output)."""
        buf = self._buf
        if (buf is None or buf.shape != (m, x.shape[1]) or buf.dtype != x.dtype
                or buf.device != x.device
                or buf.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()):
            buf = self._buf = torch.empty(m, x.shape[1], dtype=x.dtype, device=x.device)
        return buf

    def apply(self, x: Tensor, generator: torch.Generator | None, out: Tensor) -> Tensor:
        """The stage's output for x, written into ``out`` (out_count rows)."""
        raise NotImplementedError

    def spec(self) -> str:
        """The stage as written in a chain (its first parameter's value after a colon)."""
        if not self.params:
            return self.name
        return f"{self.name}:{self.values[self.params[0].name]}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r}, n={self.n}, f={self.f})"


def preaggregator_names() -> list[str]:
    """Every registered pre-aggregator, sorted."""
    return PREAGGREGATORS.names()


def parse_chain(spec: str | None) -> list[tuple[str, dict]]:
    """Parse ``"bucketing:2,nnm,resampling:3"`` into ``[("bucketing", {"s": 2}), ("nnm", {}),
    ("resampling", {"s": 3})]``. ``""``, ``None`` and ``"none"`` give ``[]``.

    Names are case-insensitive; a value after a colon is the stage's first declared parameter,
    checked by its declaration (a stage without parameters takes none). Raises ConfigError for
    an unknown name (listing the choices) or a bad value.
    """
    if spec is None:
        return []
    text = str(spec).strip()
    if text.lower() in ("", "none"):
        return []
    out: list[tuple[str, dict]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ConfigError(f"empty stage in pre-aggregator chain '{spec}' "
                              "(write stages separated by single commas, e.g. bucketing:2,nnm)")
        name, sep, arg = part.partition(":")
        cls = PREAGGREGATORS.get(name.strip())
        if not sep:
            out.append((cls.name, {}))
            continue
        if not cls.params:
            raise ConfigError(f"pre-aggregator '{cls.name}' takes no parameter, got '{part}'")
        first = cls.params[0]
        try:
            value = first.check(arg.strip(), cls.name)
        except ConfigError as e:
            raise ConfigError(f"{e} (e.g. {cls.name}:{first.default})") from None
        out.append((cls.name, {first.name: value}))
    return out


class Chain:
    """Pre-aggregators applied in order. ``Chain.out_count(n)`` composes the stages'
    counts; ``info`` lists each stage's diagnostics of the last call."""

    def __init__(self, stages: list[PreAggregator]) -> None:
        self.stages = list(stages)
        self.info: list[dict[str, Any]] = []

    def out_count(self, n: int) -> int:
        for st in self.stages:
            n = st.out_count(n)
        return n

    def warnings(self, n: int) -> list[str]:
        """Every stage's :meth:`PreAggregator.warnings` for the vectors it receives."""
        out = []
        for st in self.stages:
            out += st.warnings(n)
            n = st.out_count(n)
        return out

    def __call__(self, x: Tensor, generator: torch.Generator | None = None,
                 f: int | None = None) -> Tensor:
        info = []
        for st in self.stages:
            x = st(x, generator, f)
            info.append({"name": st.name, **st.info})
        self.info = info
        return x

    def __len__(self) -> int:
        return len(self.stages)

    def spec(self) -> str:
        return ",".join(st.spec() for st in self.stages) or "none"

    def __repr__(self) -> str:
        return f"Chain({self.spec()!r})"


def make_chain(spec: str | None, n: int, f: int) -> Chain:
    """Build the chain ``spec`` for n incoming messages and f configured Byzantine workers.

    Each stage is checked against the number of vectors it will receive; a violated bound
    raises ConfigError.
    """
    stages = []
    for name, params in parse_chain(spec):
        st = PREAGGREGATORS.get(name)(n, f, **params)
        stages.append(st)
        n = st.out_count(n)
    return Chain(stages)
