"""The experiment grids behind ``bash run.sh NAME``.

An experiment is a list of runs; a run is a set of :class:`~common.config.Config` values (keys are
Config field names, so the same names appear in each run's ``config.json`` and in
``results.csv``). Every experiment has a CPU size (digits + MLP or softmax, 100-200 rounds,
seconds per run) and a paper size (``FULL=1``: MNIST CNN / CIFAR-10 ResNet, more rounds and
seeds). The :class:`Layout` says how :mod:`common.report` arranges the table and figures.

CPU sizes use ``--momentum-style ema`` (m = beta m + (1-beta) g) with lr 0.1: for beta = 0.9 this
is the bucketing paper's heavy-ball momentum (m = beta m + g) at lr 0.01, and at beta = 0 both
styles are plain SGD, so one lr serves both momentum values of a grid.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable

from common.errors import unknown_name

Flags = dict[str, Any]

# The papers' clipping radius tau = 10 never binds at CPU size (digits MLP messages have norm < 1,
# so CClip would be exactly the mean); 0.5 is about one honest message norm.
CPU_CCLIP_TAU = 0.5


@dataclass(frozen=True)
class Layout:
    """How the report arranges an experiment (all entries are Config keys).

    rows/cols: the table (mean +- std of final accuracy over seeds; the heat map uses the same
    grid). facet_rows/facet_cols: the subplot grid of the accuracy-vs-round figure; every other
    varying key becomes one line per subplot. selection: draw Krum's selection histogram.
    worst: the table's last column is each row's worst case over the columns (e.g. attacks).
    """

    rows: tuple[str, ...]
    cols: tuple[str, ...]
    facet_rows: tuple[str, ...] = ()
    facet_cols: tuple[str, ...] = ()
    selection: bool = False
    worst: bool = False


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
    """One experiment of ``bash run.sh NAME``: its runs (base flags x grid cells x seeds), the
    claim it checks and how the report lays out its table and figures."""

    name: str
    title: str
    claim: str  # the claim of ALGORITHMS.md this experiment checks
    base: Callable[[bool], Flags]  # full -> flags shared by every run
    grid: Callable[[bool], list[Flags]]  # full -> the varying flags, one dict per cell
    layout: Layout
    seeds: tuple[int, int] = (1, 3)  # (CPU, FULL) number of seeds
    # (cell, full) -> flags a cell implies (e.g. each model's lr), merged after the cell; they
    # are not part of the run name, and the report leaves them out of the table when the
    # layout's keys determine them.
    implied: Callable[[Flags, bool], Flags] | None = None

    def runs(self, full: bool = False, seeds: int | None = None,
             rounds: int | None = None) -> list[Run]:
        """Every run of the grid: cells x seeds (``rounds`` overrides the base, for smoke tests)."""
        base = dict(self.base(full))
        if rounds is not None:
            base["rounds"] = rounds
            base["eval_every"] = min(base.get("eval_every", 10), rounds)
        n_seeds = seeds if seeds is not None else self.seeds[1 if full else 0]
        out = []
        for cell in self.grid(full):
            extra = self.implied(cell, full) if self.implied else {}
            for s in range(n_seeds):
                flags = {**base, **cell, **extra, "seed": s}
                if not full and flags.get("agg") == "cclip":
                    flags.setdefault("cclip_tau", CPU_CCLIP_TAU)
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


# ----------------------------------------------------------------------------------------------
# Shared settings

def bucketing_base(full: bool) -> Flags:
    """The bucketing paper's setting: n = 25 workers, batch 32, no worker momentum by default."""
    if full:
        return dict(dataset="mnist", model="cnn", num_workers=25, num_byzantine=5, batch_size=32,
                    lr=0.01, momentum=0.0, momentum_style="heavyball", rounds=1500,
                    eval_every=50, pre="none")
    return dict(dataset="digits", model="mlp", num_workers=25, num_byzantine=5, batch_size=32,
                lr=0.1, momentum=0.0, momentum_style="ema", rounds=100, eval_every=5, pre="none")


RULES = ["mean", "krum", "cm", "rfa", "trmean", "cclip"]


def _noattack_base(full: bool) -> Flags:
    # No Byzantine worker, but the defenses still assume f = 5 (as in the paper's Table 1).
    return {**bucketing_base(full), "num_byzantine": 0, "defense_f": 5, "attack": "none"}


