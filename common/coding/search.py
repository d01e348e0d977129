"""Search for the election code of least redundancy that tolerates b Byzantine nodes: a
symmetry-reduced branch and bound over multisets of rows (n <= 9 is practical; docs/codes.md)."""
from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from common.coding.codes import _all_patterns, _check_n, format_code
from common.errors import ConfigError

__all__ = ["SearchResult", "search_code", "search"]

# ---------------------------------------------------------------------------------------------
# Search for least-redundancy deterministic codes
# ---------------------------------------------------------------------------------------------
#
# Reduction. With true majority m(s) and a row (node) R, write c_R(s) = m(s) * sign(sum_{k in R}
# s_k) in {-1, 0, 1}. The worst-case adversary removes the b best honest contributions and adds
# -b, so G tolerates b Byzantine nodes iff  sum_R c_R(s) >= 2b + 1  for every pattern s (if fewer
# than b rows contribute +1 the sum is below b anyway). c_R(-s) = c_R(s), so half the patterns
# suffice. A code is a multiset of n rows (node order is irrelevant) and permuting the columns
# (slices) permutes the patterns, so both symmetries are factored out:
#
# * rows are enumerated as a multiset, in non-decreasing order of (weight, sorted column tuple);
# * orderly generation: the first t rows split the columns into cells (the atoms of the Boolean
#   algebra they generate, which are always intervals here); the next row must take, in every
#   cell, an initial segment of the cell. Any code can be brought to this form by a column
#   permutation: given the first t rows, apply the permutation that fixes them (it permutes each
#   cell) and makes the next-smallest row lexicographically least, which takes the smallest
#   columns of every cell; this never breaks the order of the rows already fixed.
#
# Branch and bound on the number of ones, with prunes: (a) the rows still to place each weigh at
# least the current row, so ones_so_far + left * weight < best; (b) each contributes at most 1 to
# every pattern, so min(sum) + left >= 2b + 1; (c) a knapsack bound on the tight patterns
# (|sum_k s_k| = 1, the binding ones): averaged over them a row of weight w contributes a(w) (a
# function of w only, by symmetry), so the rows still to place must supply the average deficit
# with at most the remaining ones.


@dataclass
class SearchResult:
    """Outcome of :func:`search_code`: the best code (None if none exists or none found within the
    budget), its number of ones, whether the search finished (then the code is of least
    redundancy, or no code exists), and statistics."""

    G: np.ndarray | None
    ones: int | None
    complete: bool
    nodes: int
    seconds: float
    n: int
    b: int
    history: list = field(default_factory=list)  # (seconds, ones) each time a better code is found

    @property
    def redundancy(self) -> float | None:
        return None if self.ones is None else self.ones / self.n


class _Budget(Exception):
    pass


def _row_tables(n: int):
    """Candidate rows, sorted by (weight, sorted columns), with their contribution vectors."""
    rows = sorted(range(1, 2**n), key=lambda x: (bin(x).count("1"), [k for k in range(n) if x >> k & 1]))
    masks = np.array(rows, dtype=np.int64)
    R = ((masks[:, None] >> np.arange(n)) & 1).astype(np.int64)  # (rows, n)
    S = _all_patterns(n)
    S = S[S[:, -1] == 1]  # half the patterns (c_R(-s) = c_R(s))
    m = np.sign(S.sum(axis=1))
    keep = m != 0  # even n: ties have no majority to protect
    S, m = S[keep], m[keep]
    C = (np.sign(S @ R.T) * m[:, None]).T.astype(np.int16)  # (rows, patterns)
    a = np.abs(S.sum(axis=1))
    return masks, R.sum(axis=1), C, a == a.min()  # tight: |sum| = 1 (odd n) or 2 (even n)


