"""Election codes for signSGD (Sohn, Han, Choi, Moon, NeurIPS 2020).

An allocation matrix ``G`` in {0,1}^{n x n} assigns data to nodes: rows are nodes, columns are the
n equal slices of one iteration's global minibatch. Node j computes the sign of the gradient of
every slice k with ``G[j, k] = 1`` and sends the local majority ``sign(sum_k sign(g_k))`` (ties give
0); the master takes ``sign(sum_j vote_j)``. The redundancy is ``r = G.sum() / n``.

This module provides

* the codes: :func:`deterministic_code` (identity, all ones, :func:`paper_family_code` and the
  table :data:`KNOWN_CODES`), :func:`bernoulli_code`, :func:`make_code` (what the training CLI calls);
* the votes: :func:`node_votes`, :func:`master_vote` (torch, vectorised over coordinates);
* exact verification: :func:`count_failures` (all 2^n slice sign patterns x all Byzantine
  placements) and :func:`tolerates`;
* :func:`common.coding.search.search`, a symmetry-reduced branch and bound for the
  deterministic code of least redundancy that tolerates b Byzantine nodes (its own module);
* a command line: ``python -m common.coding {verify,search,known} --help``
  (:mod:`common.coding.cli`).

See ``docs/codes.md`` for the codes found, the commands that find them and the timings.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import numpy as np

from common.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["KNOWN_CODES", "ATTACKS", "FailureCount", "deterministic_code", "paper_family_code",
           "bernoulli_code", "redundancy", "make_code", "node_votes", "master_vote",
           "count_failures", "tolerates", "format_code"]

# ---------------------------------------------------------------------------------------------
# Known deterministic codes
# ---------------------------------------------------------------------------------------------


def _rows(*rows: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(c) for c in row) for row in rows)


#: Deterministic codes beyond the families every n has (r = 1: identity, plain signSGD-MV, b = 0;
#: r = n: all ones, b = (n-1)//2; odd n >= 5: :func:`paper_family_code`, b = (n-3)//2).
#: Keyed by (n, number of ones); ``b`` is the number of Byzantine nodes the code tolerates
#: exactly (checked by :func:`count_failures` in the tests). Each was found by ``python -m
#: common.coding search --n N --b B`` and, where ``least`` is True, proven of least redundancy for
#: its (n, b) by that exhaustive search (the (5, 19) code is the paper's; search proves nothing
#: lighter exists). docs/codes.md has the commands and timings.
KNOWN_CODES: dict[tuple[int, int], dict] = {
    (5, 19): {
        "least": True,
        "b": 1,
        "source": "Sohn et al. 2020 (the paper's code); least by search --n 5 --b 1",
        "rows": _rows("10000", "01110", "11111", "11111", "11111"),
    },
    (7, 27): {
        "least": True,
        "b": 1,
        "source": "search --n 7 --b 1",
        "rows": _rows(
            "1000000", "0110000", "0001100", "0000011", "0111111", "1111111", "1111111"
        ),
    },
    (9, 41): {
        "least": True,
        "b": 1,
        "source": "search --n 9 --b 1",
        "rows": _rows(
            "100000000", "010000000", "001000000", "000111000", "000100110",
            "000011111", "111111111", "111111111", "111111111",
        ),
    },
    (9, 53): {
        "least": True,
        "b": 2,
        "source": "search --n 9 --b 2",
        "rows": _rows(
            "110000000", "001100000", "000011000", "000000110",
            "111111111", "111111111", "111111111", "111111111", "111111111",
        ),
    },
    (11, 65): {
        "least": True,
        "b": 2,
        "source": "search --n 11 --b 2",
        "rows": _rows(
            "10000000000", "01100000000", "00011000000", "00000110000", "00000001100",
            "00000000011", "01111111111", "11111111111", "11111111111", "11111111111",
            "11111111111",
        ),
    },
    (11, 50): {
        "least": False,
        "b": 1,
        "source": "search --n 11 --b 1 (best found in 600 s, not proven least)",
        "rows": _rows(
            "10000000000", "01000000000", "00100000000", "00011000000", "00000110000",
            "00000001100", "00000000011", "00011111100", "11111111111", "11111111111",
            "11111111111",
        ),
    },
    (11, 89): {
        "least": True,
        "b": 3,
        "source": "search --n 11 --b 3",
        "rows": _rows(
            "11000000000", "00110000000", "00001111000", "00001000111",
            *["11111111111"] * 7,
        ),
    },
}


def paper_family_code(n: int) -> np.ndarray:
    """The paper's n = 5 code generalised to odd n >= 5: rows e_0, (0, 1, ..., 1, 0) and n - 2
    all-ones rows; n^2 - n - 1 ones (r = n - 1 - 1/n), tolerates b = (n - 3) / 2.

    Proof: the n - 2 = 2b + 1 full rows always vote the true majority m, so (see
    :func:`count_failures`) the code tolerates b iff the contributions m*vote of the other two
    rows sum to >= 0 on every pattern. If s_0 = -m, the middle row sees
    sum - s_0 - s_{n-1}, and m * (sum - s_0 - s_{n-1}) >= 1 + 1 - 1 > 0, so it votes m.
    """
    n = _check_n(n)
    if n < 5 or n % 2 == 0:
        raise ConfigError(f"the paper's code family needs an odd n >= 5, got n={n}")
    G = np.ones((n, n), dtype=np.int64)
    G[0, 1:] = 0
    G[1, 0] = G[1, n - 1] = 0
    return G


def _known_pairs_text() -> str:
    pairs = ", ".join(
        f"(n={n}, r={ones / n:.4g}, b={c['b']})" for (n, ones), c in sorted(KNOWN_CODES.items())
    )
    return (
        "r=1 (identity) and r=n (all ones) for any n; r=n-1-1/n for odd n>=5 (the paper's code "
        f"generalised, b=(n-3)/2, e.g. (n=7, r=5.857), (n=9, r=7.889)); {pairs}"
    )


def deterministic_code(n: int, r: float) -> np.ndarray:
    """A known deterministic allocation matrix with n nodes and redundancy r.

    ``r == 1`` gives the identity (plain signSGD-MV) and ``r == n`` the all-ones matrix, for any
    n; odd n >= 5 with ``r == n - 1 - 1/n`` gives :func:`paper_family_code`; other (n, r) pairs
    come from :data:`KNOWN_CODES`. A redundancy matches when ``r * n`` is within 0.1 of the code's
    number of ones, so ``--redundancy 3.857`` selects the 27-ones code for n = 7. Returns an
    (n, n) int64 array of 0/1. Unknown pairs raise :class:`ConfigError`.
    """
    n = _check_n(n)
    try:
        r = float(r)
    except (TypeError, ValueError):
        raise ConfigError(f"redundancy must be a number, got {r!r}") from None
    if not math.isfinite(r):
        raise ConfigError(f"redundancy must be a finite number, got {r}")
    if abs(r - 1.0) < 1e-9:
        return np.eye(n, dtype=np.int64)
    if abs(r - n) < 1e-9:
        return np.ones((n, n), dtype=np.int64)
    for (kn, ones), code in KNOWN_CODES.items():
        if kn == n and abs(r * n - ones) < 0.1:
            return np.array(code["rows"], dtype=np.int64)
    if n >= 5 and n % 2 == 1 and abs(r * n - (n * n - n - 1)) < 0.1:
        return paper_family_code(n)
    raise ConfigError(
        f"no known deterministic code for n={n}, r={r:g}; known codes: {_known_pairs_text()}. "
        f"Use a Bernoulli code (--deterministic False) or find one with "
        f"'python -m common.coding search --n {n} --b B'"
    )


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"number of nodes n must be a positive integer, got {n!r}")
    return int(n)


def bernoulli_code(n: int, r: float, generator: np.random.Generator) -> np.ndarray:
    """Random Bernoulli code: every entry is 1 with probability p = r / n.

    As in the reference implementation the whole matrix is redrawn until no row is empty, so the
    expected redundancy is r / (1 - (1 - p)^n) (e.g. 2.58 for n = 5, r = 2.5; within 1 % of r once
    (1 - p)^n < 0.01). Requires 1 <= r <= n. Returns an (n, n) int64 array of 0/1.
    """
    n = _check_n(n)
    r = float(r)
    if not (1.0 <= r <= n):  # also rejects NaN
        raise ConfigError(f"Bernoulli redundancy r must lie in [1, n] = [1, {n}], got {r:g}")
    p = r / n
    while True:
        G = (generator.random((n, n)) < p).astype(np.int64)
        if G.sum(axis=1).min() > 0:
            return G


def redundancy(G) -> float:
    """Computational redundancy ``G.sum() / n`` (n = number of rows = nodes)."""
    G = np.asarray(G)
    return float(G.sum()) / G.shape[0]


def make_code(n: int, r: float, deterministic: bool, seed: int) -> np.ndarray:
    """The allocation matrix the training CLI uses (``--deterministic``, ``--redundancy``).

    Deterministic: :func:`deterministic_code` (seed unused). Otherwise a Bernoulli code drawn with
    ``numpy.random.default_rng(seed)``, so the same seed gives the same matrix on every rank.
    """
    if deterministic:
        return deterministic_code(n, r)
    return bernoulli_code(n, r, np.random.default_rng(seed))


# ---------------------------------------------------------------------------------------------
# Votes
# ---------------------------------------------------------------------------------------------


def node_votes(slice_signs: torch.Tensor, G) -> torch.Tensor:
    """Honest votes of all nodes: ``sign(G @ slice_signs)`` (ties give 0).

    ``slice_signs``: (n_slices, d) tensor in {-1, 0, 1}; ``G``: (n_nodes, n_slices) 0/1 array or
    tensor. Returns an (n_nodes, d) tensor of the dtype of ``slice_signs``.
    """
    import torch  # noqa: PLC0415 - lazily: the verify/search CLI needs numpy only

    if slice_signs.dim() != 2:
        raise ValueError(f"slice_signs must be (n_slices, d), got shape {tuple(slice_signs.shape)}")
    Gt = torch.as_tensor(np.asarray(G) if not torch.is_tensor(G) else G)
    if Gt.dim() != 2 or Gt.shape[1] != slice_signs.shape[0]:
        raise ValueError(
            f"G of shape {tuple(Gt.shape)} does not match {slice_signs.shape[0]} slices"
        )
    Gt = Gt.to(dtype=slice_signs.dtype, device=slice_signs.device)
    return torch.sign(Gt @ slice_signs)


def master_vote(votes: torch.Tensor) -> torch.Tensor:
    """The master's decision ``sign(sum_j votes_j)`` for (n_nodes, d) votes (ties give 0)."""
    import torch  # noqa: PLC0415 - see node_votes

    return torch.sign(votes.sum(dim=0))


