"""End to end: a tiny experiment through the runner, then its csv, report and figures checked
against the run logs; plus the pieces of the report that map logs to numbers."""
from __future__ import annotations

import csv
import json
import os

import pytest

from common.errors import ConfigError
from experiments import figures, grids, runlogs, runner


def _read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_smoke_experiment_end_to_end(tmp_path, capsys):
    exp = grids.get("smoke")
    exp_dir = runner.run_experiment(exp, jobs=1, rounds=4, out_root=str(tmp_path), quiet=True)
    rows = _read_csv(os.path.join(exp_dir, "results.csv"))
    # 2 rules x 2 seeds, one row per run directory.
    assert sorted((r["agg"], r["seed"]) for r in rows) == [
        ("krum", "0"), ("krum", "1"), ("mean", "0"), ("mean", "1")]
    for r in rows:
        run_dir = os.path.join(exp_dir, r["run"])
        with open(os.path.join(run_dir, "summary.json")) as fh:
            summary = json.load(fh)
        with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
            last = [json.loads(line) for line in fh][-1]
        assert last["round"] == 3 and summary["rounds"] == 4 == int(r["rounds"])
        assert float(r["final_test_accuracy"]) == pytest.approx(summary["final_test_accuracy"])
        assert float(r["final_test_accuracy"]) == pytest.approx(last["test_accuracy"])
        assert float(r["best_test_accuracy"]) >= float(r["final_test_accuracy"])

    md = open(os.path.join(exp_dir, "report.md")).read()
    for agg in ("mean", "krum"):
        accs = [float(r["final_test_accuracy"]) for r in rows if r["agg"] == agg]
        m = sum(accs) / 2
        s = (sum((a - m) ** 2 for a in accs)) ** 0.5  # sample std of two values: |a-b|/sqrt(2)
        assert f"| {agg} | {m:.1f} ± {s:.1f} |" in md
    for fig in ("curves.png", "bars.png", "selection.png"):
        path = os.path.join(exp_dir, fig)
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        assert f"]({fig})" in md

    # A second invocation skips the finished runs and rebuilds the same table.
    capsys.readouterr()
    runner.run_experiment(exp, jobs=1, rounds=4, out_root=str(tmp_path))
    out = capsys.readouterr().out
    assert out.count("skipped") == 4
    assert _read_csv(os.path.join(exp_dir, "results.csv")) == rows
    # the runner's CPU seconds: one row per run it ran (the skipped ones add none)
    cpu = _read_csv(os.path.join(exp_dir, "cpu.csv"))
    assert sorted(r["run"] for r in cpu) == sorted(r["run"] for r in rows)
    assert all(float(r["cpu"]) > 0 for r in cpu)


def test_selected_workers_maps_through_preaggregators():
    rec = {"rule": {"selected": [1], "pre": [{"name": "bucketing", "s": 2,
                                             "permutation": [4, 0, 3, 1, 2]}]}}
    assert figures.selected_workers(rec, 5) == [3, 1]  # bucket 1 = permutation[2:4]
    rec = {"rule": {"selected": [0], "pre": [
        {"name": "resampling", "s": 2, "groups": [[2, 3], [0, 1], [1, 2], [3, 0]]},
        {"name": "nnm", "neighbours": [[1, 2], [0, 1], [2, 3], [3, 0]]}]}}
    # nnm output 0 mixes resampled rows 1 and 2 = workers {0, 1} and {1, 2}.
    assert figures.selected_workers(rec, 4) == [0, 1, 1, 2]
    assert figures.selected_workers({"rule": {"selected": [2]}}, 4) == [2]
    assert figures.selected_workers({"round": 0}, 4) == []