def _attacks_base(full: bool) -> Flags:
    b = {**bucketing_base(full), "partition": "noniid"}
    if full:  # the bucketing paper runs its attack table on CIFAR-10 with ResNet-20
        b.update(dataset="cifar10", model="resnet20", lr=0.1, rounds=3000, eval_every=100)
    return b


def _election_base(full: bool) -> Flags:
    if full:  # the coding paper: CIFAR-10, ResNet-18, lr 1e-4, batch 120, decay at 40/80 epochs
        return dict(dataset="cifar10", model="resnet18", agg="signmv", attack="reverse",
                    partition="iid", batch_size=120, lr=1e-4, momentum=0.0, server_momentum=0.9,
                    weight_decay=1e-4, rounds=41700, lr_schedule="step",
                    lr_milestones=(16680, 33360), lr_gamma=0.1, eval_every=500, pre="none")
    return dict(dataset="digits", model="mlp", agg="signmv", attack="reverse", partition="iid",
                batch_size=120, lr=0.001, momentum=0.0, server_momentum=0.9, weight_decay=1e-4,
                rounds=100, eval_every=5, pre="none")


def _election_grid(full: bool) -> list[Flags]:
    codes = [dict(redundancy=1.0, deterministic=False), dict(redundancy=3.8, deterministic=True),
             dict(redundancy=2.5, deterministic=False)]
    nb = [(5, 1), (5, 2)]
    if full:
        nb += [(9, 2), (15, 3), (9, 3), (15, 6)]
        codes += [dict(redundancy=2.0, deterministic=False), dict(redundancy=3.0, deterministic=False)]
    out = []
    for n, b in nb:
        for c in codes:
            if c["deterministic"] and n != 5:
                continue  # the deterministic code is given for n = 5 only
            out.append(dict(num_workers=n, num_byzantine=b, **c))
    return out


def _diversefl_base(full: bool) -> Flags:
    # n = 20 clients, 5 Byzantine redrawn every round, non-iid by sorted labels, softmax regression.
    if full:
        return dict(dataset="mnist", model="softmax", num_workers=20, num_byzantine=5,
                    partition="noniid", batch_size=300, lr=0.001, lr_schedule="sqrt",
                    weight_decay=0.0067, momentum=0.0, rounds=1000, eval_every=20, pre="none",
                    trmean_beta=0.1, nmedian_std=100.0, share_frac=0.03)
    return dict(dataset="digits", model="softmax", num_workers=20, num_byzantine=5,
                partition="noniid", batch_size=32, lr=0.1, weight_decay=0.0005, momentum=0.0,
                rounds=150, eval_every=5, pre="none", trmean_beta=0.1, nmedian_std=0.01,
                share_frac=0.03)


DIVERSEFL_RULES = ["diversefl", "oracle", "cm", "trmean", "nmedian", "rsa"]
DIVERSEFL_CLAIM = ("DiverseFL stays close to OracleSGD under class flip, sign flip and backdoor, "
                   "while Median, TrMean, N-Median and RSA fall behind under non-iid data.")


def _diversefl_grid(full: bool) -> list[Flags]:
    out = []
    for attack, sched in [("labelflip", "random"), ("signflip", "random"), ("backdoor", "markov")]:
        for agg in DIVERSEFL_RULES:
            out.append(dict(attack=attack, byz_schedule=sched, agg=agg))
    return out


# The Fashion-MNIST DiverseFL setting (the paper's MNIST setting scaled to one CPU core: batch 32,
# 300 rounds). RSA's delta is the best of {1e-4, 1e-3, 1e-2, 0.2635} in a 100-round no-attack
# sweep per model (docs/results/README.md); the paper's 0.2635 oscillates between ~60 % and
# below chance on softmax and stays near chance on the MLP.
FMNIST_MODELS: dict[str, Flags] = {
    "softmax": dict(lr=0.1, weight_decay=0.0067),
    "mlp": dict(lr=0.06, weight_decay=0.0005, lr_schedule="step", lr_milestones=(150, 250),
                lr_gamma=0.5),
}
FMNIST_RSA_DELTA = {"softmax": 1e-4, "mlp": 1e-3}
# Class flip and sign flip: 5 of 20 clients redrawn at random every round, sorted-label non-iid.
# Backdoor: persistent Markov schedule and clients holding at least two classes (shards:2).
FMNIST_ATTACKS: dict[str, Flags] = {
    "labelflip": dict(byz_schedule="random", partition="noniid"),
    "signflip": dict(byz_schedule="random", partition="noniid"),
    "backdoor": dict(byz_schedule="markov", partition="shards:2", markov_p=0.5, markov_k=5),
}