# ---------------------------------------------------------------------------------------------
# Exhaustive verification
# ---------------------------------------------------------------------------------------------

#: Byzantine vote models for :func:`count_failures`.
#: ``worst``: vote the opposite of the true majority (the worst case, see count_failures);
#: ``reverse``: the paper's reverse attack, minus the node's own honest vote;
#: ``directional``: always -1; ``abstain``: always 0.
ATTACKS = ("worst", "reverse", "directional", "abstain")

_MAX_VERIFY_SLICES = 20


class FailureCount(tuple):
    """``(failures, total)`` with details: ``per_placement`` maps each Byzantine placement (a
    tuple of node indices) to its number of broken patterns; ``patterns_per_placement`` is the
    number of slice sign patterns checked for each placement (2^n for odd n)."""

    def __new__(cls, failures: int, total: int, per_placement: dict, patterns_per_placement: int):
        obj = super().__new__(cls, (int(failures), int(total)))
        obj.per_placement = per_placement
        obj.patterns_per_placement = int(patterns_per_placement)
        return obj

    @property
    def failures(self) -> int:
        return self[0]

    @property
    def total(self) -> int:
        return self[1]


def _as_code(G) -> np.ndarray:
    if hasattr(G, "detach"):  # a torch tensor (torch itself is imported lazily)
        G = G.detach().cpu().numpy()
    G = np.asarray(G)
    if G.ndim != 2 or G.size == 0:
        raise ConfigError(f"an allocation matrix must be a non-empty 2-D 0/1 array, got shape {G.shape}")
    if not np.isin(G, (0, 1)).all():
        raise ConfigError("an allocation matrix must contain only 0 and 1")
    return G.astype(np.int64)


