"""The command line of the election codes: ``python -m common.coding {verify,search,known}``."""
from __future__ import annotations

import argparse
import sys

import numpy as np

from common.coding.codes import (
    ATTACKS,
    KNOWN_CODES,
    _as_code,
    bernoulli_code,
    count_failures,
    deterministic_code,
    format_code,
    redundancy,
)
from common.coding.search import _print_search, search_code
from common.errors import ConfigError

__all__ = ["load_code", "main"]

# ---------------------------------------------------------------------------------------------
# I/O and CLI
# ---------------------------------------------------------------------------------------------


def load_code(path: str) -> np.ndarray:
    """Read an allocation matrix: one row per line, whitespace-separated 0/1 (``#`` comments)."""
    try:
        with open(path) as fh:
            lines = [ln.split("#", 1)[0].split() for ln in fh]
    except OSError as e:
        raise ConfigError(f"cannot read code file '{path}': {e.strerror or e}") from None
    rows = [ln for ln in lines if ln]
    if not rows:
        raise ConfigError(f"code file '{path}' holds no rows")
    if len({len(r) for r in rows}) != 1:
        raise ConfigError(f"code file '{path}': rows have different lengths")
    try:
        G = np.array([[int(x) for x in r] for r in rows], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"code file '{path}' must hold whitespace-separated 0/1 entries") from None
    return _as_code(G)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m common.coding",
        description="Election codes for signSGD: verify a code exhaustively or search for one of "
        "least redundancy (see docs/codes.md).",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{verify,search,known}")
    v = sub.add_parser(
        "verify",
        help="count the (pattern, placement) pairs where b Byzantine nodes break the vote",
        description="Exhaustively check a code: every slice sign pattern x every placement of b "
        "Byzantine nodes. Give the code as --n/--r (built-in deterministic code), --file, or "
        "--bernoulli --n --r --seed.",
    )
    v.add_argument("--n", type=int, help="number of nodes (= slices)")
    v.add_argument("--r", type=float, help="redundancy (built-in code, or Bernoulli mean)")
    v.add_argument("--file", help="code file: whitespace-separated 0/1 rows")
    v.add_argument("--bernoulli", action="store_true", help="draw a Bernoulli code (needs --n --r)")
    v.add_argument("--seed", type=int, default=0, help="seed of the Bernoulli draw (default 0)")
    v.add_argument("--b", type=int, default=1, help="number of Byzantine nodes (default 1)")
    v.add_argument(
        "--attack", choices=ATTACKS, default="worst",
        help="Byzantine votes: worst = opposite of the true majority (default; the worst case "
        "over all attacks), reverse = minus own vote, directional = -1, abstain = 0",
    )
    v.add_argument("--detail", action="store_true", help="also print failures per placement")
    s = sub.add_parser(
        "search",
        help="find a deterministic code of least redundancy tolerating b Byzantine nodes",
        description="Symmetry-reduced branch and bound over multisets of rows (n <= 9 is "
        "practical). Prints the best code found and whether it is proven least.",
    )
    s.add_argument("--n", type=int, required=True, help="number of nodes (= slices)")
    s.add_argument("--b", type=int, required=True, help="number of Byzantine nodes to tolerate")
    s.add_argument("--max-ones", type=int, default=None, help="only codes with at most this many ones")
    s.add_argument(
        "--budget-seconds", type=float, default=None,
        help="stop after this many seconds and print the best code so far (default: no limit)",
    )
    s.add_argument("--quiet", action="store_true", help="do not report intermediate codes")
    sub.add_parser("known", help="list the built-in deterministic codes")
    return p


def _cmd_verify(args) -> int:
    if args.file:
        if args.bernoulli or args.r is not None:
            raise ConfigError("give either --file or --n/--r (with optional --bernoulli), not both")
        G = load_code(args.file)
        label = f"G from {args.file}"
    else:
        if args.n is None or args.r is None:
            raise ConfigError("verify needs --file, or --n and --r (add --bernoulli for a random code)")
        if args.bernoulli:
            G = bernoulli_code(args.n, args.r, np.random.default_rng(args.seed))
            label = f"Bernoulli G (seed={args.seed})"
        else:
            G = deterministic_code(args.n, args.r)
            label = "G"
    n = G.shape[0]
    if args.b < 0 or args.b > n:
        raise ConfigError(f"--b must lie in [0, n] = [0, {n}], got {args.b}")
    res = count_failures(G, args.b, args.attack)
    print(format_code(G))
    attack = "" if args.attack == "worst" else f", attack={args.attack}"
    print(
        f"{label} (n={n}, r={redundancy(G):.2f}): {res.failures} of {res.total} (pattern, placement) "
        f"pairs break the vote (b={args.b}{attack})"
    )
    if args.detail:
        for pl, cnt in res.per_placement.items():
            print(f"  Byzantine nodes {list(pl)}: {cnt} of {res.patterns_per_placement} patterns")
    return 0


def _cmd_search(args) -> int:
    if args.budget_seconds is not None and not args.budget_seconds > 0:
        raise ConfigError(f"--budget-seconds must be positive, got {args.budget_seconds}")
    progress = None if args.quiet else (lambda msg: print(msg, flush=True))
    res = search_code(args.n, args.b, max_ones=args.max_ones, budget_seconds=args.budget_seconds,
                      progress=progress)
    _print_search(res)
    if res.G is not None:
        fc = count_failures(res.G, args.b)
        print(f"verified: {fc.failures} of {fc.total} (pattern, placement) pairs break the vote")
    return 0


def _cmd_known(args) -> int:
    print("r=1: identity (plain signSGD-MV), any n; tolerates b=0")
    print("r=n: all ones, any n; tolerates b=(n-1)//2")
    print("r=n-1-1/n: odd n >= 5, rows e_0, (0,1,...,1,0) and n-2 all-ones rows; tolerates b=(n-3)/2")
    for (n, ones), code in sorted(KNOWN_CODES.items()):
        least = "least for its b" if code["least"] else "not proven least"
        print(f"n={n}, r={ones / n:.4g} ({ones} ones), tolerates b={code['b']} ({least}): {code['source']}")
        print("  " + "\n  ".join(" ".join(row) for row in (map(str, r) for r in code["rows"])))
    return 0


def main(argv=None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return {"verify": _cmd_verify, "search": _cmd_search, "known": _cmd_known}[args.cmd](args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
