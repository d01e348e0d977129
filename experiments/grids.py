"""The experiment grids behind ``bash run.sh NAME``.

An experiment is a list of runs; a run is a set of :class:`~common.run.config.Config` values (keys
are Config field names, so the same names appear in each run's ``config.json`` and in
``results.csv``). Every experiment comes in up to three sizes (:data:`SIZES`):

* ``fmnist`` (the default where Fashion-MNIST is installed): the papers' settings on
  Fashion-MNIST (10k test images) with the 2x200 MLP. For the bucketing paper: batch 32, lr 0.01
  with heavy-ball worker momentum m = beta m + g (beta 0 or 0.9, as its code), CClip tau = 10
  and L = 3, RFA T = 8, Krum m = 1, 600 iterations (T-A: 4500), an evaluation every 30 and the
  mean of the last 5 evaluations as the reported number, 3 seeds;
* ``digits`` (quick, seconds per run): scikit-learn's digits, 100-200 rounds, 1-2 seeds;
* ``full`` (``FULL=1``): MNIST CNN / CIFAR-10 ResNet, as the papers; not run here.

Every base spells out the data split, attack, pre-aggregator and momentum, so a grid never
depends on the command line's defaults. :mod:`experiments.grid` holds the pieces (sizes,
:class:`~experiments.grid.Layout`, runs); :mod:`experiments.paper` holds the paper's numbers beside ours.
"""
from __future__ import annotations

from common.errors import unknown_name
from experiments.grid import (  # noqa: F401  (the runner and the reports read them from here)
    DIGITS,
    FINAL,
    FMNIST,
    FULL,
    LAST5,
    NEUTRAL,
    PEAK,
    SIZES,
    Experiment,
    Flags,
    Layout,
    Run,
    product,
    run_name,
)
from experiments.worstcase import worstcase_experiments

# ----------------------------------------------------------------------------------------------
# Shared settings


def bucketing_base(size: str) -> Flags:
    """The bucketing paper's setting: n = 25 workers, batch 32, no worker momentum unless a cell
    sets it (see the module docstring for each size)."""
    common = {**NEUTRAL, "num_workers": 25, "num_byzantine": 5, "batch_size": 32}
    if size == FULL:
        return {**common, "dataset": "mnist", "model": "cnn", "lr": 0.01, "rounds": 600,
                "eval_every": 30}
    if size == FMNIST:
        return {**common, "dataset": "fashionmnist", "model": "mlp", "lr": 0.01, "rounds": 600,
                "eval_every": 30}
    # digits: ema momentum at lr 0.1 is heavy ball at lr 0.01 for beta = 0.9, and plain SGD at
    # lr 0.1 for beta = 0: one lr trains both momentum values of a grid in 100 rounds.
    return {**common, "dataset": "digits", "model": "mlp", "lr": 0.1, "momentum_style": "ema",
            "rounds": 100, "eval_every": 5}


PAPER_RULES = ["mean", "krum", "cm", "rfa", "cclip"]
RULES = ["mean", "krum", "cm", "rfa", "trmean", "cclip"]


def _noattack_base(size: str) -> Flags:
    if size == DIGITS:
        # No Byzantine worker, but the defenses still assume f = 5.
        return {**bucketing_base(size), "num_byzantine": 0, "defense_f": 5}
    # T-A: n = 24, f = 0, long-tailed classes (class c keeps 0.5**c of its samples), 4500 its.
    return {**bucketing_base(size), "num_workers": 24, "num_byzantine": 0, "rounds": 4500}


def _noattack_grid(size: str) -> list[Flags]:
    if size == DIGITS:
        return product(partition=["iid", "noniid"], agg=RULES, pre=["none", "bucketing:2", "nnm"])
    return product(partition=["longtail", "longtail:noniid"], agg=PAPER_RULES,
                   pre=["none", "bucketing:2"])


def _rules(size: str) -> list[str]:
    return RULES if size == DIGITS else PAPER_RULES


def _attacks_base(size: str) -> Flags:
    b = {**bucketing_base(size), "partition": "noniid"}
    if size == FULL:  # the bucketing paper runs its attack table on CIFAR-10 with ResNet-20
        b.update(dataset="cifar10", model="resnet20", lr=0.1, rounds=3000, eval_every=100)
    return b


