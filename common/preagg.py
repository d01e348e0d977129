"""Pre-aggregators: maps from the round's (n, d) messages to (n', d) vectors fed to a robust rule.

They compose in a chain written as a comma-separated spec, e.g. ``"bucketing:2"``, ``"nnm"`` or
``"bucketing:2,nnm,resampling:3"`` (``""`` or ``"none"``: no pre-aggregation). Each stage sees
the output of the previous one; :meth:`Chain.out_count` tells the server how many vectors the
rule will see, so the rule's precondition can be checked at start-up.

References
----------
- ``bucketing:s``: S. P. Karimireddy, L. He, M. Jaggi, "Byzantine-Robust Learning on
  Heterogeneous Datasets via Bucketing", ICLR 2022.
- ``resampling:s``: L. He, S. P. Karimireddy, M. Jaggi, "Byzantine-Robust Learning on
  Heterogeneous Datasets via Resampling" (2020), Algorithm 2.
- ``nnm``: Y. Allouah, S. Farhadkhani, R. Guerraoui, N. Gupta, R. Pinot, J. Stephan, "Fixing by
  Mixing: A Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023.

Randomness comes only from the ``torch.Generator`` passed to each call (permutations are drawn
on the CPU, so a seeded CPU generator gives the same result on every device). Every stage is a
mixing matrix W, applied as direct row sums (:func:`_group_means`; NNM off the CPU kernels as
one matrix product ``W @ x`` whose non-finite output rows, a zero weight times an infinite
entry, are recomputed from their nonzero weights only). Either way one bad message can only
spoil the outputs it actually enters.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from common import native
from common.errors import ConfigError, unknown_name
from common.finite import finite_rows
from common.rules import pairwise_sq_distances

__all__ = ["bucketing", "resampling", "nnm", "bucketing_matrix", "resampling_groups",
           "nnm_neighbours", "parse_chain", "PreAggregator", "PREAGGREGATORS", "Chain",
           "make_chain", "preaggregator_names"]


def _check_matrix(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 1 or not x.is_floating_point():
        raise ValueError(f"a pre-aggregator takes a floating (n, d) tensor with n >= 1, "
                         f"got {getattr(x, 'shape', type(x))}")


_MM_CHUNK = 16384  # columns per torch.mm on CPU (see _mix)


def _mix(w: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """``w @ x`` for a (k, n) mixing matrix, recomputing non-finite rows from their nonzero
    weights only (where the native group means do not apply: CUDA, other dtypes).

    On CPU over column blocks: MKL's single (k, n) x (n, d) call for d in the millions streams
    x through memory once per output row block, measured 3x slower than blocks that stay in
    cache.
    """
    w = w.to(device=x.device, dtype=x.dtype)
    d = x.shape[1]
    if out is None:
        out = torch.empty(w.shape[0], d, dtype=x.dtype, device=x.device)
    if x.device.type != "cpu" or d <= _MM_CHUNK:
        torch.mm(w, x, out=out)
    else:
        for s in range(0, d, _MM_CHUNK):
            torch.mm(w, x[:, s:s + _MM_CHUNK], out=out[:, s:s + _MM_CHUNK])
    bad = ~finite_rows(out)
    if bool(bad.any()):
        for r in torch.nonzero(bad).flatten().tolist():
            row = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            for j in torch.nonzero(w[r]).flatten().tolist():
                row.add_(x[j], alpha=float(w[r, j]))
            out[r] = row
    return out


def _group_plan(groups: list[list[int]]) -> tuple[list[int], list[tuple[list[int], list[int]]]]:
    """Split row groups into ``core``, the members every group has (in the first group's order),
    and per distinct remainder ``(rest, output rows)``: each group's mean is then summed as core
    first, then its rest in its own order, and identical groups are computed once."""
    common = set(groups[0]).intersection(*groups[1:])
    core = [j for j in groups[0] if j in common]
    parts: dict[tuple[int, ...], list[int]] = {}
    for r, g in enumerate(groups):
        parts.setdefault(tuple(j for j in g if j not in common), []).append(r)
    return core, [(list(rest), rows) for rest, rows in parts.items()]


def _group_means(x: Tensor, groups: list[list[int]], out: Tensor | None = None) -> Tensor:
    """Row r = mean of the rows ``groups[r]`` of x, as direct row sums: members shared by every
    group (NNM: most of them) summed once, then each group's other members in its order
    (:func:`_group_plan`), then one divide; identical groups computed once.

    For the sparse mixtures of bucketing and resampling this is a few memory passes where the
    dense ``W @ x`` is an (k, n) x (n, d) matrix product; and a non-finite row can only spoil the
    groups it belongs to (no 0 * inf). On CPU float32 one pass of the native kernel
    (:func:`common.native.group_means`, the same values).
    """
    core, parts = _group_plan(groups)
    fast = native.group_means(x, core, parts, len(groups), out)
    if fast is not None:
        return fast
    if out is None:
        out = torch.empty(len(groups), x.shape[1], dtype=x.dtype, device=x.device)
    shared = None
    if core:
        shared = x[core[0]].clone()
        for j in core[1:]:
            shared.add_(x[j])
    for rest, rows in parts:
        row = out[rows[0]]
        row.copy_(x[rest[0]] if shared is None else shared)
        for j in rest[shared is None:]:
            row.add_(x[j])
        if len(core) + len(rest) > 1:
            row.div_(len(core) + len(rest))
        for r in rows[1:]:
            out[r] = row
    return out


def _cpu_randperm(n: int, generator: torch.Generator | None) -> Tensor:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("pre-aggregators draw their randomness on the CPU; "
                         "pass a CPU torch.Generator")
    return torch.randperm(n, generator=generator)


# --------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------

def bucketing_matrix(n: int, s: int, generator: torch.Generator | None = None
                     ) -> tuple[Tensor, Tensor]:
    """The bucketing mixing matrix and the permutation it came from.

    Returns ``(W, perm)``: perm is a random permutation of range(n) (CPU, drawn with
    ``generator``); bucket b holds ``perm[b*s : (b+1)*s]`` (the last bucket may be smaller) and
    row b of the (ceil(n/s), n) float64 matrix W puts weight 1/|bucket b| on its members.
    """
    if s < 1:
        raise ConfigError(f"bucketing needs a bucket size s >= 1, got s={s}")
    perm = _cpu_randperm(n, generator)
    k = math.ceil(n / s)
    w = torch.zeros(k, n, dtype=torch.float64)
    for b in range(k):
        members = perm[b * s:(b + 1) * s]
        w[b, members] = 1.0 / members.numel()
    return w, perm


def bucketing(x: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Bucketing: shuffle the n rows, cut them into ceil(n/s) buckets of s consecutive rows (the
    last bucket may be smaller) and average each bucket.

    Formula: ``y_b = (1/|B_b|) sum_{i in B_b} x_i`` with ``B_b = perm[b s : (b+1) s]``.
    Parameters: x -- (n, d); s >= 1; generator -- CPU torch.Generator for the permutation.
    Returns a (ceil(n/s), d) tensor. Reference: Karimireddy, He, Jaggi, ICLR 2022.
    """
    _check_matrix(x)
    return _group_means(x, _bucket_groups(x.shape[0], int(s), generator)[0])


def _bucket_groups(n: int, s: int, generator: torch.Generator | None
                   ) -> tuple[list[list[int]], Tensor]:
    """The buckets of :func:`bucketing_matrix` as index lists, and the permutation."""
    if s < 1:
        raise ConfigError(f"bucketing needs a bucket size s >= 1, got s={s}")
    perm = _cpu_randperm(n, generator)
    order = perm.tolist()
    return [order[b:b + s] for b in range(0, n, s)], perm


def resampling_groups(n: int, s: int, generator: torch.Generator | None = None) -> Tensor:
    """The index groups of resampling: an (n, s) LongTensor (CPU).

    Row i lists the s distinct messages averaged into output i; every message appears in exactly
    s rows (so at most s times overall). Sampler: for i = 1..n, with k = n - i + 1 groups left and
    c_j the remaining uses of message j, the messages with c_j = k must be taken (otherwise they
    could not be used up); the rest of the group is drawn uniformly without replacement among the
    other messages with c_j > 0. Invariants ``c_j <= k`` and ``sum c_j = k s`` guarantee that a
    group can always be completed.
    """
    if not 1 <= s <= n:
        raise ConfigError(f"resampling needs 1 <= s <= n (s distinct messages per average), "
                          f"got s={s}, n={n}")
    remaining = torch.full((n,), s, dtype=torch.long)
    groups = torch.empty(n, s, dtype=torch.long)
    for i in range(n):
        left = n - i
        forced = torch.nonzero(remaining == left).flatten()
        pool = torch.nonzero((remaining > 0) & (remaining < left)).flatten()
        need = s - forced.numel()
        pick = pool[_cpu_randperm(pool.numel(), generator)[:need]]
        g = torch.cat([forced, pick])
        groups[i] = g
        remaining[g] -= 1
    return groups


def resampling(x: Tensor, s: int, generator: torch.Generator | None = None) -> Tensor:
    """Resampling (Algorithm 2 of He, Karimireddy, Jaggi): n averages, each of s distinct
    messages, every message used exactly s times (see :func:`resampling_groups`).

    Formula: ``y_i = (1/s) sum_{j in G_i} x_j``. Parameters: x -- (n, d); 1 <= s <= n;
    generator -- CPU torch.Generator. Returns an (n, d) tensor.
    """
    _check_matrix(x)
    n = x.shape[0]
    groups = resampling_groups(n, int(s), generator)
    return _group_means(x, groups.tolist())


def nnm_neighbours(x: Tensor, f: int) -> Tensor:
    """For every row i, the indices of its n - f nearest rows by Euclidean distance, itself
    first (ties: lower index first). An (n, n-f) LongTensor on x's device."""
    _check_matrix(x)
    n = x.shape[0]
    if not 0 <= f < n:
        raise ConfigError(f"nnm needs 0 <= f < n, got n={n}, f={f} "
                          "(nnm sees the vectors that reach it in the chain)")
    d = pairwise_sq_distances(x)
    d.fill_diagonal_(-1.0)  # itself always first, even among duplicates
    return torch.sort(d, dim=1, stable=True).indices[:, : n - f]


def nnm(x: Tensor, f: int) -> Tensor:
    """Nearest neighbour mixing: each x_i is replaced by the mean of its n - f nearest rows
    (itself included) by Euclidean distance.

    Formula: ``y_i = (1/(n-f)) sum_{j in N_i} x_j`` (distances from the Gram matrix).
    Precondition: 0 <= f < n. With f = 0 every row becomes the global mean. Reference:
    Allouah et al., AISTATS 2023.
    """
    return _nnm_mix(x, nnm_neighbours(x, int(f)))


def _nnm_mix(x: Tensor, nb: Tensor, out: Tensor | None = None) -> Tensor:
    """The neighbourhood means. On CPU float32 as group means (the neighbourhoods overlap in
    most rows, which are then summed once: :func:`_group_plan`); elsewhere as ``W @ x``, one
    matrix product on the device."""
    groups = [sorted(row) for row in nb.tolist()]  # sorted: equal neighbourhoods, equal lists
    mixed = native.group_means(x, *_group_plan(groups), len(groups), out)
    if mixed is not None:
        return mixed
    w = torch.zeros(len(groups), x.shape[0], dtype=torch.float64, device=x.device)
    w.scatter_(1, nb, 1.0 / nb.shape[1])
    return _mix(w, x, out)


# --------------------------------------------------------------------------------------------
# registry and chains
# --------------------------------------------------------------------------------------------

class PreAggregator:
    """A chain stage. ``n`` is the number of vectors the stage receives, ``f`` the configured
    number of Byzantine workers. ``out_count(n)`` is how many vectors it emits; ``info`` holds
    the JSON-ready diagnostics of the last call.

    A stage writes into an output buffer it keeps from call to call, so its result is valid
    until its next call (the server's rule consumes it within the round; the pure functions
    above return fresh tensors). Fresh pages for a new (n, d) output each round cost as much
    as the mixing pass itself: NNM at (25, 1e6) measured 24 -> 14 ms on the project machine.
    """

    name: ClassVar[str] = ""
    takes_s: ClassVar[bool] = False

    def __init__(self, n: int, f: int, s: int | None = None) -> None:
        self.n, self.f, self.s = int(n), int(f), s
        self.info: dict[str, Any] = {}
        self._buf: Tensor | None = None
        if self.n < 1:
            raise ConfigError(f"{self.name} needs n >= 1 vectors, got n={self.n}")
        self.check(self.n)

    def check(self, n: int) -> None:
        """Raise ConfigError if the stage cannot run on n vectors."""

    def out_count(self, n: int) -> int:
        return n

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_matrix(x)
        if x.shape[0] != self.n:
            self.check(x.shape[0])
        self.info = {}
        return self.apply(x, generator, self._output(self.out_count(x.shape[0]), x))

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
        return f"{self.name}:{self.s}" if self.takes_s else self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r}, n={self.n}, f={self.f})"