def test_varying_keys_and_table_layout():
    def run(name, agg, part, seed, acc):
        return runlogs.RunLog(name, {"agg": agg, "partition": part, "lr": 0.1, "seed": seed,
                                    "output": name},
                             {"final_test_accuracy": acc}, [])

    runs = [run("a", "cm", "iid", 0, 90.0), run("b", "cm", "iid", 1, 80.0),
            run("c", "cm", "noniid", 0, 50.0), run("d", "krum", "iid", 0, 70.0)]
    assert runlogs.varying_keys(runs) == ["agg", "partition"]
    # A parameter fixed per rule (CClip's tau) is not a cell of its own.
    tau = [runlogs.RunLog(r.name, {**r.config, "cclip_tau": 0.5 if r.config["agg"] == "krum" else 10.0},
                         r.summary, []) for r in runs]
    assert runlogs.varying_keys(tau) == ["agg", "partition"]
    table = runlogs.markdown_table(runs, ["agg"], ["partition"]).splitlines()
    assert table[0] == "| agg | iid | noniid |"
    assert table[2] == "| cm | 85.0 ± 7.1 | 50.0 |"  # std of (90, 80) = 7.07
    assert table[3] == "| krum | 70.0 | - |"
    worst = runlogs.markdown_table(runs, ["agg"], ["partition"], worst=True).splitlines()
    assert worst[0] == "| agg | iid | noniid | worst (by) |"
    assert worst[2] == "| cm | 85.0 ± 7.1 | 50.0 | **50.0** (noniid) |"
    assert worst[3] == "| krum | 70.0 | - | **70.0** (iid) |"  # over the cells that ran


def _representatives(runs):
    """A worst-case grid's runs (tens of thousands at FULL), one for each value of the groups
    main.py checks together: rule x chain x f (preconditions), the attack with each of them
    (opt-* and the rule, an attack's own checks), the data split."""
    groups = (("agg", "pre", "num_byzantine"), ("agg", "attack"), ("pre", "attack"),
              ("num_byzantine", "attack"), ("partition",))
    seen, out = set(), []
    for r in runs:
        keys = {(g, tuple(r.flags[k] for k in g)) for g in groups}
        if not keys <= seen:
            seen |= keys
            out.append(r)
    return out


def test_every_grid_is_well_formed(tmp_path):
    from experiments.runner import check

    for exp in grids.EXPERIMENTS.values():
        for size in exp.sizes:
            runs = exp.runs(size)
            assert runs, exp.name
            assert len({r.name for r in runs}) == len(runs)
            if exp.layout.worst_over:
                runs = _representatives(runs)
            check(exp, runs, str(tmp_path))  # every command line passes main.py's checks
            for r in runs:  # a grid never leans on the command line's defaults
                assert {"partition", "attack", "pre", "momentum", "lr"} <= set(r.flags), r.name
    # defenses: 18 rules x 4 pre-aggregators x 4 attacks, less the 2 x 4 cells no rule can run
    # (and below FULL SMEA's 3 unbucketed cells)
    assert len(grids.get("defenses").runs("full")) == (18 * 4 - 2) * 4 * 3
    assert len(grids.get("defenses").runs()) == (18 * 4 - 2 - 3) * 4 * 2
    # Table 3 of the bucketing paper: 4 rules x 5 attacks x 2 momenta x 3 pre-aggregators, and
    # the no-attack reference at both momenta; 3 seeds on Fashion-MNIST.
    assert len(grids.get("attacks").runs()) == (120 + 2) * 3
    assert len(grids.get("attacks").runs("digits")) == 120 + 2
    # fedavg: (5 rules x 3 attacks + the mean without attack) x K in {1, 5}, 2 seeds; every run
    # samples 20 of 50 clients and its rule assumes f = 4 of them
    fedavg = grids.get("fedavg").runs()
    assert len(fedavg) == (5 * 3 + 1) * 2 * 2 and len(grids.get("fedavg").runs("digits")) == 32
    assert {(r.flags["clients_per_round"], r.flags["num_workers"]) for r in fedavg} == {(20, 50)}
    assert {r.flags["local_steps"] for r in fedavg} == {1, 5}
    with pytest.raises(ConfigError, match="no full size; it has: fmnist"):
        grids.get("attacks_cnn").runs("full")
    with pytest.raises(ConfigError, match="choose one of: all, attacks"):
        grids.get("tabel3")