ATTACKS = ["bitflip", "labelflip", "mimic", "ipm", "alie"]
# The no-attack reference of the attack tables: the mean of the 20 honest workers (OracleSGD).
REFERENCE = [dict(momentum=m, pre="none", agg="oracle", attack="none") for m in (0.0, 0.9)]


def _attacks_grid(size: str) -> list[Flags]:
    return product(momentum=[0.0, 0.9], pre=["none", "bucketing:2", "nnm"],
                   agg=["krum", "cm", "rfa", "cclip"], attack=ATTACKS) + REFERENCE


def _attacks_implied(cell: Flags, size: str) -> Flags:
    # The paper's code gives its bit-flip and label-flip workers no momentum (they attack their
    # raw gradients while the honest workers send momenta); at beta = 0 the two are the same.
    if size != DIGITS and cell["momentum"] > 0 and cell["attack"] in ("bitflip", "labelflip"):
        return {"byz_raw_gradients": True}
    return {}


def _attacks_cnn_grid(size: str) -> list[Flags]:
    # The headline cells: RFA and CClip, beta 0.9, IPM and ALIE, with and without bucketing; the
    # no-attack reference and CClip without attack.
    return (product(agg=["rfa", "cclip"], pre=["none", "bucketing:2"], attack=["ipm", "alie"])
            + [dict(agg="oracle", pre="none", attack="none"),
               dict(agg="cclip", pre="none", attack="none")])


def _cclip_n53_grid(size: str) -> list[Flags]:
    # T-D: f = 5 with s in {0, 2, 5}; s = 2 with f in {1, 6, 12}; each at beta 0 and 0.9.
    cells = [(5, "none"), (5, "bucketing:2"), (5, "bucketing:5"), (1, "bucketing:2"),
             (6, "bucketing:2"), (12, "bucketing:2")]
    return [dict(momentum=m, num_byzantine=f, pre=p) for m in (0.0, 0.9) for f, p in cells]


def _election_base(size: str) -> Flags:
    common = dict(agg="signmv", attack="reverse", partition="iid", momentum=0.0,
                  server_momentum=0.9, weight_decay=1e-4, pre="none", batch_size=120)
    if size == FULL:  # the coding paper: CIFAR-10, ResNet-18, lr 1e-4, decay at 40/80 epochs
        return dict(common, dataset="cifar10", model="resnet18", lr=1e-4, rounds=41700,
                    lr_schedule="step", lr_milestones=(16680, 33360), lr_gamma=0.1, eval_every=500)
    if size == FMNIST:  # the paper's lr, 1000 rounds of batch 120 (2 epochs)
        return dict(common, dataset="fashionmnist", model="mlp", lr=1e-4, rounds=1000,
                    eval_every=50)
    return dict(common, dataset="digits", model="mlp", lr=0.001, rounds=100, eval_every=5)


def _election_grid(size: str) -> list[Flags]:
    codes = [dict(redundancy=1.0, deterministic=False), dict(redundancy=3.8, deterministic=True),
             dict(redundancy=2.5, deterministic=False)]
    nb = [(5, 1), (5, 2)]
    if size == FULL:
        nb += [(9, 2), (15, 3), (9, 3), (15, 6)]
        codes += [dict(redundancy=2.0, deterministic=False), dict(redundancy=3.0, deterministic=False)]
    out = []
    for n, b in nb:
        for c in codes:
            if c["deterministic"] and n != 5:
                continue  # the deterministic code is given for n = 5 only
            out.append(dict(num_workers=n, num_byzantine=b, **c))
    return out


DIVERSEFL_RULES = ["diversefl", "oracle", "cm", "trmean", "nmedian", "rsa"]
DIVERSEFL_CLAIM = ("DiverseFL stays close to OracleSGD under class flip, sign flip and backdoor, "
                   "while Median, TrMean, N-Median and RSA fall behind under non-iid data.")