def _diversefl_fmnist_base(full: bool) -> Flags:
    return dict(dataset="fashionmnist", num_workers=20, num_byzantine=5, pre="none", momentum=0.0,
                share_frac=0.01, trmean_beta=0.1, nmedian_std=0.01, batch_size=32,
                rounds=1000 if full else 300, eval_every=50)


def _diversefl_fmnist_grid(full: bool) -> list[Flags]:
    return product(model=list(FMNIST_MODELS), attack=list(FMNIST_ATTACKS), agg=DIVERSEFL_RULES)


def _diversefl_fmnist_implied(cell: Flags, full: bool) -> Flags:
    out = {**FMNIST_MODELS[cell["model"]], **FMNIST_ATTACKS[cell["attack"]]}
    if full and cell["model"] == "mlp":
        out["lr_milestones"] = (500, 950)  # the paper's MLP decay points over 1000 rounds
    if cell["agg"] == "rsa":
        out["rsa_delta"] = FMNIST_RSA_DELTA[cell["model"]]
    return out


# Every robust rule of the gradient protocol (the protocol-specific diversefl, rsa, signmv, nmedian
# and oracle have their own experiments; gm is an alias of rfa).
DEFENSE_RULES = ["mean", "krum", "multikrum", "cm", "trmean", "rfa", "cclip", "bulyan", "mda",
                 "monna", "meamed", "caf", "smea", "dnc", "signguard", "clippedclustering",
                 "flame", "fltrust"]
DEFENSE_PRES = ["none", "bucketing:2", "nnm", "arc"]
DEFENSE_ATTACKS = ["alie", "ipm", "signflip", "labelflip"]


def _defenses_base(full: bool) -> Flags:
    # Momentum 0 at lr 0.1: the step that trains this MLP stably (heavy ball 0.9 at lr 0.1 diverges
    # under attack; see the attacks experiment).
    return dict(dataset="fashionmnist", model="mlp", num_workers=25, num_byzantine=5,
                partition="noniid", batch_size=32, lr=0.1, momentum=0.0, pre="none",
                rounds=600 if full else 300, eval_every=50)


# Cells whose precondition fails (main.py refuses them): Bulyan needs n >= 4f + 3 rows and
# bucketing:2 leaves 13 for f = 5; MoNNA's pivot is one worker's message, which buckets mix.
DEFENSE_SKIPPED = {("bulyan", "bucketing:2"): "n >= 4f+3 fails on 13 buckets",
                   ("monna", "bucketing:2"): "the pivot worker's message is mixed into a bucket"}


# SMEA's exact search scores C(25, 5) = 53130 subsets per round (~2 s here, 10 min per CPU-size
# run); at CPU size it runs after bucketing:2 only (13 rows, 1287 subsets), FULL=1 runs every cell.
DEFENSE_CPU_ONLY_BUCKETED = {"smea"}


def _defenses_grid(full: bool) -> list[Flags]:
    return [c for c in product(agg=DEFENSE_RULES, pre=DEFENSE_PRES, attack=DEFENSE_ATTACKS)
            if (c["agg"], c["pre"]) not in DEFENSE_SKIPPED
            and (full or c["agg"] not in DEFENSE_CPU_ONLY_BUCKETED or c["pre"] == "bucketing:2")]


def _smoke_base(full: bool) -> Flags:
    return dict(dataset="digits", model="softmax", num_workers=6, num_byzantine=1, batch_size=16,
                lr=0.1, momentum=0.0, rounds=6, eval_every=2, pre="none", partition="noniid",
                attack="bitflip")