def test_paper_numbers_beside_ours_and_last5(tmp_path):
    from experiments import paper, report

    # T-C, beta 0.9: RFA under IPM 11.3 -> 96.2 with bucketing; NNM and the oracle have none.
    cell = {"agg": "rfa", "momentum": 0.9, "attack": "ipm", "pre": "none"}
    assert paper.paper_value("attacks", cell) == 11.3
    assert paper.paper_value("attacks", {**cell, "pre": "bucketing:2"}) == 96.2
    assert paper.paper_value("attacks", {**cell, "pre": "nnm"}) is None
    assert paper.paper_value("noattack", {"agg": "cm", "partition": "longtail:noniid",
                                          "pre": "none", "num_byzantine": 0}) == 80.36
    assert paper.paper_value("cclip_n53", {"agg": "cclip", "attack": "ipm", "momentum": 0.0,
                                           "num_byzantine": 12, "pre": "bucketing:2"}) == 92.9
    assert runlogs.experiment_of("attacks-digits") == ("attacks", "digits")
    assert runlogs.experiment_of("attacks") == ("attacks", "fmnist")
    assert runlogs.experiment_of("mine-digits") == ("mine-digits", "fmnist")
    # last5: the mean of the last five evaluations, in the table of the experiments that ask
    exp_dir = tmp_path / "attacks-digits"
    for pre, accs in (("none", [10, 20, 30, 40, 50, 60]), ("bucketing:2", [90] * 6)):
        d = exp_dir / f"pre-{pre}"
        d.mkdir(parents=True)
        cfg = {**grids.get("attacks").runs("digits")[0].flags, "agg": "rfa", "attack": "ipm",
               "momentum": 0.9, "pre": pre}
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "summary.json").write_text(json.dumps({"final_test_accuracy": accs[-1],
                                                    "best_test_accuracy": max(accs)}))
        (d / "metrics.jsonl").write_text("".join(
            json.dumps({"round": 5 * i, "test_accuracy": a}) + "\n" for i, a in enumerate(accs)))
    report.write_report(str(exp_dir), quiet=True)
    md = (exp_dir / "report.md").read_text()
    assert "| none | 40.0 [11.3] |" in md and "| bucketing:2 | 90.0 [96.2] |" in md
    assert "Mean of the last 5 evaluations (%)" in md
    rows = _read_csv(str(exp_dir / "results.csv"))
    assert [float(r["last5_test_accuracy"]) for r in rows] == [90.0, 40.0]


def test_cli_menu_and_bad_name(capsys):
    assert runner.main([]) == 0
    assert "noattack" in capsys.readouterr().out
    assert runner.main(["nope"]) == 2
    assert "unknown experiment 'nope'" in capsys.readouterr().err


def test_implied_flags_stay_out_of_names_and_table(tmp_path):
    exp = grids.get("diversefl")
    runs = exp.runs()
    assert len(runs) == 2 * 3 * 6 * 3  # models x attacks x rules x seeds
    by_name = {r.name: r.flags for r in runs}
    mlp_bd = by_name["model-mlp__attack-backdoor__agg-rsa__seed-1"]
    assert (mlp_bd["partition"], mlp_bd["byz_schedule"], mlp_bd["lr"], mlp_bd["lr_milestones"],
            mlp_bd["rsa_delta"]) == ("shards:2", "markov", 0.06, (150, 250), 1e-3)
    soft_lf = by_name["model-softmax__attack-labelflip__agg-cm__seed-0"]
    assert (soft_lf["partition"], soft_lf["byz_schedule"], soft_lf["weight_decay"]) == (
        "noniid", "random", 0.0067) and "rsa_delta" not in soft_lf

    def log(model, attack, agg, seed, acc):
        cell = {"model": model, "attack": attack, "agg": agg}
        config = {"rsa_delta": 0.2635, **cell, **grids._diversefl_implied(cell, "fmnist"),
                  "seed": seed}  # a run's config.json holds every field
        return runlogs.RunLog(grids.run_name(cell, seed), config, {"final_test_accuracy": acc}, [])

    logs = [log(m, a, g, s, 50.0 + s) for m in ("softmax", "mlp") for a in ("labelflip", "backdoor")
            for g in ("cm", "rsa") for s in (0, 1)]
    keys = runlogs.varying_keys(logs)
    assert {"lr", "partition", "byz_schedule", "rsa_delta"} <= set(keys)
    assert runlogs.determined(logs, "lr", ["model"]) and not runlogs.determined(logs, "lr", ["agg"])
    shown = runlogs.table_keys(logs, keys, runlogs.layout_keys("diversefl"))
    assert shown == [k for k in keys if k in ("model", "attack", "agg", "partition", "byz_schedule")]
    rows, cols, *_ = runlogs.resolve_layout("diversefl", shown)
    table = runlogs.markdown_table(logs, rows, cols).splitlines()
    assert table[0] == "| model | agg | labelflip, noniid, sched=random | backdoor, shards:2, sched=markov |"
    assert table[2] == "| softmax | cm | 50.5 ± 0.7 | 50.5 ± 0.7 |"
    # An unknown experiment keeps every varying key.
    assert runlogs.table_keys(logs, keys, runlogs.layout_keys("nosuch")) == keys