# Class flip and sign flip: 5 of 20 clients redrawn at random every round, sorted-label non-iid.
# Backdoor: persistent Markov schedule and, on Fashion-MNIST, clients holding at least two
# classes (shards:2).
DIVERSEFL_ATTACKS: dict[str, Flags] = {
    "labelflip": dict(byz_schedule="random", partition="noniid"),
    "signflip": dict(byz_schedule="random", partition="noniid"),
    "backdoor": dict(byz_schedule="markov", partition="shards:2", markov_p=0.5, markov_k=5),
}
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


def _diversefl_base(size: str) -> Flags:
    # n = 20 clients, 5 Byzantine redrawn every round, non-iid by sorted labels.
    common = {**NEUTRAL, "num_workers": 20, "num_byzantine": 5, "partition": "noniid",
              "trmean_beta": 0.1}
    if size == FULL:  # the paper: MNIST, softmax regression
        return dict(common, dataset="mnist", model="softmax", batch_size=300, lr=0.001,
                    lr_schedule="sqrt", weight_decay=0.0067, rounds=1000, eval_every=20,
                    nmedian_std=100.0, share_frac=0.03)
    if size == FMNIST:
        return dict(common, dataset="fashionmnist", share_frac=0.01, nmedian_std=0.01,
                    batch_size=32, rounds=300, eval_every=50)
    return dict(common, dataset="digits", model="softmax", batch_size=32, lr=0.1,
                weight_decay=0.0005, rounds=150, eval_every=5, nmedian_std=0.01, share_frac=0.03)


def _diversefl_grid(size: str) -> list[Flags]:
    if size == FMNIST:
        return product(model=list(FMNIST_MODELS), attack=list(DIVERSEFL_ATTACKS),
                       agg=DIVERSEFL_RULES)
    out = []
    for attack in DIVERSEFL_ATTACKS:
        sched = DIVERSEFL_ATTACKS[attack]["byz_schedule"]
        for agg in DIVERSEFL_RULES:
            out.append(dict(attack=attack, byz_schedule=sched, agg=agg))
    return out


def _diversefl_implied(cell: Flags, size: str) -> Flags:
    if size != FMNIST:
        return {}
    out = {**FMNIST_MODELS[cell["model"]], **DIVERSEFL_ATTACKS[cell["attack"]]}
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


def _defenses_base(size: str) -> Flags:
    # Momentum 0 at lr 0.1: the step that trains this MLP stably in 300 rounds.
    b = {**NEUTRAL, "model": "mlp", "num_workers": 25, "num_byzantine": 5, "partition": "noniid",
         "batch_size": 32, "lr": 0.1}
    if size == DIGITS:
        return dict(b, dataset="digits", rounds=100, eval_every=10)
    return dict(b, dataset="fashionmnist", rounds=600 if size == FULL else 300, eval_every=50)


# Cells whose precondition fails (main.py refuses them): Bulyan needs n >= 4f + 3 rows and
# bucketing:2 leaves 13 for f = 5; MoNNA's pivot is one worker's message, which buckets mix.
DEFENSE_SKIPPED = {("bulyan", "bucketing:2"): "n >= 4f+3 fails on 13 buckets",
                   ("monna", "bucketing:2"): "the pivot worker's message is mixed into a bucket"}
# SMEA's exact search scores C(25, 5) = 53130 subsets per round (~2 s here, 10 min per run of
# 300 rounds); below FULL it runs after bucketing:2 only (13 rows, 1287 subsets).
DEFENSE_BUCKETED_ONLY = {"smea"}


def _defenses_grid(size: str) -> list[Flags]:
    return [c for c in product(agg=DEFENSE_RULES, pre=DEFENSE_PRES, attack=DEFENSE_ATTACKS)
            if (c["agg"], c["pre"]) not in DEFENSE_SKIPPED
            and (size == FULL or c["agg"] not in DEFENSE_BUCKETED_ONLY or c["pre"] == "bucketing:2")]


# Federated mode: FedAvg, K local steps on m = 20 of n = 50 clients, 10 Byzantine (f = 4 of the
# sample assumed), local lr 0.1, server lr 1; CClip's tau 0.5 (the updates' norms are 0.2-0.9).
FEDAVG_RULES = [("mean", "none"), ("cm", "none"), ("cclip", "none"), ("cclip", "nnm"), ("dnc", "none")]


