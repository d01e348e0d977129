"""The pieces every experiment grid is made of: sizes, the table layout, runs and experiments.

An experiment (:class:`Experiment`) is a list of runs; a run (:class:`Run`) is a set of
:class:`~common.run.config.Config` values (keys are Config field names, so the same names appear
in each run's ``config.json`` and in ``results.csv``). The grids themselves are
:mod:`experiments.grids`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from common.errors import ConfigError

Flags = dict[str, Any]

DIGITS, FMNIST, FULL = "digits", "fmnist", "full"
SIZES = (DIGITS, FMNIST, FULL)

# The papers' clipping radius tau = 10 never binds on digits (MLP messages have norm < 1, so
# CClip would be exactly the mean); 0.5 is about one honest message norm there.
DIGITS_CCLIP_TAU = 0.5
LAST5 = "last5_test_accuracy"
FINAL = "final_test_accuracy"
# ByzFL's heat-map number: the highest evaluation of the accuracy curve averaged over the seeds
# (per run: its best evaluation).
PEAK = "peak_test_accuracy"


@dataclass(frozen=True)
class Layout:
    """How the report arranges an experiment (all entries are Config keys).

    rows/cols: the table (mean +- std over seeds; the heat map uses the same grid).
    facet_rows/facet_cols: the subplot grid of the accuracy-vs-round figure; every other varying
    key becomes one line per subplot. selection: draw Krum's selection histogram. worst: the
    table's last column is each row's worst case over the columns (e.g. attacks).

    worst_over: keys the report takes the worst case over (e.g. the attack): one rows x cols
    table and heat-map panel per facet value (facet_rows x facet_cols), each cell the least
    seed mean over these keys' values and which gave it; a headline table (rows and facet_cols
    against facet_rows, the worst over worst_over and cols); curves are not drawn. versus:
    pairs (attack, fixed attacks) of worst_over values: the cells where the first ends below
    the best of the others.
    """

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    facet_rows: tuple[str, ...] = ()
    facet_cols: tuple[str, ...] = ()
    selection: bool = False
    worst: bool = False
    worst_over: tuple[str, ...] = ()
    versus: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Run:
    """One configuration: ``name`` is its directory under outputs/<experiment>/."""

    name: str
    flags: Flags

    def argv(self, out_dir: str) -> list[str]:
        """The ``main.py`` command line of this run, writing to ``out_dir``."""
        args: list[str] = []
        for k, v in self.flags.items():
            if isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            args += ["--" + k.replace("_", "-"), str(v)]
        return args + ["--output", out_dir, "--no-progress"]


@dataclass(frozen=True)
class Experiment:
    """One experiment of ``bash run.sh NAME``: its runs (base flags x grid cells x seeds) at a
    size, the claim it checks and how the report lays out its table and figures."""

    name: str
    title: str
    claim: str  # the claim of ALGORITHMS.md this experiment checks
    base: Callable[[str], Flags]  # size -> flags shared by every run
    grid: Callable[[str], list[Flags]]  # size -> the varying flags, one dict per cell
    layout: Layout
    seeds: tuple[int, int, int] = (1, 3, 3)  # per size: digits, fmnist, full
    # (cell, size) -> flags a cell implies (e.g. each model's lr), merged after the cell; they
    # are not part of the run name, and the report leaves them out of the table when the
    # layout's keys determine them.
    implied: Callable[[Flags, str], Flags] | None = None
    sizes: tuple[str, ...] = SIZES  # the sizes this experiment has
    metric: str = FINAL  # the number the report's table shows (summary key, LAST5 or PEAK)
    # size -> the cells the grid leaves out and why (the report lists them)
    skipped: Callable[[str], list[tuple[Flags, str]]] | None = None

    def runs(self, size: str = FMNIST, seeds: int | None = None,
             rounds: int | None = None) -> list[Run]:
        """Every run of the grid at ``size``: cells x seeds (``rounds`` overrides the base, for
        smoke tests). ConfigError if the experiment has no such size."""
        if size not in self.sizes:
            raise ConfigError(f"experiment {self.name} has no {size} size; it has: "
                              f"{', '.join(self.sizes)}")
        base = dict(self.base(size))
        if rounds is not None:
            base["rounds"] = rounds
            base["eval_every"] = min(base.get("eval_every", 10), rounds)
        n_seeds = seeds if seeds is not None else self.seeds[SIZES.index(size)]
        out = []
        for cell in self.grid(size):
            extra = self.implied(cell, size) if self.implied else {}
            for s in range(n_seeds):
                flags = {**base, **cell, **extra, "seed": s}
                if size == DIGITS and flags.get("agg") == "cclip":
                    flags.setdefault("cclip_tau", DIGITS_CCLIP_TAU)
                out.append(Run(run_name(cell, s), flags))
        names = [r.name for r in out]
        assert len(set(names)) == len(names), f"{self.name}: duplicate run names"
        return out


def run_name(cell: Flags, seed: int) -> str:
    """Directory name of a cell and seed, e.g. ``partition-noniid__agg-krum__pre-bucketing2__seed-0``."""
    parts = [f"{k}-{v}" for k, v in cell.items()] + [f"seed-{seed}"]
    return "__".join(p.replace(":", "").replace(",", "+").replace("/", "") for p in parts)


def product(**axes: list) -> list[Flags]:
    """All combinations of the axes, in the given key order."""
    keys = list(axes)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(axes[k] for k in keys))]


# Every base starts from these: a grid never depends on the command line's defaults.
NEUTRAL: Flags = dict(partition="iid", attack="none", pre="none", momentum=0.0,
                      momentum_style="heavyball", server_momentum=0.0, weight_decay=0.0)