# -- worst case --------------------------------------------------------------------------------

def _write_run(exp_dir, cell, seed, accs, flags):
    """A finished run of ``cell`` as the runner writes it: evaluations ``accs`` (the last one the
    final accuracy)."""
    d = exp_dir / grids.run_name(cell, seed)
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({**flags, **cell, "seed": seed}))
    (d / "summary.json").write_text(json.dumps({
        "final_test_accuracy": accs[-1], "best_test_accuracy": max(accs), "wall_seconds": 2.0}))
    (d / "metrics.jsonl").write_text("".join(
        json.dumps({"round": 10 * i + 9, "test_accuracy": a}) + "\n" for i, a in enumerate(accs)))


def test_worst_case_tables_name_the_attack_that_gave_them(tmp_path):
    from experiments import report

    exp = grids.get("worstcase")
    flags = exp.runs("digits")[0].flags
    # final accuracy per (partition, pre, agg, f, attack); a list: one per seed. Otherwise CM
    # ends at 80 (alie), 75 (opt-alie), 78 (fang) and Krum at 70 (alie), 72 (opt-alie).
    special = {("iid", "none", "cm", 5, "alie"): [70], ("iid", "none", "cm", 5, "opt-alie"): [30, 50],
               ("iid", "none", "cm", 5, "fang"): [55],
               ("iid", "none", "cm", 1, "alie"): [80], ("iid", "none", "cm", 1, "opt-alie"): [80],
               ("iid", "none", "cm", 1, "fang"): [80],
               ("iid", "none", "krum", 5, "alie"): [60], ("iid", "none", "krum", 5, "opt-alie"): [62],
               ("noniid", "nnm", "krum", 5, "alie"): [10], ("noniid", "nnm", "krum", 5, "opt-alie"): [10],
               ("noniid", "nnm", "cm", 5, "fang"): [20], ("noniid", "nnm", "cm", 5, "alie"): [50],
               ("noniid", "nnm", "cm", 5, "opt-alie"): [30]}
    default = {("cm", "alie"): 80, ("cm", "opt-alie"): 75, ("cm", "fang"): 78,
               ("krum", "alie"): 70, ("krum", "opt-alie"): 72}
    exp_dir = tmp_path / "worstcase-digits"
    for c in grids.product(partition=["iid", "noniid"], pre=["none", "nnm"], agg=["krum", "cm"],
                           num_byzantine=[1, 5], attack=["alie", "opt-alie", "fang"]):
        if c["attack"] == "fang" and c["agg"] != "cm":
            continue
        accs = special.get(tuple(c.values()), [default[(c["agg"], c["attack"])]])
        for seed, acc in enumerate(accs):
            _write_run(exp_dir, c, seed, [acc + 5, acc], flags)
    runlogs.log_cpu(str(exp_dir), grids.run_name(dict(partition="iid", pre="none", agg="cm",
                    num_byzantine=5, attack="fang"), 0), 9.0, 9.5)  # replaced by the next line
    for cell in (dict(partition="iid", pre="none", agg="cm", num_byzantine=5, attack="fang"),
                 dict(partition="iid", pre="none", agg="cm", num_byzantine=1, attack="alie")):
        runlogs.log_cpu(str(exp_dir), grids.run_name(cell, 0), 2.5, 3.0)
    report.write_report(str(exp_dir), quiet=True)
    md = (exp_dir / "report.md").read_text()
    # one table per heterogeneity x pre-aggregator: rules x f, the least seed mean and which
    assert ("### iid, none\n\n| agg | f=1 | f=5 |\n|---|---|---|\n"
            "| krum | 70.0 (alie) | 60.0 (alie) |\n"
            "| cm | 80.0 (alie / opt-alie / fang) | 40.0 (opt-alie) |") in md
    assert ("### noniid, nnm\n\n| agg | f=1 | f=5 |\n|---|---|---|\n"
            "| krum | 70.0 (alie) | 10.0 (alie / opt-alie) |\n"
            "| cm | 75.0 (opt-alie) | 20.0 (fang) |") in md
    # the headline: each defense's worst over the attacks and f, per heterogeneity
    assert ("| agg | pre | iid | noniid |\n|---|---|---|---|\n"
            "| krum | none | 60.0 (alie, f=5) | 70.0 (alie, f=1 / alie, f=5) |\n"
            "| cm | none | 40.0 (opt-alie, f=5) | 75.0 (opt-alie, f=1 / opt-alie, f=5) |\n"
            "| krum | nnm | 70.0 (alie, f=1 / alie, f=5) | 10.0 (alie, f=5 / opt-alie, f=5) |\n"
            "| cm | nnm | 75.0 (opt-alie, f=1 / opt-alie, f=5) | 20.0 (fang, f=5) |") in md
    # each rule with the pre-aggregator that gives its best worst case
    assert ("| agg | iid | noniid |\n|---|---|---|\n"
            "| krum | 70.0 (nnm; alie, f=1 / alie, f=5) | 70.0 (none; alie, f=1 / alie, f=5) |\n"
            "| cm | 75.0 (nnm; opt-alie, f=1 / opt-alie, f=5) | 75.0 (none; opt-alie, f=1 / "
            "opt-alie, f=5) |") in md
    assert "- best worst case, iid: cm, nnm 75.0 %" in md
    assert "- best worst case, noniid: cm, none 75.0 %" in md
    assert "- worst attack most often, krum: alie (8 of 8), opt-alie (1 of 8)" in md
    assert "- worst attack most often, cm: opt-alie (7 of 8), fang (2 of 8), alie (1 of 8)" in md
    # opt-alie vs alie: 5 points lower in CM's 6 default cells, 30 and 20 in two others
    assert ("- opt-alie vs alie: below in 7 of 16 cells, above in 0. Largest: iid, none, cm, "
            "f=5: 40.0 vs 70.0; noniid, nnm, cm, f=5: 30.0 vs 50.0;") in md
    # opt-* run against CClip (the attack replicates its center): only fang's cells are left out
    assert ("fang's trim attack aims at coordinate-wise rules (cm, trmean, meamed): 144 cells "
            "(agg krum, rfa, cclip; attack fang)") in md
    assert "attack opt-alie, opt-ipm)" not in md
    # 41 runs (40 cells, one of them with two seeds) of 2 s each; the runner logged two of them
    assert "CPU time of 2 of these 41 runs (the runner's cpu.csv): 5 s = 0.00 h." in md
    assert "41 runs, seeds [0, 1]; 0.02 h of run time in all" in md
    rows = {(r["partition"], r["pre"], r["agg"], r["num_byzantine"]): r
            for r in _read_csv(str(exp_dir / "worstcase.csv"))}
    r = rows[("iid", "none", "cm", "5")]
    assert (float(r["worst"]), r["worst_by"], float(r["alie"]), float(r["fang"])) == (
        40.0, "opt-alie", 70.0, 55.0)
    assert rows[("iid", "none", "cm", "1")]["worst_by"] == "alie; opt-alie; fang"
    assert rows[("iid", "none", "krum", "1")]["fang"] == ""  # not run against Krum
    with open(exp_dir / "heatmap.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not (exp_dir / "curves.png").exists()


def test_worst_case_against_byzfl_takes_the_peak_of_the_seed_mean(tmp_path):
    from experiments import paper, report
    from experiments.worst import peak_of_mean

    exp = grids.get("worstcase_byzfl")
    flags = exp.runs()[0].flags
    exp_dir = tmp_path / "worstcase_byzfl"
    cell = dict(partition="noniid", agg="trmean", num_byzantine=3)
    for atk, curves in (("ipm", [[70, 80, 75]]), ("opt-ipm", [[60, 55, 52]]),
                        ("opt-alie", [[10, 50, 40], [30, 20, 60]])):
        for seed, accs in enumerate(curves):
            _write_run(exp_dir, {**cell, "attack": atk}, seed, accs,
                       {**flags, "num_workers": 13})
    _write_run(exp_dir, {**cell, "num_byzantine": 0, "attack": "none"}, 0, [80, 85, 84],
               {**flags, "num_workers": 10})
    report.write_report(str(exp_dir), quiet=True)
    md = (exp_dir / "report.md").read_text()
    # opt-alie: the seed-mean curve 20, 35, 50 peaks at 50 (the seeds' own peaks average 55)
    assert "| f=0 | f=3 |\n|---|---|\n| 85.0 (none) | 50.0 (opt-alie) [26.0] |" in md
    assert "| 3 | - | 80.0 | 60.0 | 55.0 ± 7.1 | **55.0** (opt-alie) |" in md
    assert paper.source_of("worstcase_byzfl") in md
    runs = [r for r in runlogs.load_runs(str(exp_dir))[0] if r.config["attack"] == "opt-alie"]
    assert peak_of_mean(runs) == 50.0
    # ByzFL's heat maps: trimmed mean 87, 61, 26, 21 % non-iid; the geometric median as gm too
    assert [paper.WORST["worstcase_byzfl"]({**cell, "pre": "clip:2,nnm", "num_byzantine": f})
            for f in (0, 1, 2, 3, 4)] == [None, 87.0, 61.0, 26.0, 21.0]
    assert paper.WORST["worstcase_byzfl"](dict(partition="iid", agg="gm", num_byzantine=4,
                                                pre="clip:2,nnm")) == 97.0


def test_worstcase_grids_and_what_they_leave_out():
    from common.run.config import Config, validate
    from experiments.worstcase import ATTACK_SET, skip_reason

    exp = grids.get("worstcase")
    # 5 rules x 4 pre-aggregators x 4 splits x 3 f x 10 attacks, less fang against the three
    # rules it does not aim at (3 x 48)
    assert len(exp.runs()) == 5 * 48 * 10 - 144 == len(exp.runs("digits"))
    full = exp.skipped("full")
    assert len(exp.runs("full")) == 3 * (18 * 48 * 10 - len(full))
    reasons = {why for _, why in full}
    # bulyan after bucketing:2 for f = 3 and 5; monna's pivot; SMEA's C(25, 5) subsets; fang;
    # opt-* against clippedclustering and fltrust
    assert len(full) == 2 * 4 * 10 + 3 * 4 * 10 + 3 * 4 * 10 + (15 * 48 - 8 - 12 - 12) + 2 * 96
    assert "bulyan needs n >= 4f+3, got n=13, f=3 (the rule sees n vectors after " \
           "pre-aggregation)" in reasons
    assert skip_reason("bulyan", "bucketing:2", 25, 1, "alie") is None
    assert skip_reason("monna", "bucketing:2", 25, 1, "alie") == \
        "monna needs one row per worker, and bucketing:2 leaves 13 rows"
    assert skip_reason("smea", "nnm", 25, 5, "alie").startswith(
        "smea's exact search scores C(25, 5) = 53130 subsets")
    assert skip_reason("smea", "bucketing:2", 25, 5, "opt-alie") is None  # C(13, 5) = 1287
    assert skip_reason("fltrust", "none", 25, 1, "opt-ipm") == (
        "opt-alie and opt-ipm evaluate the rule on a worker, but fltrust needs the fltrust "
        "protocol's server, which the attack does not replicate")
    # every precondition skip is one main.py refuses (SMEA's is for time only)
    base = exp.runs("full")[0].flags
    for cell, why in full:
        if "fang" in why or why.startswith("smea"):
            continue
        with pytest.raises(ConfigError):
            validate(Config.from_dict({**base, **cell}))
    assert ATTACK_SET == ["signflip", "labelflip", "alie", "ipm", "opt-alie", "opt-ipm",
                          "minmax", "minsum", "fang", "mimic"]
    byzfl = grids.get("worstcase_byzfl").runs()
    # 2 splits x 2 rules x (f = 1..4 x 3 attacks + the f = 0 reference), n = 10 + f
    assert len(byzfl) == 2 * 2 * (4 * 3 + 1)
    assert {(r.flags["num_byzantine"], r.flags["num_workers"]) for r in byzfl} == {
        (f, 10 + f) for f in range(5)}
    assert {r.flags["pre"] for r in byzfl} == {"clip:2,nnm"}


@pytest.mark.slow
def test_a_published_grid_restores_and_continues(tmp_path, capsys):
    """publish packs the run logs; restored elsewhere they rebuild the same table and the runner
    counts them as done (a grid published half-way continues where it stopped)."""
    from experiments import archive, publish, report

    exp = grids.get("smoke")
    exp_dir = runner.run_experiment(exp, rounds=3, out_root=str(tmp_path / "a"), quiet=True)
    written = publish.publish(exp_dir, str(tmp_path / "docs"))
    published = os.path.dirname(written[-1])
    assert written[-1].endswith("runs.tar.gz")
    restored_dir, restored, kept = archive.restore(published, str(tmp_path / "b"))
    assert (restored, kept) == (4, 0) and os.path.basename(restored_dir) == "smoke-digits"
    report.write_report(restored_dir, quiet=True)

    def table(d):
        md = open(os.path.join(d, "report.md")).read()
        return [ln for ln in md.splitlines() if ln.startswith("|")]

    assert table(restored_dir) == table(exp_dir)
    capsys.readouterr()
    runner.run_experiment(exp, rounds=3, out_root=str(tmp_path / "b"))
    assert capsys.readouterr().out.count("skipped") == 4
    assert archive.restore(published, str(tmp_path / "b"))[1:] == (0, 4)  # nothing overwritten
    assert archive.main(["restore", str(tmp_path / "nothing")]) == 2


def test_a_tall_heat_map_is_split_into_panels_by_its_last_row_key(tmp_path):
    logs = [runlogs.RunLog(f"r{i}{p}{a}", {"agg": f"rule{i}", "pre": p, "attack": a, "seed": 0},
                           {"final_test_accuracy": float(i)}, [])
            for i in range(15) for p in ("none", "nnm") for a in ("alie", "ipm")]
    heat = tmp_path / "heat.png"
    assert figures.plot_grid(str(heat), str(tmp_path / "bars.png"), logs, ("agg", "pre"),
                             ("attack",), "t") == str(heat)
    from PIL import Image

    with Image.open(heat) as im:  # two panels of 15 rules side by side: taller than wide
        w, h = im.size
    assert 30 > figures.MAX_HEAT_ROWS and h > 0.5 * w, (w, h)


def test_no_attack_reference_cells_do_not_count_as_a_rules_worst_attack(tmp_path):
    # Found in the published worstcase_byzfl report: "worst attack most often, trmean: ...,
    # none (2 of 10)" counted the f = 0 reference runs as cells the rule lost to no attack.
    from experiments import report

    exp = grids.get("worstcase_byzfl")
    flags = {k: v for k, v in exp.runs("fmnist")[0].flags.items()
             if k not in ("partition", "agg", "num_byzantine", "attack")}
    exp_dir = tmp_path / "worstcase_byzfl"
    finals = {(0, "none"): 85, (1, "ipm"): 80, (1, "opt-ipm"): 70, (2, "ipm"): 60,
              (2, "opt-ipm"): 65}
    for agg in ("trmean", "rfa"):
        for (f, attack), acc in finals.items():
            cell = dict(partition="iid", agg=agg, num_byzantine=f, attack=attack)
            _write_run(exp_dir, cell, 0, [acc], {**flags, "num_workers": 10 + f})
    report.write_report(str(exp_dir), quiet=True)
    md = (exp_dir / "report.md").read_text()
    assert "- worst attack most often, trmean: opt-ipm (1 of 2), ipm (1 of 2)" in md, md


def test_best_worst_case_names_attacks_not_run_against_it():
    # CClip's worst case is over fewer attacks (no opt-alie: its state is the server's), so the
    # best line says so and names the best of the defenses that faced more of the attacks
    from experiments.worst import Worst, _best_lines

    def cell(**acc):
        vals = {(a.replace("_", "-"), 5): v for a, v in acc.items()}
        least = min(vals.values())
        return Worst(least, tuple(k for k, v in vals.items() if v == least), vals, {})

    cells = {("cclip", "none", "iid"): cell(minsum=50.0, alie=60.0),
             ("cm", "none", "iid"): cell(minsum=45.0, alie=50.0, opt_alie=40.0),
             ("krum", "none", "iid"): cell(alie=30.0, opt_alie=35.0)}
    lines = _best_lines(cells, ("agg", "pre"), ("partition",), ("iid",), ("attack",),
                        ("attack", "num_byzantine"))
    assert lines == ["- best worst case, iid: cclip, none 50.0 % (worst: minsum, f=5; not run: "
                     "opt-alie)",
                     "  - of the defenses that faced more of the attacks: cm, none 40.0 % "
                     "(worst: opt-alie, f=5)"]