class Bucketing(PreAggregator):
    """``bucketing:s`` (default s = 2): ceil(n/s) bucket means of a random permutation.
    info: ``{"permutation": [...], "s": s}``."""

    name = "bucketing"
    takes_s = True

    def __init__(self, n: int, f: int, s: int | None = None) -> None:
        super().__init__(n, f, 2 if s is None else s)

    def out_count(self, n: int) -> int:
        return math.ceil(n / self.s)

    def apply(self, x, generator, out):
        groups, perm = _bucket_groups(x.shape[0], self.s, generator)
        self.info = {"s": self.s, "permutation": perm.tolist()}
        return _group_means(x, groups, out)


class Resampling(PreAggregator):
    """``resampling:s`` (default s = 2): n averages of s distinct messages, each message used s
    times. info: ``{"s": s, "groups": [[...], ...]}``."""

    name = "resampling"
    takes_s = True

    def __init__(self, n: int, f: int, s: int | None = None) -> None:
        super().__init__(n, f, 2 if s is None else s)

    def check(self, n: int) -> None:
        if self.s > n:
            raise ConfigError(f"resampling needs s <= n (s distinct messages per average), "
                              f"got s={self.s}, n={n}")

    def apply(self, x, generator, out):
        groups = resampling_groups(x.shape[0], self.s, generator).tolist()
        self.info = {"s": self.s, "groups": groups}
        return _group_means(x, groups, out)


