"""End-to-end training on digits (the embedded default dataset), in-process through ``main.main``.

Thresholds were set from measured runs with a margin (seeds 0-2, 2026-11): clean mean on iid
digits reaches ~96% in 40 rounds; under bit flip with n = 9, f = 4 after 25 rounds the mean
stays at 23-34% while CM reaches 79-87% and CClip (tau = 1) 60-67%.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

import main as main_mod
from common.data.datasets import load_dataset
from common.data.partition import label_counts
from common.run.config import Config, validate
from common.run.io import read_json, read_metrics
from common.run.problem import worker_shards
from tests.processes import run_python, timeless_metrics

pytestmark = pytest.mark.slow


def train(tmp_path, name: str, argv: str) -> tuple[dict, str]:
    out = str(tmp_path / name)
    summary = main_mod.main(argv.split() + ["--no-progress", "-o", out])
    return summary, out


def test_clean_mean_reaches_high_accuracy(tmp_path):
    s, _ = train(tmp_path, "clean", "-n 10 -f 0 --agg mean --attack none --pre none --iid "
                 "--momentum 0.9 --lr 0.1 --rounds 40 --eval-every 20")
    assert s["final_test_accuracy"] >= 90.0


def test_bitflip_breaks_the_mean_but_not_cm_or_cclip(tmp_path):
    base = ("-n 9 -f 4 --attack bitflip --pre none --iid --momentum 0.9 --lr 0.1 --rounds 25 "
            "--eval-every 25")
    acc = {}
    for rule in ("mean", "cm", "cclip --cclip-tau 1"):
        s, _ = train(tmp_path, rule.split()[0], f"{base} --agg {rule}")
        acc[rule.split()[0]] = s["final_test_accuracy"]
    # 4 of 9 workers send -m: the mean moves at 1/9 of the honest speed.
    assert acc["mean"] <= 40.0, acc
    assert acc["cm"] >= 70.0, acc
    assert acc["cclip"] >= 55.0, acc


def test_outputs_and_krum_selection_every_round(tmp_path):
    s, out = train(tmp_path, "krum", "-n 10 -f 2 --agg krum --attack bitflip --pre none "
                   "--iid --rounds 6 --eval-every 3")
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"):
        assert os.path.isfile(os.path.join(out, name)), name
    summary = read_json(os.path.join(out, "summary.json"))
    for key in ("final_test_accuracy", "best_test_accuracy", "rounds", "wall_seconds",
                "cpu_seconds", "num_workers", "num_byzantine", "config"):
        assert key in summary, key
    assert 0 < summary["cpu_seconds"]
    assert (summary["rounds"], summary["num_workers"], summary["num_byzantine"]) == (6, 10, 2)
    assert summary["config"]["agg"] == "krum"
    assert summary["best_test_accuracy"] >= summary["final_test_accuracy"]
    assert summary == json.loads(json.dumps(s))
    assert read_json(os.path.join(out, "config.json")) == summary["config"]

    records = read_metrics(os.path.join(out, "metrics.jsonl"))
    assert [r["round"] for r in records] == list(range(6))
    for r in records:
        assert r["byzantine"] == [8, 9]
        (sel,) = r["rule"]["selected"]
        # Byzantine rows are -m, far from the 8 honest momenta: Krum picks an honest worker.
        assert 0 <= sel < 8
    assert [("test_accuracy" in r) for r in records] == [False, False, True] * 2
    ck = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ck["round"] == 6


def test_same_seed_is_bit_identical_other_seed_differs(tmp_path):
    argv = "-n 8 -f 2 --agg cclip --pre bucketing:2 --attack alie --noniid --rounds 4 --eval-every 2"
    _, a = train(tmp_path, "a", argv + " --seed 3")
    _, b = train(tmp_path, "b", argv + " --seed 3")
    _, c = train(tmp_path, "c", argv + " --seed 4")
    ka, kb, kc = load(a), load(b), load(c)
    assert torch.equal(ka["server"]["params"], kb["server"]["params"])
    assert torch.equal(ka["workers"]["momenta"], kb["workers"]["momenta"])
    assert timeless_metrics(os.path.join(a, "metrics.jsonl")) == \
        timeless_metrics(os.path.join(b, "metrics.jsonl"))
    assert not torch.equal(ka["server"]["params"], kc["server"]["params"])


def load(run_dir):
    """A run's checkpoint."""
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)


def test_compiled_rules_train_to_the_same_model(tmp_path):
    """--compile-rules on runs cm's sorting network compiled: the median picks the same values,
    so the model is bit-identical to the eager run's; auto compiles only long runs."""
    from common.aggregation import sortnet
    from master.server import compile_rules

    argv = "-n 9 -f 2 --agg cm --pre none --attack alie --noniid --rounds 3 --eval-every 3"
    _, a = train(tmp_path, "eager", argv + " --compile-rules off")
    sortnet._compiled.cache_clear()
    _, b = train(tmp_path, "compiled", argv + " --compile-rules on")
    assert sortnet._compiled.cache_info().currsize == 1 and not sortnet._COMPILE_FAILED
    assert torch.equal(load(a)["server"]["params"], load(b)["server"]["params"])
    assert not compile_rules(Config(rounds=100), 200_000)
    assert compile_rules(Config(rounds=500), 1_200_000)
    assert not compile_rules(Config(rounds=10**6, compile_rules="off"), 10**7)


def test_default_command_finishes_and_prints_accuracy(tmp_path):
    # `python main.py` with no arguments runs 150 rounds (timed in bench/rounds.py and the
    # README); here the same defaults with fewer rounds, through the real entry point.
    r = run_python("main.py", "--rounds", "4", "-o", tmp_path / "d")
    assert r.returncode == 0, r.stderr
    assert "final test accuracy" in r.stdout
    cfg = read_json(os.path.join(tmp_path, "d", "config.json"))
    default = Config()
    validate(default)  # the resolved defaults, parameters included
    default = default.to_dict()
    assert {k: v for k, v in cfg.items() if k not in ("rounds", "output")} == \
        {k: v for k, v in default.items() if k not in ("rounds", "output")}


@pytest.mark.parametrize("scheme", ["iid", "noniid", "dirichlet:0.1"])
def test_partitions_label_skew(scheme):
    ds = load_dataset("digits")
    cfg = Config(num_workers=20, num_byzantine=4, partition=scheme)
    shards = worker_shards(cfg, ds.y_train, ds.num_classes)
    assert len(shards) == 20
    counts = label_counts(ds.y_train, shards, ds.num_classes)
    honest = counts[:16]
    # every training sample is held by exactly one honest worker
    assert int(honest.sum()) == len(ds.y_train)
    assert torch.equal(honest.sum(0), torch.bincount(ds.y_train, minlength=10))
    # the Byzantine workers (fixed: the last f) draw from the whole training set
    for i in (16, 19):
        assert torch.equal(counts[i], torch.bincount(ds.y_train, minlength=10))
    classes = (honest > 0).sum(1)
    dominant = honest.max(1).values.double() / honest.sum(1).double()
    if scheme == "iid":
        assert int(classes.min()) >= 9
        assert float(dominant.max()) < 0.25
    elif scheme == "noniid":
        # sorted by label and cut into 16 blocks of ~112: at most 2 classes per worker
        assert int(classes.max()) <= 2
        assert float(dominant.mean()) > 0.75
    else:
        assert float(dominant.mean()) > 0.6
        assert int(classes.min()) >= 1
