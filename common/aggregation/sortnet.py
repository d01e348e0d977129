"""Order statistics along dim 0 of a wide (n, d) tensor by a pruned Batcher sorting network.

The coordinate-wise median, the trimmed mean and Bulyan's second phase need, per column, a few
sorted positions of n values. A sorting network gets them with elementwise ``minimum`` /
``maximum`` of whole rows and no data-dependent control flow, so it vectorises over the d
columns; comparators that the requested positions do not depend on are pruned.

Three executions of the same network:

- native (default for float32 on CPU): :func:`common.aggregation.native.network_reduce`, a C kernel that
  copies a block of up to 128 columns of all n rows into L1 and runs the comparators there. At
  (25, 1e6) float32 on one thread: cm 14 ms, trmean 17 ms (a memory pass: 4 ms).
- eager (other dtypes, or no C compiler): over column chunks small enough to stay in cache,
  one torch call per comparator and chunk: cm 45 ms, trmean 46 ms; its cost is mostly torch's
  per-call overhead (``torch.median``: 450 ms).
- compiled (``compiled=True``, n <= :data:`COMPILE_MAX_N`): the whole network as one
  ``torch.compile`` kernel that reads every row once and keeps the n values of a column in
  registers: cm 9 ms, trmean 10 ms. Compiling costs seconds (once per process and
  (n, positions, combine); the column count is dynamic), so the server turns it on only for
  long runs (``--compile-rules``). If compiling fails (e.g. no C++ compiler), a warning is
  printed once and the native or eager network runs instead.

``combine`` specs say what to do with the selected sorted rows: ``("pick",)`` the single
position; ``("halves",)`` ``0.5 a + 0.5 b`` (overflow-safe mean of two); ``("mean",)`` the
mean of the positions; ``("window", beta)`` Bulyan's mean of the beta values closest to the
median (:func:`closest_window_mean`). The eager and compiled executions run the same Python
code on rows; the native kernel implements the same four combines (tests/test_native.py checks
it against the eager network bit for bit).

Reference: K. E. Batcher, "Sorting networks and their applications", AFIPS 1968.
"""
from __future__ import annotations

import functools
import types
import warnings
from typing import Callable

import torch
from torch import Tensor

from common.aggregation import native

MIN_D = 2048  # narrower inputs: torch.median/kthvalue/sort are as fast
MAX_N = 128  # measured: still 2x faster than torch.median at n = 128, d = 2e5
COMPILE_MAX_N = 32  # n = 100: ~900 comparators, 60 s to compile, only 1.3x faster than eager
# Eager path: columns per chunk so that the n row chunks (and the network's temporaries) stay
# in the last-level cache while the per-call overhead is spread over as many columns as
# possible. Measured for cm at (25, 1e6) / (10, 2e6) / (100, 1e5): 64 KiB rows 57 / 32 / 48 ms,
# 256 KiB rows 44 / 23 / 52 ms, 1 MiB rows 62 / 28 / 55 ms; hence ~6 MiB over all rows.
CHUNK_SET_BYTES = 6 << 20
CHUNK_ROW_BYTES = (64 << 10, 256 << 10)  # (min, max) bytes of one row's chunk

Combine = tuple  # ("pick",) | ("halves",) | ("mean",) | ("window", beta)


@functools.lru_cache(maxsize=None)
def batcher_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for n wires.

    Built for the next power of two p >= n; comparators touching a wire >= n are dropped, which
    is exact because the missing wires behave as +inf padding at the end.
    """
    p = 1
    while p < n:
        p *= 2
    comps = []
    q = 1
    while q < p:
        k = q
        while k >= 1:
            for j in range(k % q, p - k, 2 * k):
                for i in range(min(k, p - j - k)):
                    if (i + j) // (2 * q) == (i + j + k) // (2 * q):
                        comps.append((i + j, i + j + k))
            k //= 2
        q *= 2
    return tuple((a, b) for a, b in comps if b < n)


@functools.lru_cache(maxsize=None)
def pruned_network(n: int, outputs: tuple[int, ...],
                   symmetric: bool = False) -> tuple[tuple[int, int], ...]:
    """The comparators of the n-wire sorting network that the sorted positions ``outputs``
    depend on.

    With ``symmetric=True`` the caller only uses a symmetric function of those positions (their
    sum), so a comparator between two such wires that no later kept comparator reads is dropped
    as well (it only permutes values inside the set).
    """
    sym = set(outputs) if symmetric else set()
    need = set() if symmetric else set(outputs)
    kept = []
    for a, b in reversed(batcher_network(n)):
        if a in sym and b in sym:
            continue
        if a in sym or b in sym or a in need or b in need:
            kept.append((a, b))
            sym.discard(a)
            sym.discard(b)
            need.update((a, b))
    return tuple(reversed(kept))


def use_network(x: Tensor) -> bool:
    """Whether the network beats torch's sort-based kernels on x (CPU, wide, 3 <= n <= MAX_N)."""
    return x.device.type == "cpu" and x.shape[1] >= MIN_D and 3 <= x.shape[0] <= MAX_N