class NNM(PreAggregator):
    """``nnm``: nearest neighbour mixing with n - f neighbours. info: ``{"neighbours": [[...]]}``
    (row i: the rows averaged into output i, itself first)."""

    name = "nnm"

    def check(self, n: int) -> None:
        if not self.f < n:
            raise ConfigError(f"nnm needs f < n, got n={n}, f={self.f} "
                              "(nnm sees the vectors that reach it in the chain)")

    def apply(self, x, generator, out):
        nb = nnm_neighbours(x, self.f)
        self.info = {"neighbours": nb.tolist()}
        return _nnm_mix(x, nb, out)


PREAGGREGATORS: dict[str, type[PreAggregator]] = {
    cls.name: cls for cls in (Bucketing, Resampling, NNM)
}


def preaggregator_names() -> list[str]:
    return sorted(PREAGGREGATORS)


def parse_chain(spec: str | None) -> list[tuple[str, dict]]:
    """Parse ``"bucketing:2,nnm,resampling:3"`` into ``[("bucketing", {"s": 2}), ("nnm", {}),
    ("resampling", {"s": 3})]``. ``""``, ``None`` and ``"none"`` give ``[]``.

    Names are case-insensitive; ``bucketing``/``resampling`` take an optional positive integer
    s (default 2) and ``nnm`` takes none. Raises ConfigError for an unknown name (listing the
    choices) or a bad parameter.
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
        name = name.strip().lower()
        if name not in PREAGGREGATORS:
            raise unknown_name("pre-aggregator", name, PREAGGREGATORS)
        cls = PREAGGREGATORS[name]
        if not sep:
            out.append((name, {}))
            continue
        if not cls.takes_s:
            raise ConfigError(f"pre-aggregator '{name}' takes no parameter, got '{part}'")
        arg = arg.strip()
        try:
            s = int(arg)
        except ValueError:
            raise ConfigError(f"{name} needs an integer bucket size s >= 1 "
                              f"(e.g. {name}:2), got '{arg}'") from None
        if s <= 0:
            raise ConfigError(f"{name} needs s >= 1 (e.g. {name}:2), got s={s}")
        out.append((name, {"s": s}))
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

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        info = []
        for st in self.stages:
            x = st(x, generator)
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
        st = PREAGGREGATORS[name](n, f, **params)
        stages.append(st)
        n = st.out_count(n)
    return Chain(stages)
