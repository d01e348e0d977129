"""Time every robust rule and pre-aggregator on float32 (n, d) stacks, side by side with ByzFL.

    python bench/rules.py                         # (10, 2e6), (25, 1e6), (100, 1e5)
    python bench/rules.py --sizes 25x1000000 --reps 7 --threads 1
    python bench/rules.py --only dnc,flame        # some rows only (and mean, the baseline)
    pip install -r bench/requirements.txt         # optional: the ByzFL column (pip install byzfl)

For each size it prints the median wall time of ours, the ratio to ``mean`` (one memory pass over
the stack: the floor), ByzFL's median on the same input and ByzFL/ours, and whether both agree
numerically where their definitions match:

- krum / multikrum: ByzFL scores a row by its n-f-1 nearest neighbours (we default to n-f-2,
  Blanchard et al.), so ours is called with neighbours = n-f-1 for the comparison; multikrum
  averages m = n-f rows in both.
- cm: ByzFL uses ``torch.quantile(q=0.5)`` (same value: the mean of the two middle values for
  even n).
- rfa: ByzFL's GeometricMedian(nu, T) is the same smoothed Weiszfeld from z = 0; T = 8 here.
- cclip: ByzFL's CenteredClipping(L=3, tau=10) from m = 0 equals our first round.
- bucketing:2: ByzFL permutes with the global torch RNG; seeding it with the seed of our
  generator gives the same permutation, hence the same buckets.
- nnm: same definition (n-f nearest, itself included); ByzFL ranks by cdist.
The pre-aggregator rows time the server's stages (``make_chain``), which write into an output
buffer kept from round to round; ``nnm(fresh output)`` is the pure function ``preagg.nnm``,
which allocates its (n, d) output on every call (fresh pages: about 10 ms per 100 MB here).
- trmean: same definition (b = f).
- clip:2 / arc: the same definitions; meamed (odd n), monna (pivot 0) and mda (ties: the first
  subset in lexicographic order) likewise.
ByzFL 0.0.11 has no Bulyan, sign majority or resampling; those rows have no ByzFL column, nor do
caf and smea (ByzFL's estimate their eigenvalues with one power step from a random vector), nor
dnc, signguard, clippedclustering, flame and fltrust (not in ByzFL 0.0.11); fltrust is timed with
g0 = row 0 (``fltrust(g0=x0)``): the server's root-set gradient is one backward pass, timed by
bench/rounds.py.
``NAME+compile`` rows (n <= 32): the sorting network as one compiled kernel (``--compile-rules``);
the line also gives the first call's time, which includes compiling.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common.run.startup  # noqa: E402,F401  (before torch)

# isort: split
import torch  # noqa: E402

from common.aggregation import native, preagg, rules, sortnet
from common.aggregation.rules.clippedclustering import clipped_clustering
from common.aggregation.rules.dnc import dnc
from common.aggregation.rules.flame import flame
from common.aggregation.rules.signguard import signguard
from common.protocols.fltrust import fltrust

DEFAULT_SIZES = ((10, 2_000_000), (25, 1_000_000), (100, 100_000))


def f_for(n: int) -> int:
    """Byzantine count assumed per size: n // 5 (2, 5, 20)."""
    return max(1, n // 5)


def timeit(fn, reps: int, fresh=None) -> tuple[float, object, float]:
    """(median time, output, warm-up time); the warm-up call also compiles, where a rule does.
    ``fresh``: called untimed before each call, its result is fn's argument (an input that fn
    overwrites, made anew for every call)."""
    def call():
        arg = fresh() if fresh else None
        t = time.perf_counter()
        out = fn(arg) if fresh else fn()
        return time.perf_counter() - t, out

    warm, out = call()  # warm-up (also the value checked for agreement)
    return statistics.median(call()[0] for _ in range(reps)), out, warm


def stage(spec: str, n: int, f: int, g):
    """The pre-aggregator as the server runs it (``make_chain``)."""
    st = preagg.make_chain(spec, n, f)
    return lambda x: st(x, g())


def ours(n: int, d: int, f: int) -> dict:
    """name -> (callable on x, description)."""
    fb = min(f, (n - 3) // 4)
    def g():
        return torch.Generator().manual_seed(0)

    impls = {
        "mean": lambda x: rules.mean(x),
        "krum": lambda x: rules.krum(x, f, neighbours=n - f - 1),
        "multikrum": lambda x: rules.multikrum(x, f, m=n - f, neighbours=n - f - 1),
        "cm": lambda x: rules.coordinate_median(x),
        "trmean": lambda x: rules.trimmed_mean(x, f),
        "rfa": lambda x: rules.geometric_median(x, iters=8, nu=0.1),
        "cclip": lambda x: rules.make_rule("cclip", n, f, tau=10.0, iters=3)(x),
        f"bulyan(f={fb})": lambda x: rules.bulyan(x, fb),
        "signmv": lambda x: rules.sign_majority(x),
        # the server's stages, which keep their output buffer from round to round
        "bucketing:2": stage("bucketing:2", n, f, g),
        "resampling:2": stage("resampling:2", n, f, g),
        "nnm": stage("nnm", n, f, g),
        "nnm(fresh output)": lambda x: preagg.nnm(x, f),
        "clip:2": stage("clip:2", n, f, g),
        "arc": stage("arc", n, f, g),
        "meamed": lambda x: rules.meamed(x, f),
        "monna": lambda x: rules.monna(x, f, 0),
        "caf": lambda x: rules.caf(x, f),
        "dnc": lambda x: dnc(x, f, generator=g()),
        "signguard": lambda x: signguard(x, generator=g()),
        "clippedclustering": lambda x: clipped_clustering(x, tau=1e5),
        "flame": lambda x: flame(x, generator=g()),
        "fltrust(g0=x0)": lambda x: fltrust(x, x[0]),
    }
    if f <= rules.MAX_F:                      # mda's exact search (2^(f+1) nodes)
        impls["mda"] = lambda x: rules.mda(x, f)
    if math.comb(n, f) <= rules.MAX_SUBSETS:  # smea's exact search
        impls["smea"] = lambda x: rules.smea(x, f)
    if n <= sortnet.COMPILE_MAX_N:  # the sorting network as one torch.compile kernel
        impls["cm+compile"] = lambda x: rules.coordinate_median(x, compiled=True)
        impls["trmean+compile"] = lambda x: rules.trimmed_mean(x, f, compiled=True)
        impls[f"bulyan+compile(f={fb})"] = lambda x: rules.bulyan(x, fb, compiled=True)
    return impls


# ByzFL's clipping stages overwrite their input's rows: each timed call gets a fresh copy, made
# outside the timed region (ours write a separate output, as a chain stage must).
BYZFL_IN_PLACE = {"clip:2", "arc"}


def byzfl_impls(n: int, f: int) -> dict:
    try:
        import byzfl  # noqa: PLC0415 - optional, bench-only dependency
    except ImportError:
        return {}

    def bucketing(x):
        torch.manual_seed(0)  # same permutation as torch.Generator().manual_seed(0)
        return byzfl.Bucketing(s=2)(x)

    return {
        "mean": lambda x: byzfl.Average()(x),
        "krum": lambda x: byzfl.Krum(f=f)(x),
        "multikrum": lambda x: byzfl.MultiKrum(f=f)(x),
        "cm": lambda x: byzfl.Median()(x),
        "trmean": lambda x: byzfl.TrMean(f=f)(x),
        "rfa": lambda x: byzfl.GeometricMedian(nu=0.1, T=8)(x),
        "cclip": lambda x: byzfl.CenteredClipping(L=3, tau=10.0)(x),
        "bucketing:2": bucketing,
        "nnm": lambda x: byzfl.NNM(f=f)(x),
        "clip:2": lambda x: byzfl.Clipping(c=2.0)(x),  # in place: see BYZFL_IN_PLACE
        "arc": lambda x: byzfl.ARC(f=f)(x),
        "monna": lambda x: byzfl.MoNNA(f=f, idx=0)(x),
        # meamed only for odd n (ByzFL's even-n median is the lower middle value); MDA only
        # where ByzFL's enumeration of C(n, f) subsets stays under a minute; ByzFL's CAF and
        # SMEA estimate eigenvalues from a random vector (no agreement to check; SMEA's
        # enumeration with d-dimensional power steps would take hours at these sizes)
        **({"meamed": lambda x: byzfl.Meamed(f=f)(x)} if n % 2 else {}),
        **({"mda": lambda x: byzfl.MDA(f=f)(x)} if math.comb(n, f) <= 60_000 else {}),
    }


def make_stack(n: int, d: int, f: int) -> torch.Tensor:
    """Honest row i ~ 1 + (1 + i/n) N(0, 1); the last f rows far away, -5 + 3 N(0, 1).

    The honest rows' distinct spreads keep pairwise distances apart by much more than float32
    rounding, so Krum's choice and NNM's neighbour sets have no near-ties and both libraries
    must pick the same rows.
    """
    g = torch.Generator().manual_seed(n * 7 + d)
    x = torch.randn(n, d, generator=g)
    x.mul_(1.0 + torch.arange(n, dtype=torch.float32)[:, None] / n).add_(1.0)
    x[n - f:] = torch.randn(f, d, generator=g).mul_(3.0).sub_(5.0)
    return x


def agree(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> str:
    """Max abs difference within 1e-5 of the input's largest magnitude (float32 summation
    order differs between the libraries)."""
    a, b = a.double(), b.double().reshape(a.shape)
    err = float((a - b).abs().max())
    return "yes" if err <= 1e-5 * float(x.abs().max()) else f"NO (max err {err:.2e})"


def run(sizes, reps: int, byz_reps: int, skip_byzfl: bool, only: list[str] = ()) -> None:
    try:
        import byzfl  # noqa: PLC0415 - optional, bench-only dependency
        have_byzfl = not skip_byzfl
        version = getattr(byzfl, "__version__", None) or importlib.metadata.version("byzfl")
    except ImportError:
        have_byzfl, version = False, None
    kernels = "on" if native.library() is not None else "off (BYZROBUST_NATIVE=0 or no compiler)"
    if have_byzfl:
        byzfl_state = version
    elif version is not None:
        byzfl_state = f"{version}, not run (--no-byzfl)"
    else:
        byzfl_state = "not installed (pip install -r bench/requirements.txt)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); native kernels: "
          f"{kernels}; ByzFL: {byzfl_state}")
    for n, d in sizes:
        f = f_for(n)
        x = make_stack(n, d, f)
        impls = ours(n, d, f)
        if only:
            impls = {k: v for k, v in impls.items() if k == "mean" or k.split("(")[0] in only}
        theirs = byzfl_impls(n, f) if have_byzfl else {}
        mb = x.numel() * 4 / 2**20
        print(f"\n(n, d) = ({n}, {d}), f = {f}, stack {mb:.0f} MiB, median of {reps} "
              f"(ByzFL: {byz_reps})")
        print(f"{'rule':<22}{'ours ms':>10}{'x mean':>8}{'ByzFL ms':>11}{'ByzFL/ours':>12}  agree")
        t_mean = None
        for name, fn in impls.items():
            t, out, warm = timeit(lambda: fn(x), reps)
            if name == "mean":
                t_mean = t
            line = f"{name:<22}{1e3 * t:>10.1f}{t / t_mean:>8.2f}"
            key = name.split("(")[0].split("+")[0]
            if key in theirs:
                try:
                    if key in BYZFL_IN_PLACE:
                        tb, out_b, _ = timeit(theirs[key], byz_reps, fresh=x.clone)
                    else:
                        tb, out_b, _ = timeit(lambda: theirs[key](x), byz_reps)
                    line += f"{1e3 * tb:>11.1f}{tb / t:>12.1f}  {agree(out, out_b, x)}"
                except Exception as e:  # ByzFL's own limits, e.g. torch.quantile's 16M cap
                    msg = str(e).split("\n")[0][:60]
                    line += f"{'failed':>11}{'':>12}  ({type(e).__name__}: {msg})"
            if "+compile" in name:
                line += f"  (first call, compiling: {warm:.1f} s)"
            print(line, flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(f"{n}x{d}" for n, d in DEFAULT_SIZES),
                   help="comma-separated NxD, e.g. 25x1000000,100x100000")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of ours (median)")
    p.add_argument("--byzfl-reps", type=int, default=3, help="timed repetitions of ByzFL")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-byzfl", action="store_true", help="skip the ByzFL column")
    p.add_argument("--only", default="", help="comma-separated rows to time (mean always is)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sizes = [tuple(int(float(v)) for v in s.lower().split("x")) for s in a.sizes.split(",")]
    run(sizes, a.reps, a.byzfl_reps, a.no_byzfl, [r for r in a.only.split(",") if r])


if __name__ == "__main__":
    main()