def sum_rows(rows: list[Tensor]) -> Tensor:
    """rows[0] + rows[1] + ... in that order, into a new tensor."""
    acc = rows[0].clone()
    for r in rows[1:]:
        acc.add_(r)
    return acc


def closest_window_mean(r: list[Tensor], beta: int) -> Tensor:
    """Per coordinate of the sorted rows r[0] <= ... <= r[theta-1]: the mean of the beta values
    closest to the median.

    Those values form a contiguous window of the sorted values; the window j (rows j ..
    j+beta-1) of least max-distance ``max(med - r_j, r_{j+beta-1} - med)`` is taken (ties:
    lowest j). The rows every window holds (``theta - beta .. beta - 1``) are summed once, and
    each window's sum is that core plus its own end rows, added directly (no running
    differences, which would lose precision next to huge values; the native kernel adds in the
    same order); every operation is elementwise on single rows.
    """
    theta = len(r)
    if theta % 2:
        med = r[theta // 2]
    else:
        med = 0.5 * r[theta // 2 - 1] + 0.5 * r[theta // 2]
    c_lo, c_hi = theta - beta, beta  # the core: rows in every window (empty if c_lo >= c_hi)
    core = sum_rows(r[c_lo:c_hi]) if c_lo < c_hi else None
    best_cost = best_sum = None
    for j in range(theta - beta + 1):
        cost = torch.maximum(med - r[j], r[j + beta - 1] - med)
        if core is None:
            total = sum_rows(r[j:j + beta])
        else:
            total = sum_rows([core, *r[j:c_lo], *r[c_hi:j + beta]])
        if best_cost is None:
            best_cost, best_sum = cost, total
        else:
            better = cost < best_cost
            best_cost = torch.where(better, cost, best_cost)
            best_sum = torch.where(better, total, best_sum)
    return best_sum.div_(beta)


def combine(spec: Combine, rows: list[Tensor]) -> Tensor:
    """Apply a combine spec (module docstring) to the selected sorted rows."""
    kind = spec[0]
    if kind == "pick":
        return rows[0]
    if kind == "halves":
        return 0.5 * rows[0] + 0.5 * rows[1]
    if kind == "mean":
        return sum_rows(rows).mul_(1.0 / len(rows))
    if kind == "window":
        return closest_window_mean(rows, spec[1])
    raise ValueError(f"unknown combine spec {spec!r}")


def _run_network(rows: list[Tensor], comps, positions: tuple[int, ...], spec: Combine) -> Tensor:
    for a, b in comps:
        ra, rb = rows[a], rows[b]
        rows[a] = torch.minimum(ra, rb)
        rows[b] = torch.maximum(ra, rb)
    return combine(spec, [rows[p] for p in positions])


def network_reduce(x: Tensor, positions: tuple[int, ...], spec: Combine,
                   symmetric: bool = False, compiled: bool = False) -> Tensor:
    """Per column of x, ``combine(spec, [sorted value at p for p in positions])``.

    ``symmetric``: the combine is symmetric in its arguments (see :func:`pruned_network`).
    ``compiled``: run the network as one compiled kernel when n <= COMPILE_MAX_N (falls back to
    the eager network if compiling fails).
    """
    n, d = x.shape
    if compiled and n <= COMPILE_MAX_N and not _COMPILE_FAILED:
        try:
            return _compiled(n, positions, spec, symmetric)(x)
        except Exception as e:  # noqa: BLE001 -- any compiler failure: warn once, go eager
            _disable_compile(e)
    comps = pruned_network(n, positions, symmetric)
    out = native.network_reduce(x, comps, positions, spec)
    if out is not None:
        return out
    lo, hi = CHUNK_ROW_BYTES
    chunk = min(max(CHUNK_SET_BYTES // n, lo), hi) // x.element_size()
    out = torch.empty(d, dtype=x.dtype, device=x.device)
    for s in range(0, d, chunk):
        out[s:s + chunk] = _run_network([x[i, s:s + chunk] for i in range(n)], comps,
                                        positions, spec)
    return out


_COMPILE_FAILED: list[str] = []


def _disable_compile(e: Exception) -> None:
    if not _COMPILE_FAILED:
        warnings.warn(f"torch.compile of the sorting network failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); using the eager network",
                      RuntimeWarning, stacklevel=3)
    _COMPILE_FAILED.append(repr(e))


@functools.lru_cache(maxsize=None)
def _compiled(n: int, positions: tuple[int, ...], spec: Combine,
              symmetric: bool) -> Callable[[Tensor], Tensor]:
    comps = pruned_network(n, positions, symmetric)

    def run(x: Tensor) -> Tensor:
        return _run_network(list(x.unbind(0)), comps, positions, spec)

    # Dynamo caches compiled graphs per code object, with a limit of 8 per object; a fresh code
    # object per network keeps networks from different n or combines from sharing that limit.
    code = run.__code__.replace(co_name=f"sortnet_{n}_{spec[0]}")
    fresh = types.FunctionType(code, run.__globals__, code.co_name, None, run.__closure__)
    return torch.compile(fresh, dynamic=True, fullgraph=True)
