"""How large an input the exact subset searches of ``mda`` and ``smea`` handle in one second.

    python bench/exact_search.py                       # d = 1e5, f = n // 5 and f = 2
    python bench/exact_search.py --d 1000000 --threads 1

mda branches on the farthest pair (at most 2^(f+1) - 1 nodes per pass, whatever n), so its time
grows with f; smea scores all C(n, f) subsets, so its time grows with C(n, f). For each f rule
(f = n // 5, the bench's setting, and a fixed f) it prints each rule's median time per call as n
grows, stopping a rule past the time budget or its limit, and the largest n within the budget.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common.run.startup  # noqa: E402,F401  (before torch)

# isort: split
import torch  # noqa: E402

from common.aggregation.rules import MAX_F, MAX_SUBSETS, mda, smea  # noqa: E402

MAX_N = 400  # the sweep stops here
RULES = {"mda": (mda, lambda n, f: f <= MAX_F),
         "smea": (smea, lambda n, f: math.comb(n, f) <= MAX_SUBSETS)}


def grow(n: int) -> int:
    """The next n tried: steps of 5 up to 50, then about 20 % (multiples of 5)."""
    return n + 5 if n < 50 else n + max(5, n // 5 // 5 * 5)


def seconds(fn, x, f: int, reps: int) -> float:
    fn(x, f)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn(x, f)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=100_000, help="coordinates per row")
    p.add_argument("--fixed-f", type=int, default=2, help="the second f rule: this f for every n")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per call")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    print(f"d = {a.d}, {torch.get_num_threads()} thread(s), budget {a.budget} s per call")
    for label, f_of in [("f = n // 5", lambda n: n // 5), (f"f = {a.fixed_f}", lambda n: a.fixed_f)]:
        for name, (fn, allowed) in RULES.items():
            best, n, line = None, 5, []
            while n <= MAX_N:
                f = f_of(n)
                if 2 * f >= n:
                    n = grow(n)
                    continue
                if not allowed(n, f):
                    line.append(f"n={n}: over its limit")
                    break
                x = torch.randn(n, a.d, generator=g)
                t = seconds(fn, x, f, a.reps)
                line.append(f"n={n}: {t * 1e3:.0f} ms")
                if t > a.budget:
                    break
                best = n
                n = grow(n)
            cap = " (the end of the sweep)" if best is not None and grow(best) > MAX_N else ""
            print(f"{name:5} ({label}): largest n within {a.budget} s: {best}{cap}\n    "
                  + ", ".join(line))


if __name__ == "__main__":
    main()