def _fedavg_base(size: str) -> Flags:
    small = size == DIGITS
    return {**NEUTRAL, "model": "mlp", "partition": "dirichlet:0.3", "batch_size": 32, "lr": 0.1,
            "local_lr": 0.1, "server_lr": 1.0, "dataset": "digits" if small else "fashionmnist",
            "num_workers": 20 if small else 50, "num_byzantine": 4 if small else 10,
            "clients_per_round": 10 if small else 20, "rounds": 100 if small else 200,
            "eval_every": 5 if small else 10}


def _fedavg_grid(size: str) -> list[Flags]:  # and the mean without attack, the reference
    cells = [(agg, pre, a) for agg, pre in FEDAVG_RULES for a in ("alie", "ipm", "signflip")]
    return [dict(local_steps=k, agg=agg, pre=pre, attack=a)
            for k in (1, 5) for agg, pre, a in cells + [("mean", "none", "none")]]


def _smoke_base(size: str) -> Flags:
    return {**NEUTRAL, "dataset": "digits", "model": "softmax", "num_workers": 6,
            "num_byzantine": 1, "batch_size": 16, "lr": 0.1, "rounds": 6, "eval_every": 2,
            "partition": "noniid", "attack": "bitflip"}


# ----------------------------------------------------------------------------------------------
# The registry