def _all_patterns(n: int) -> np.ndarray:
    """(2^n, n) int64 matrix of all sign patterns in {-1, +1}^n (row i = bits of i)."""
    idx = np.arange(2**n, dtype=np.int64)[:, None]
    return ((idx >> np.arange(n, dtype=np.int64)) & 1) * 2 - 1


def count_failures(G, b: int, attack: str = "worst") -> FailureCount:
    """Exhaustively count the (pattern, placement) pairs where Byzantine nodes break the vote.

    For every sign pattern s in {-1,+1}^n of the n slices (one matrix of all 2^n patterns) and
    every placement of ``b`` Byzantine nodes (``itertools.combinations``), honest node j votes
    ``sign(sum_{k: G[j,k]=1} s_k)`` and the Byzantine nodes vote according to ``attack`` (see
    :data:`ATTACKS`); the pair fails when ``sign(sum_j vote_j)`` differs from the true majority
    ``sign(sum_k s_k)`` (a master vote of 0 is a failure too).

    ``worst`` is the worst case over every Byzantine strategy: with true majority m, a vote v
    contributes m*v in {-1, 0, 1} to ``m * sum_j vote_j``, and the master is right iff that sum is
    positive, so for each node -m (contribution -1) is at least as harmful as any other vote,
    abstaining (0) included; the adversary knows the pattern, so it can always send -m. Hence
    ``count_failures(G, b, "worst") == (0, total)`` proves that G tolerates every attack by any b
    nodes. Even n: patterns whose slice signs tie (sum 0) have no majority to protect and are
    skipped, so ``total = (2^n - C(n, n/2)) * C(n_nodes, b)``; for odd n it is
    ``2^n * C(n_nodes, b)``.

    Returns a :class:`FailureCount`, a ``(failures, total)`` tuple that also carries
    ``per_placement``.
    """
    G = _as_code(G)
    n_nodes, n = G.shape
    if attack not in ATTACKS:
        raise ConfigError(f"unknown attack '{attack}'; choose one of: {', '.join(ATTACKS)}")
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 0 <= b <= n_nodes:
        raise ConfigError(f"number of Byzantine nodes b must be an integer in [0, {n_nodes}], got {b!r}")
    if n > _MAX_VERIFY_SLICES:
        raise ConfigError(
            f"exhaustive verification enumerates 2^n patterns; n={n} slices is above the limit of "
            f"{_MAX_VERIFY_SLICES}"
        )
    S = _all_patterns(n)
    m = np.sign(S.sum(axis=1))
    keep = m != 0
    S, m = S[keep], m[keep]
    V = np.sign(S @ G.T)  # (P, n_nodes) honest votes
    total_honest = V.sum(axis=1)
    placements = list(itertools.combinations(range(n_nodes), int(b)))
    per_placement: dict[tuple[int, ...], int] = {}
    chunk = max(1, (1 << 22) // max(1, len(S)))
    for start in range(0, len(placements), chunk):
        block = placements[start : start + chunk]
        M = np.zeros((len(block), n_nodes), dtype=np.int64)
        for i, pl in enumerate(block):
            M[i, list(pl)] = 1
        byz_honest = V @ M.T  # (P, len(block)) what the Byzantine nodes would have voted
        if attack == "worst":
            byz = -int(b) * m[:, None]
        elif attack == "reverse":
            byz = -byz_honest
        elif attack == "directional":
            byz = np.full((1, 1), -int(b))
        else:  # abstain
            byz = 0
        master = np.sign(total_honest[:, None] - byz_honest + byz)
        fails = (master != m[:, None]).sum(axis=0)
        per_placement.update(zip(block, (int(x) for x in fails)))
    failures = sum(per_placement.values())
    return FailureCount(failures, len(S) * len(placements), per_placement, len(S))


def tolerates(G, b: int) -> bool:
    """True iff G tolerates every attack by any b Byzantine nodes (no failure in the worst case)."""
    return count_failures(G, b, "worst").failures == 0


def format_code(G) -> str:
    """Rows of G as lines of space-separated 0/1 (the format :func:`load_code` reads)."""
    return "\n".join(" ".join(str(int(x)) for x in row) for row in np.asarray(G))