def search_code(
    n: int,
    b: int,
    max_ones: int | None = None,
    budget_seconds: float | None = None,
    progress=None,
    *,
    _knapsack: bool = True,
) -> SearchResult:
    """Branch and bound for a deterministic (n x n) code with the fewest ones tolerating b
    Byzantine nodes (see the comment above for the method). ``max_ones`` only looks for codes
    with at most that many ones; ``budget_seconds`` stops early (``complete=False``) and returns
    the best code so far. ``progress(message)`` is called when a better code is found.
    (``_knapsack=False`` switches prune (c) off, for cross-checks in the tests.)"""
    n = _check_n(n)
    if n > 11:
        raise ConfigError(f"search is meant for small n (n <= 11; n <= 9 is practical), got n={n}")
    if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 0:
        raise ConfigError(f"number of Byzantine nodes b must be a non-negative integer, got {b!r}")
    b = int(b)
    if max_ones is not None and (isinstance(max_ones, bool) or not isinstance(max_ones, (int, np.integer))):
        raise ConfigError(f"max_ones must be an integer, got {max_ones!r}")
    t0 = time.perf_counter()
    target = 2 * b + 1
    # exclusive bound on the number of ones; the all-ones code (n*n) is always a candidate
    limit = n * n + 1 if max_ones is None else min(int(max_ones), n * n) + 1
    result = SearchResult(None, None, False, 0, 0.0, n, b)
    if n < target:  # even n all-ones rows give a margin of only n
        result.complete = True
        result.seconds = time.perf_counter() - t0
        return result

    masks, weights, C, tight = _row_tables(n)
    index_of = {int(mk): i for i, mk in enumerate(masks)}
    # knapsack bound on the tight patterns: a(w) = summed contribution of a weight-w row over them
    n_tight = int(tight.sum())
    tight_score = C[:, tight].sum(axis=1).astype(np.int64)
    a_w = np.zeros(n + 1, dtype=np.int64)
    for w in range(1, n + 1):
        vals = tight_score[weights == w]
        assert (vals == vals[0]).all()  # by column symmetry
        a_w[w] = vals[0]
    # kn[k, W, w0]: max sum of a() over k rows of weights in [w0, n] with total weight <= W
    NEG = -(10**9)
    kn = np.full((n + 1, n * n + 1, n + 2), NEG, dtype=np.int64)
    kn[0, :, :] = 0
    for k in range(1, n + 1):
        for w0 in range(n, 0, -1):
            for W in range(n * n + 1):
                v = kn[k, W, w0 + 1]
                if W >= w0 and kn[k - 1, W - w0, w0] > NEG:
                    v = max(v, kn[k - 1, W - w0, w0] + a_w[w0])
                kn[k, W, w0] = v
    need_tight = target * n_tight if _knapsack else -(10**9)

    nodes = 0
    deadline = None if budget_seconds is None else t0 + float(budget_seconds)
    chosen: list[int] = []

    def children(cells: list[tuple[int, int]], start: int) -> np.ndarray:
        """Indices >= start of the candidate rows that are initial segments of every cell."""
        out = []
        for lens in itertools.product(*[range(hi - lo + 1) for lo, hi in cells]):
            mk = 0
            for (lo, _hi), ln in zip(cells, lens):
                mk |= ((1 << ln) - 1) << lo
            i = index_of.get(mk, -1)
            if i >= start:
                out.append(i)
        out.sort()
        return np.array(out, dtype=np.int64)

    def refine(cells, mk):
        out = []
        for lo, hi in cells:
            ln = 0
            while lo + ln < hi and (mk >> (lo + ln)) & 1:
                ln += 1
            if 0 < ln < hi - lo:
                out += [(lo, lo + ln), (lo + ln, hi)]
            else:
                out.append((lo, hi))
        return out

    def record(total_ones):
        nonlocal limit
        G = np.array([[int(masks[i]) >> k & 1 for k in range(n)] for i in chosen], dtype=np.int64)
        result.G, result.ones = G, total_ones
        limit = total_ones
        elapsed = time.perf_counter() - t0
        result.history.append((round(elapsed, 3), total_ones))
        if progress is not None:
            progress(f"[{elapsed:7.1f}s] found a code with {total_ones} ones (r={total_ones / n:.4g})")

    def dfs(cells, start, left, ones, S, tscore):
        nonlocal nodes
        nodes += 1
        if deadline is not None and nodes % 256 == 0 and time.perf_counter() > deadline:
            raise _Budget
        cand = children(cells, start)
        w = weights[cand]
        ok = ones + left * w < limit  # (a) this row and the left-1 after it weigh >= w each
        cand, w = cand[ok], w[ok]
        if len(cand) == 0:
            return
        S2 = S[None, :] + C[cand]
        ok = S2.min(axis=1) + (left - 1) >= target  # (b)
        t2 = tscore + tight_score[cand]
        rest = np.clip(limit - 1 - ones - w, 0, n * n)  # ones left for the rows after this one
        ok &= t2 + kn[left - 1, rest, w] >= need_tight  # (c)
        for i, Si, wi, ti in zip(cand[ok], S2[ok], w[ok], t2[ok]):
            if ones + left * wi >= limit:  # the bound may have tightened meanwhile
                break
            chosen.append(int(i))
            if left == 1:
                record(ones + int(wi))
            else:
                dfs(refine(cells, int(masks[i])), int(i), left - 1, ones + int(wi), Si, int(ti))
            chosen.pop()

    try:
        dfs([(0, n)], 0, n, 0, np.zeros(C.shape[1], dtype=np.int16), 0)
        result.complete = True
    except _Budget:
        result.complete = False
    result.nodes = nodes
    result.seconds = time.perf_counter() - t0
    return result


def search(n: int, b: int, max_ones: int | None = None, budget_seconds: float | None = None):
    """The deterministic code of least redundancy tolerating b Byzantine nodes (or the best found
    within ``budget_seconds``), as an (n, n) 0/1 array with rows sorted by weight; None if no code
    exists (n < 2b + 1, or none with at most ``max_ones`` ones). Prints the code found and its
    redundancy. See :func:`search_code` for the full result."""
    res = search_code(n, b, max_ones=max_ones, budget_seconds=budget_seconds)
    _print_search(res)
    return res.G


def _print_search(res: SearchResult, file=None) -> None:
    file = file or sys.stdout
    status = "search complete" if res.complete else "budget exhausted (best so far, not proven least)"
    if res.G is None:
        why = "no code exists" if res.complete else "none found within the budget"
        print(f"n={res.n}, b={res.b}: {why} ({status}; {res.nodes} nodes, {res.seconds:.2f}s)", file=file)
        return
    print(format_code(res.G), file=file)
    least = "least redundancy" if res.complete else "best found"
    print(
        f"n={res.n}, b={res.b}: {least} r={res.redundancy:.4g} ({res.ones} ones); {status}; "
        f"{res.nodes} nodes, {res.seconds:.2f}s",
        file=file,
    )