# ----------------------------------------------------------------------------------------------
# The registry

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment(
        "smoke", "Pipeline check: 2 rules x 2 seeds, a few rounds",
        "none (checks that runs, results.csv, report.md and figures are produced)",
        _smoke_base, lambda full: product(agg=["mean", "krum"]),
        Layout(rows=("agg",), cols=(), facet_cols=("agg",), selection=True), seeds=(2, 2)),
    Experiment(
        "noattack", "No attack, iid vs non-iid: every rule without and with bucketing:2 / NNM "
        "(n = 25, defenses assume f = 5)",
        "Non-iid data alone makes Krum, CM and RFA fall well below the mean, while bucketing (s = 2) "
        "recovers most of the gap; CClip stays near the mean. NNM does at least as well as bucketing.",
        _noattack_base, lambda full: product(partition=["iid", "noniid"], agg=RULES,
                                             pre=["none", "bucketing:2", "nnm"]),
        Layout(rows=("agg", "pre"), cols=("partition",), facet_rows=("partition",),
               facet_cols=("pre",)), seeds=(1, 3)),
    Experiment(
        "mimic", "Mimic attack (n = 25, f = 5), iid vs non-iid, every rule without and with bucketing:2",
        "The mimic attack hurts Krum/CM/RFA only under non-iid data; bucketing mitigates it.",
        lambda full: {**bucketing_base(full), "attack": "mimic"},
        lambda full: product(partition=["iid", "noniid"], agg=RULES, pre=["none", "bucketing:2"]),
        Layout(rows=("agg", "pre"), cols=("partition",), facet_rows=("partition",),
               facet_cols=("pre",)), seeds=(1, 3)),
    Experiment(
        "attacks", "Non-iid, n = 25, f = 5: Krum/CM/RFA/CClip x 5 attacks x momentum {0, 0.9} x "
        "{none, bucketing:2, NNM}",
        "RFA collapses under IPM and bucketing restores it; worker momentum 0.9 plus CClip stays "
        "near the no-attack accuracy under every attack; NNM at least as good as bucketing.",
        _attacks_base,
        lambda full: product(momentum=[0.0, 0.9], pre=["none", "bucketing:2", "nnm"],
                             agg=["krum", "cm", "rfa", "cclip"],
                             attack=["bitflip", "labelflip", "mimic", "ipm", "alie"]),
        Layout(rows=("momentum", "agg", "pre"), cols=("attack",), facet_rows=("attack",),
               facet_cols=("momentum", "pre")), seeds=(1, 2)),
    Experiment(
        "krum_selection", "Which workers Krum selects, iid vs non-iid, without and with resampling:2 "
        "(n = 25, no attack, f = 5 assumed)",
        "Under non-iid data Krum keeps selecting a few workers (so it trains on their classes "
        "only); resampling spreads the selection over all workers.",
        _noattack_base,
        lambda full: product(partition=["iid", "noniid"], pre=["none", "resampling:2"],
                             agg=["krum"]),
        Layout(rows=("pre",), cols=("partition",), facet_cols=("partition", "pre"),
               selection=True), seeds=(2, 3)),
    Experiment(
        "nm_rfa", "RFA with T = 1 (normalized mean) under the normalized-mean attack, n = 10, "
        "f = 0, 1, 2, without and with resampling:2",
        "The normalized-mean attack breaks RFA with T = 1 as f grows; resampling fixes it.",
        lambda full: {**bucketing_base(full), "num_workers": 10, "agg": "rfa", "rfa_iters": 1,
                      "attack": "nm"},
        lambda full: product(partition=["iid", "noniid"], num_byzantine=[0, 1, 2],
                             pre=["none", "resampling:2"]),
        Layout(rows=("partition", "pre"), cols=("num_byzantine",), facet_cols=("partition",)),
        seeds=(2, 3)),
    Experiment(
        "mimic2", "CM and RFA (T = 8) under the mimic2 data-layout attack (n = 25, f = 5) vs the "
        "iid no-attack reference, without and with resampling:2",
        "The mimic2 layout (half the honest workers hold classes 0-4, half 5-9, the Byzantine "
        "workers send gradients of classes 0-4) pins the median on dataset A, so CM and RFA lose "
        "the classes of B; resampling mitigates it. With iid data and no attack both rules train "
        "normally. (mimic2 fixes its own layout, so --partition does not apply to it.)",
        lambda full: {**bucketing_base(full), "defense_f": 5},
        lambda full: [dict(agg=a, pre=p, **cell) for a in ["cm", "rfa"]
                      for p in ["none", "resampling:2"]
                      for cell in [dict(attack="none", partition="iid", num_byzantine=0),
                                   dict(attack="mimic2", partition="noniid", num_byzantine=5)]],
        Layout(rows=("agg", "pre"), cols=("attack", "partition", "num_byzantine"),
               facet_cols=("agg", "attack")),
        seeds=(1, 3)),
    Experiment(
        "cclip_n53", "CClip with bucketing under IPM, n = 53, non-iid, f in {1, 6, 12}, s in {1, 2, 5}",
        "Bucketing helps CClip as long as s f stays below about n/2: with f = 12, s = 5 more than "
        "half the buckets contain a Byzantine worker and the defense degrades.",
        lambda full: {**_attacks_base(full), "num_workers": 53, "agg": "cclip", "attack": "ipm"},
        lambda full: product(num_byzantine=[1, 6, 12], pre=["none", "bucketing:2", "bucketing:5"]),
        Layout(rows=("pre",), cols=("num_byzantine",), facet_cols=("num_byzantine",)),
        seeds=(1, 2)),
    Experiment(
        "election", "Election coding for signSGD, n = 5, b = 1 and 2: plain MV (r = 1) vs the "
        "deterministic r = 3.8 code vs Bernoulli r = 2.5, reverse attack",
        "The n = 5, r = 3.8 deterministic code tolerates any 1 Byzantine node exactly; plain "
        "signSGD-MV does not. Coded runs keep accuracy under attack where MV degrades.",
        _election_base, _election_grid,
        Layout(rows=("redundancy", "deterministic"), cols=("num_workers", "num_byzantine"),
               facet_cols=("num_workers", "num_byzantine")), seeds=(2, 3)),
    Experiment(
        "diversefl", "DiverseFL vs OracleSGD, CM, TrMean (beta = 0.1), N-Median, RSA: n = 20, 5 "
        "Byzantine redrawn each round (backdoor: persistent Markov), non-iid",
        DIVERSEFL_CLAIM,
        _diversefl_base, _diversefl_grid,
        Layout(rows=("agg",), cols=("attack", "byz_schedule"), facet_cols=("attack", "byz_schedule")),
        seeds=(1, 3)),
    Experiment(
        "diversefl_fmnist", "DiverseFL vs OracleSGD, CM, TrMean (beta = 0.1), N-Median, RSA on "
        "Fashion-MNIST, softmax and MLP: n = 20, 5 Byzantine redrawn each round, sorted-label "
        "non-iid (backdoor: persistent Markov, shards:2 so every client holds 2 classes)",
        DIVERSEFL_CLAIM,
        _diversefl_fmnist_base, _diversefl_fmnist_grid,
        Layout(rows=("model", "agg"), cols=("attack", "partition", "byz_schedule"),
               facet_rows=("model",), facet_cols=("attack",)),
        seeds=(2, 3), implied=_diversefl_fmnist_implied),
    Experiment(
        "defenses", "Every robust rule x {none, bucketing:2, NNM, ARC} under ALIE, IPM, sign flip "
        "and label flip: Fashion-MNIST MLP, n = 25, f = 5, sorted-label non-iid",
        "No rule alone is robust under every attack on non-iid data; a pre-aggregator (bucketing, "
        "NNM, ARC) lifts the weak ones. (A comparison across the rules this project holds, not a "
        "paper's table.)",
        _defenses_base, _defenses_grid,
        Layout(rows=("agg", "pre"), cols=("attack",), facet_rows=("attack",), facet_cols=("pre",),
               worst=True),
        seeds=(2, 3)),
]}

# Order of `bash run.sh all` (smoke is only a pipeline check).
ALL = [name for name in EXPERIMENTS if name != "smoke"]


def get(name: str) -> Experiment:
    """The experiment called ``name`` (ConfigError listing the valid names otherwise)."""
    if name not in EXPERIMENTS:
        raise unknown_name("experiment", name, list(EXPERIMENTS) + ["all"])
    return EXPERIMENTS[name]


def menu() -> str:
    """The list printed by ``bash run.sh`` without arguments."""
    lines = []
    w = max(len(name) for name in EXPERIMENTS)
    for e in EXPERIMENTS.values():
        n_cpu = len(e.grid(False)) * e.seeds[0]
        n_full = len(e.grid(True)) * e.seeds[1]
        lines.append(f"  {e.name:<{w}} {e.title}\n  {'':<{w}} ({n_cpu} runs; FULL=1: {n_full} runs)")
    return "\n".join(lines)