_BUCKETING_LAYOUT = Layout(rows=("agg", "pre"), cols=("partition",), facet_rows=("partition",),
                           facet_cols=("pre",))

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment(
        "smoke", "Pipeline check: 2 rules x 2 seeds, a few rounds",
        "none (checks that runs, results.csv, report.md and figures are produced)",
        _smoke_base, lambda size: product(agg=["mean", "krum"]),
        Layout(rows=("agg",), cols=(), facet_cols=("agg",), selection=True), seeds=(2, 2, 2),
        sizes=(DIGITS,)),
    Experiment(
        "noattack", "No attack, iid vs non-iid, each rule without and with bucketing:2 (T-A: "
        "n = 24, long-tailed classes, 4500 iterations; digits: n = 25, f = 5 assumed, also NNM)",
        "Non-iid data alone makes Krum, CM and RFA fall well below the plain mean, while "
        "bucketing (s = 2) recovers most of the gap; CClip stays near the mean.",
        _noattack_base, _noattack_grid, _BUCKETING_LAYOUT, metric=LAST5),
    Experiment(
        "mimic", "Mimic attack (T-B: n = 25, f = 5), iid vs non-iid, each rule without and with "
        "bucketing:2",
        "The mimic attack hurts Krum/CM/RFA only under non-iid data; bucketing mitigates it.",
        lambda size: {**bucketing_base(size), "attack": "mimic"},
        lambda size: product(partition=["iid", "noniid"], agg=_rules(size),
                             pre=["none", "bucketing:2"]),
        _BUCKETING_LAYOUT, metric=LAST5),
    Experiment(
        "attacks", "T-C: non-iid, n = 25, f = 5: Krum/CM/RFA/CClip x 5 attacks x momentum "
        "{0, 0.9} x {none, bucketing:2, NNM}, and the no-attack reference (OracleSGD)",
        "RFA collapses under IPM and bucketing restores it; worker momentum 0.9 plus CClip stays "
        "near the no-attack accuracy under every attack; NNM at least as good as bucketing.",
        _attacks_base, _attacks_grid,
        Layout(rows=("momentum", "agg", "pre"), cols=("attack",), facet_rows=("attack",),
               facet_cols=("momentum", "pre"), worst=True), seeds=(1, 3, 2),
        implied=_attacks_implied, metric=LAST5),
    Experiment(
        "attacks_cnn", "T-C's headline cells with the paper's CNN: RFA and CClip, beta = 0.9, "
        "IPM and ALIE, without and with bucketing:2, and the no-attack references",
        "RFA collapses under IPM and bucketing restores it; worker momentum 0.9 plus CClip stays "
        "near the no-attack accuracy under every attack.",
        lambda size: {**_attacks_base(size), "model": "cnn", "momentum": 0.9},
        _attacks_cnn_grid,
        Layout(rows=("agg", "pre"), cols=("attack",), facet_cols=("attack",)),
        seeds=(1, 1, 1), sizes=(FMNIST,), metric=LAST5),
    Experiment(
        "krum_selection", "Which workers Krum selects, iid vs non-iid, without and with "
        "resampling:2 (n = 25, no attack, f = 5 assumed)",
        "Under non-iid data Krum keeps selecting a few workers (so it trains on their classes "
        "only); resampling spreads the selection over all workers.",
        lambda size: {**bucketing_base(size), "num_byzantine": 0, "defense_f": 5},
        lambda size: product(partition=["iid", "noniid"], pre=["none", "resampling:2"],
                             agg=["krum"]),
        Layout(rows=("pre",), cols=("partition",), facet_cols=("partition", "pre"),
               selection=True), seeds=(2, 3, 3), metric=LAST5),
    Experiment(
        "nm_rfa", "RFA with T = 1 (normalized mean) under the normalized-mean attack, n = 10, "
        "f = 0, 1, 2, without and with resampling:2",
        "The normalized-mean attack breaks RFA with T = 1 as f grows; resampling fixes it.",
        lambda size: {**bucketing_base(size), "num_workers": 10, "agg": "rfa", "rfa_iters": 1,
                      "attack": "nm"},
        lambda size: product(partition=["iid", "noniid"], num_byzantine=[0, 1, 2],
                             pre=["none", "resampling:2"]),
        Layout(rows=("partition", "pre"), cols=("num_byzantine",), facet_cols=("partition",)),
        seeds=(2, 3, 3), metric=LAST5),
    Experiment(
        "mimic2", "CM and RFA (T = 8) under the mimic2 data-layout attack (n = 25, f = 5) vs the "
        "iid no-attack reference, without and with resampling:2",
        "The mimic2 layout (half the honest workers hold classes 0-4, half 5-9, the Byzantine "
        "workers send gradients of classes 0-4) pins the median on dataset A, so CM and RFA lose "
        "the classes of B; resampling mitigates it. With iid data and no attack both rules train "
        "normally. (mimic2 fixes its own layout, so --partition does not apply to it.)",
        lambda size: {**bucketing_base(size), "defense_f": 5},
        lambda size: [dict(agg=a, pre=p, **cell) for a in ["cm", "rfa"]
                      for p in ["none", "resampling:2"]
                      for cell in [dict(attack="none", partition="iid", num_byzantine=0),
                                   dict(attack="mimic2", partition="noniid", num_byzantine=5)]],
        Layout(rows=("agg", "pre"), cols=("attack", "partition", "num_byzantine"),
               facet_cols=("agg", "attack")), metric=LAST5),
    Experiment(
        "cclip_tau", "CClip's radius at beta = 0.9: T-C's CClip row (no pre-aggregator) for tau "
        "in {1, 3, 10, 30, 100}, the paper's 10 in the middle",
        "Worker momentum 0.9 plus CClip stays near the no-attack accuracy under every attack "
        "(T-C's last row), at the clipping radius where it holds on this model.",
        lambda size: {**_attacks_base(size), "agg": "cclip", "momentum": 0.9},
        lambda size: product(cclip_tau=[1.0, 3.0, 10.0, 30.0, 100.0], attack=ATTACKS),
        Layout(rows=("cclip_tau",), cols=("attack",), facet_cols=("attack",), worst=True),
        seeds=(1, 1, 1), sizes=(FMNIST, FULL), metric=LAST5,
        implied=lambda cell, size: _attacks_implied({**cell, "momentum": 0.9}, size)),
    Experiment(
        "cclip_n53", "T-D: CClip under IPM, n = 53, non-iid: f = 5 with s in {1, 2, 5}, s = 2 "
        "with f in {1, 6, 12}, beta 0 and 0.9",
        "Bucketing helps CClip as long as s f stays below about n/2: with f = 12, s = 5 more than "
        "half the buckets contain a Byzantine worker and the defense degrades.",
        lambda size: {**bucketing_base(size), "partition": "noniid", "num_workers": 53,
                      "agg": "cclip", "attack": "ipm"},
        _cclip_n53_grid,
        Layout(rows=("momentum", "pre"), cols=("num_byzantine",), facet_cols=("momentum",)),
        seeds=(1, 3, 2), metric=LAST5),
    Experiment(
        "election", "Election coding for signSGD, n = 5, b = 1 and 2: plain MV (r = 1) vs the "
        "deterministic r = 3.8 code vs Bernoulli r = 2.5, reverse attack",
        "The n = 5, r = 3.8 deterministic code tolerates any 1 Byzantine node exactly; plain "
        "signSGD-MV does not. Coded runs keep accuracy under attack where MV degrades.",
        _election_base, _election_grid,
        Layout(rows=("redundancy", "deterministic"), cols=("num_workers", "num_byzantine"),
               facet_cols=("num_workers", "num_byzantine")), seeds=(2, 3, 3)),
    Experiment(
        "diversefl", "DiverseFL vs OracleSGD, CM, TrMean (beta = 0.1), N-Median, RSA: n = 20, 5 "
        "Byzantine redrawn each round, sorted-label non-iid (backdoor: persistent Markov; on "
        "Fashion-MNIST shards:2, so every client holds 2 classes); Fashion-MNIST: softmax and MLP",
        DIVERSEFL_CLAIM, _diversefl_base, _diversefl_grid,
        Layout(rows=("model", "agg"), cols=("attack", "partition", "byz_schedule"),
               facet_rows=("model",), facet_cols=("attack",)),
        implied=_diversefl_implied),
    Experiment(
        "defenses", "Every robust rule x {none, bucketing:2, NNM, ARC} under ALIE, IPM, sign flip "
        "and label flip: MLP, n = 25, f = 5, sorted-label non-iid",
        "No rule alone is robust under every attack on non-iid data; a pre-aggregator (bucketing, "
        "NNM, ARC) lifts the weak ones. (A comparison across the rules this project holds, not a "
        "paper's table.)",
        _defenses_base, _defenses_grid,
        Layout(rows=("agg", "pre"), cols=("attack",), facet_rows=("attack",), facet_cols=("pre",),
               worst=True),
        seeds=(1, 2, 3)),
    Experiment(
        "fedavg", "FedAvg on Fashion-MNIST: n = 50, m = 20 per round, Dirichlet 0.3, K in {1, 5}, "
        "f = 4 of the sample: mean, CM, CClip, NNM + CClip, DnC under ALIE, IPM, sign flip",
        "Robust rules keep FedAvg training under attack with local steps and partial participation; "
        "K = 5 needs fewer rounds of communication than K = 1 (this project's, not a paper's).",
        _fedavg_base, _fedavg_grid, Layout(rows=("local_steps", "agg", "pre"), cols=("attack",),
                                           facet_rows=("attack",), facet_cols=("local_steps",),
                                           worst=True), seeds=(1, 2, 2),
        implied=lambda cell, size: {"cclip_tau": 0.5} if cell["agg"] == "cclip" else {},
        sizes=(DIGITS, FMNIST), metric=LAST5),
    # -- worst case (issue 18): experiments/worstcase.py
    *worstcase_experiments(_defenses_base, DEFENSE_RULES),
]}

# Order of `bash run.sh all` (smoke is only a pipeline check).
ALL = [name for name in EXPERIMENTS if name != "smoke"]


def get(name: str) -> Experiment:
    """The experiment called ``name`` (ConfigError listing the valid names otherwise)."""
    if name not in EXPERIMENTS:
        raise unknown_name("experiment", name, list(EXPERIMENTS) + ["all"])
    return EXPERIMENTS[name]


def menu() -> str:
    """The list printed by ``bash run.sh`` without arguments: each experiment's runs per size."""
    lines = []
    w = max(len(name) for name in EXPERIMENTS)
    for e in EXPERIMENTS.values():
        counts = "; ".join(f"{size}: {len(e.grid(size)) * e.seeds[SIZES.index(size)]}"
                           for size in e.sizes)
        lines.append(f"  {e.name:<{w}} {e.title}\n  {'':<{w}} (runs per size: {counts})")
    return "\n".join(lines)
