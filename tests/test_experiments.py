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


def test_every_grid_is_well_formed(tmp_path):
    from experiments.runner import check

    for exp in grids.EXPERIMENTS.values():
        for size in exp.sizes:
            runs = exp.runs(size)
            assert runs, exp.name
            assert len({r.name for r in runs}) == len(runs)
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
