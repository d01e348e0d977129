"""Time every message attack's ``craft`` on float32 stacks: f Byzantine rows crafted from the h
honest messages of one round.

    python bench/attacks.py                              # (n, d) = (25, 1e6), f = 5, one thread
    python bench/attacks.py --sizes 25x1000000,100x100000 --threads 0

Per attack: the median wall time of one round's crafting, its multiple of one memory pass over
the honest stack (``mean``: the honest mean), and what it logs (e.g. minmax's gamma). Per-worker
random attacks (gaussian, fang) are called once per Byzantine row, as the workers call them.
labelflip and backdoor change the data; their rows here are the message step only. opt-alie and
opt-ipm evaluate the defense (``--agg``, ``--pre``) k = ``evals`` times per round (20 by default,
``--evals`` sets it): their time is k calls of the chain and the rule, and their row says k.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common.run.startup  # noqa: E402,F401  (before torch)

# isort: split
import torch  # noqa: E402

from common.attacks import AttackInput, Defense, attack_names, make_attack  # noqa: E402

# sign-vote attacks (the sign protocol's), a data layout, and honest behaviour
SKIP = {"none", "reverse", "directional", "random", "mimic2"}


def median_time(fn, reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="25x1000000", help="comma-separated NxD (n workers, d)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--agg", default="cm", help="the defense opt-alie / opt-ipm aim at")
    p.add_argument("--pre", default="none", help="its pre-aggregator chain")
    p.add_argument("--evals", type=int, default=20,
                   help="k: the defense evaluations of opt-alie / opt-ipm per round")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); defense (opt-*): "
          f"--pre {a.pre} --agg {a.agg}")
    for size in a.sizes.split(","):
        n, d = (int(v) for v in size.lower().split("x"))
        f = max(1, n // 5)
        g = torch.Generator().manual_seed(0)
        honest = torch.randn(n - f, d, generator=g).add_(0.1)
        own = torch.randn(f, d, generator=g)
        print(f"\n(n, d) = ({n}, {d}), f = {f}: {n - f} honest rows, median of {a.reps}")
        print(f"{'attack':<12}{'ms':>9}{'x mean':>8}  info")
        t_mean, _ = median_time(lambda: honest.mean(dim=0), a.reps)
        print(f"{'(mean)':<12}{1e3 * t_mean:>9.1f}{1.0:>8.2f}")
        for name in attack_names():
            if name in SKIP:
                continue
            params = {"evals": a.evals} if name.startswith("opt-") else {}
            atk = make_attack(name, n, f, 10, **params)
            atk.bind(Defense(a.pre, a.agg, f))
            # as the workers call it: once per Byzantine row for per-worker random attacks
            parts = [own[j:j + 1] for j in range(f)] if atk.per_worker_random else [own]

            def run():
                return [atk.craft(AttackInput(o, honest, n, 0, torch.Generator().manual_seed(1)))
                        for o in parts]

            t, _ = median_time(run, a.reps)
            info = ", ".join([f"k={a.evals} rule calls"] * bool(params) +
                             [f"{k}={v:.3g}" for k, v in atk.info.items()
                              if isinstance(v, (int, float))])
            print(f"{name:<12}{1e3 * t:>9.1f}{t / t_mean:>8.2f}  {info}", flush=True)


if __name__ == "__main__":
    main()
