"""How close opt-alie / opt-ipm's line search comes to the best factor: on honest stacks captured
from a real run, the distance ``||F(stack) - mu||`` each search setting reaches, as a share of the
largest over a fine grid of factors, per defense F (min / mean over the stacks).

    python bench/opt_search.py                       # Fashion-MNIST MLP if installed, else digits
    python bench/opt_search.py --dataset digits --rounds 20 --defenses none/cm nnm/krum@3

The stacks: the honest messages of 4 rounds (first, 1/5, 1/2, last) of a run with n = 25, f = 5,
lr 0.1, batch 32 under ALIE, for each ``--partitions`` split, captured by an attack registered
here. A setting is (evaluations, start, first step) of :func:`common.attacks.optimal.line_search`
(ratio 0.8); ByzFL's default is (20, 0, 10), the worst-case grids use (10, 1, 1) for ALIE and
(10, 0, 0.5) for IPM. A defense ``pre/agg@f`` (f = 5 if omitted) sees 25 rows: 25 - f honest
ones of the stack and f Byzantine ones; after ``clip:2,nnm`` it sees 10 honest rows (ByzFL's
n = 10 + f) and rfa runs ByzFL's T = 3.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common.run.startup  # noqa: E402,F401  (before torch)

# isort: split
import torch  # noqa: E402

from common.attacks import ATTACKS, Defense  # noqa: E402
from common.attacks.omniscient import ALIE, alie_vector, ipm_vector  # noqa: E402
from common.attacks.optimal import defense_distance, line_search  # noqa: E402
from common.data.datasets import fashionmnist_installed  # noqa: E402
from main import Config, train  # noqa: E402

DEFENSES = ("none/cm", "none/trmean", "none/krum", "none/rfa", "nnm/krum", "nnm/cm", "nnm/trmean",
            "nnm/rfa", "arc/trmean", "arc/cm", "arc/krum", "bucketing:2/cm", "bucketing:2/krum",
            "none/cm@1", "nnm/trmean@1", "none/krum@3", "clip:2,nnm/trmean@4", "clip:2,nnm/rfa@4")
SETTINGS = ((20, 0.0, 10.0), (10, 0.0, 10.0), (10, 0.0, 1.0), (10, 1.0, 1.0), (10, 0.0, 0.5))
GRID = [i / 10 for i in range(41)] + [5, 7, 10, 15, 20, 30, 50, 100, 300, 1e3, 1e4]
STACKS: list[torch.Tensor] = []
CAPTURE: set[int] = set()


@ATTACKS.register
class CaptureALIE(ALIE):
    """ALIE that keeps the honest messages of the rounds in CAPTURE (this script's stacks)."""

    name = "capture-alie"

    def _craft(self, inp, own, out):
        if inp.round in CAPTURE:
            STACKS.append(inp.honest.clone())
        return super()._craft(inp, own, out)


def parse_defense(spec: str) -> tuple[Defense, int]:
    """``pre/agg@f`` -> (the defense, honest rows used): n = 25 rows with f Byzantine."""
    body, _, f = spec.partition("@")
    pre, _, agg = body.rpartition("/")
    f_ = int(f or 5)
    params = {"iters": 3} if agg == "rfa" and "clip" in pre else {}  # ByzFL's T = 3
    honest = 10 if "clip" in pre else 25 - f_
    return Defense(pre, agg, f_, params), honest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashionmnist" if fashionmnist_installed() else "digits")
    p.add_argument("--rounds", type=int, default=150)
    p.add_argument("--partitions", default="iid,noniid")
    p.add_argument("--defenses", nargs="+", default=DEFENSES,
                   help="pre/agg@f ... (default: 18 defenses)")
    a = p.parse_args()
    torch.set_num_threads(1)
    CAPTURE.update({0, a.rounds // 5, a.rounds // 2, a.rounds - 1})
    for part in a.partitions.split(","):
        with tempfile.TemporaryDirectory() as out:
            train(Config(dataset=a.dataset, model="mlp", num_workers=25, num_byzantine=5,
                         partition=part, agg="cm", pre="none", attack="capture-alie",
                         momentum=0.0, lr=0.1, batch_size=32, rounds=a.rounds,
                         eval_every=a.rounds, progress=False), output=out)
    print(f"{len(STACKS)} stacks ({a.dataset}, {a.partitions}, {a.rounds} rounds); per setting "
          "(evals/start/step) the distance reached / the grid's best, min / mean over stacks")
    for name, vector in (("opt-alie", alie_vector), ("opt-ipm", ipm_vector)):
        every: dict[tuple, list[float]] = {s: [] for s in SETTINGS}
        for spec in a.defenses:
            defense, h = parse_defense(spec)
            shares: dict[tuple, list[float]] = {s: [] for s in SETTINGS}
            for stack in STACKS:
                x = stack[:h]

                def score(s: float) -> float:
                    return defense_distance(defense, x, vector(x, s), defense.f, 1234)

                best = max(score(s) for s in GRID)
                for setting in SETTINGS:
                    _, y = line_search(score, *setting, ratio=0.8)
                    shares[setting].append(min(1.0, y / best) if best > 0 else 1.0)
                    every[setting].append(shares[setting][-1])
            print(f"{name:<9}{spec:<22}" + "".join(
                f"  {e}/{s:g}/{d:g}: {min(v):.2f}/{statistics.mean(v):.2f}"
                for (e, s, d), v in shares.items()), flush=True)
        print(f"{name:<9}{'ALL':<22}" + "".join(
            f"  {e}/{s:g}/{d:g}: {min(v):.2f}/{statistics.mean(v):.2f}"
            for (e, s, d), v in every.items()), flush=True)


if __name__ == "__main__":
    main()
