"""Federated mode (common/protocols/federated.py): K = 1 with full participation is the gradient
protocol's run bit for bit; K local steps of a client equal K SGD steps by hand on every
gradient path; the sample of m clients is distinct, sorted and reproducible from the seed and
across a resume; a run without the federated flags takes the gradient protocol; the checks at
start-up are one line each; metrics.jsonl records the sampled clients."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main as main_mod
from common.attacks import ATTACKS
from common.attacks.omniscient import alie_vector, alie_z
from common.errors import ConfigError
from common.protocols import protocol_of
from common.protocols.base import GradientClients
from common.protocols.federated import FEDERATED, LocalClients, local_lr, sample_clients
from common.protocols.fltrust import root_indices
from common.run.config import Config, validate
from common.run.flags import parse_args
from common.run.io import read_metrics
from common.run.problem import build_problem
from tests.processes import final_params, timeless_metrics
from worker.group import make_worker_group

CPU = torch.device("cpu")
SMALL = ["--model", "softmax", "-n", "6", "-f", "1", "--batch_size", "16", "--rounds", "6",
         "--eval-every", "3", "--no-progress"]


def run(argv, out) -> dict:
    return main_mod.main([str(a) for a in argv] + ["-o", str(out)])


def records(path) -> list[dict]:
    """metrics.jsonl without wall-clock seconds and the federated mode's own keys."""
    return [{k: v for k, v in r.items() if k not in ("local_lr", "clients")}
            for r in timeless_metrics(path)]


# ------------------------------------------------------------------------------------------
# K = 1 and the gradient protocol

@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    # cclip after bucketing (absolute tau), ALIE (omniscient), heavy-ball momentum 0.9
    ["--agg", "cclip", "--pre", "bucketing:2", "--attack", "alie", "--momentum", "0.9"],
    # ema momentum, weight decay and server momentum, a random Byzantine set, label flips
    ["--agg", "trmean", "--pre", "nnm", "--attack", "labelflip", "--byz-schedule", "random",
     "--momentum", "0.5", "--momentum-style", "ema", "--weight-decay", "0.01",
     "--server-momentum", "0.9"],
])
def test_one_step_at_local_lr_1_is_the_gradient_protocol_bit_for_bit(flags, tmp_path):
    base = SMALL + flags + ["--lr", "0.2"]
    run(base, tmp_path / "grad")
    run(base + ["--local-steps", "1", "--local-lr", "1", "--server-lr", "0.2",
                "--clients-per-round", "6"], tmp_path / "fed")
    assert torch.equal(final_params(tmp_path / "grad"), final_params(tmp_path / "fed"))
    assert records(tmp_path / "fed" / "metrics.jsonl") == records(tmp_path / "grad" / "metrics.jsonl")
    ck = torch.load(tmp_path / "fed" / "checkpoint.pt", weights_only=True)
    ref = torch.load(tmp_path / "grad" / "checkpoint.pt", weights_only=True)
    assert torch.equal(ck["workers"]["momenta"], ref["workers"]["momenta"])


@pytest.mark.slow
def test_one_step_at_the_defaults_scales_the_update_by_the_local_lr(tmp_path):
    """--local-lr defaults to --lr and --server-lr to 1: for the mean the step x - 1 * mean(lr
    g) is the gradient protocol's x - lr mean(g) up to float rounding."""
    base = SMALL + ["--agg", "mean", "--pre", "none", "--attack", "none", "--momentum", "0",
                    "--lr", "0.3"]
    run(base, tmp_path / "grad")
    run(base + ["--server-lr", "1"], tmp_path / "fed")
    torch.testing.assert_close(final_params(tmp_path / "fed"), final_params(tmp_path / "grad"),
                               atol=1e-6, rtol=1e-5)


def test_without_the_federated_flags_the_run_is_the_gradient_protocol():
    cfg, _ = parse_args(["--local-steps", "1", "--clients-per-round", "0"])
    assert protocol_of(cfg).name == "gradient"
    assert protocol_of(cfg) is not FEDERATED and cfg.participants == cfg.num_workers
    assert cfg.f == cfg.num_byzantine
    group = make_worker_group(cfg, build_problem(cfg), range(cfg.num_workers), CPU)
    assert type(group.clients) is GradientClients
    assert protocol_of(cfg).round_record(cfg, 0, None) == {}
    for flag, value in (("--local-steps", "2"), ("--local-lr", "0.1"), ("--server-lr", "1"),
                        ("--local-momentum", "0"), ("--clients-per-round", "5"),
                        ("--participation", "1")):
        assert protocol_of(parse_args([flag, value])[0]) is FEDERATED, flag


# ------------------------------------------------------------------------------------------
# Local steps by hand

@pytest.mark.parametrize("path", ["linear", "vmap", "loop"])
@pytest.mark.parametrize("style,beta", [("heavyball", 0.7), ("ema", 0.7), ("heavyball", 0.0)])
def test_k_local_steps_of_a_client_are_k_sgd_steps_by_hand(path, style, beta):
    K, lr, t = 4, 0.3, 2
    cfg = Config(model="mlp", num_workers=5, num_byzantine=0, attack="none", agg="mean",
                 pre="none", partition="noniid", batch_size=8, grad_path=path, lr=lr,
                 local_steps=K, local_momentum=beta, momentum_style=style, clients_per_round=3)
    validate(cfg)
    problem = build_problem(cfg)
    group = make_worker_group(cfg, problem, range(5), CPU)
    assert isinstance(group.clients, LocalClients)
    assert (group.stack is not None) == (path == "linear")   # the fused per-client steps
    start = 0.1 * torch.randn(5, problem.dim, generator=torch.Generator().manual_seed(3))
    group.momenta.copy_(start)                           # momenta carried from earlier rounds
    params = problem.init_params.clone()
    active = torch.tensor([False, True, False, True, True])
    byz = torch.zeros(5, dtype=torch.bool)
    deltas = group.compute(params, t, byz, active)
    assert deltas.shape == (3, problem.dim)

    model = problem.model
    for row, client in enumerate((1, 3, 4)):
        theta, v = params.clone(), start[client].clone()
        kept = v
        for k in range(K):
            x, y = group.batches(t, k)
            problem.flat.load_into(model, theta)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[client]), y[client]).backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            v = beta * v + (1 - beta) * g if style == "ema" else beta * v + g
            theta = theta - lr * v
            kept = v if k == 0 or beta else kept     # beta = 0: the buffer keeps step 0's g
        torch.testing.assert_close(deltas[row], params - theta, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(group.momenta[client], kept, atol=1e-6, rtol=1e-4)
    # clients that sat the round out kept their momenta
    assert torch.equal(group.momenta[0], start[0]) and torch.equal(group.momenta[2], start[2])


def test_local_lr_follows_the_schedule():
    cfg = Config(lr=0.2, local_lr=0.05, lr_schedule="step", lr_milestones=(3,), lr_gamma=0.5)
    assert local_lr(cfg, 0) == 0.05 and local_lr(cfg, 3) == pytest.approx(0.025)
    assert local_lr(Config(lr=0.2, lr_schedule="sqrt"), 3) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------
# Attacks on deltas

@pytest.mark.slow
@pytest.mark.parametrize("attack", ATTACKS.names())
def test_every_attack_runs_on_deltas(attack, tmp_path):
    schedule = "fixed" if attack == "mimic2" else "random"
    run(["--model", "softmax", "-n", "8", "-f", "2", "--agg", "cm", "--pre", "none",
         "--attack", attack, "--byz-schedule", schedule, "--local-steps", "2",
         "--clients-per-round", "5", "--rounds", "3", "--eval-every", "3", "--no-progress"],
        tmp_path)
    assert torch.isfinite(final_params(tmp_path)).all()


def test_omniscient_attacks_craft_from_the_sampled_honest_deltas(tmp_path):
    cfg, _ = parse_args(["--model", "softmax", "-n", "10", "-f", "3", "--agg", "cm", "--pre",
                         "none", "--attack", "alie", "--local-steps", "3",
                         "--clients-per-round", "6", "--byz-schedule", "random"])
    tr = main_mod.in_process_trainer(cfg, str(tmp_path))
    byz = np.zeros(10, bool)
    byz[[2, 7, 9]] = True
    clients = np.array([0, 2, 4, 5, 7, 8])
    res = tr.transport.round(tr.server.params, 0, byz, clients)
    assert res.messages.shape == (6, tr.problem.dim) and len(res.losses) == 6
    honest = res.messages[[0, 2, 3, 5]]
    z = alie_z(6, cfg.sampled_byzantine)                 # built for the m = 6 rows it sees
    assert res.info["attack"]["z"] == pytest.approx(z)
    torch.testing.assert_close(res.messages[1], alie_vector(honest, z))
    torch.testing.assert_close(res.messages[4], res.messages[1])


def test_backdoor_scales_the_delta_of_poisoned_local_training():
    deltas = []
    for scale in (1.0, 4.0):
        cfg, _ = parse_args(["--model", "mlp", "-n", "6", "-f", "2", "--agg", "cm", "--pre",
                             "none", "--attack", "backdoor", "--backdoor-scale", str(scale),
                             "--local-steps", "3", "--clients-per-round", "4"])
        group = make_worker_group(cfg, build_problem(cfg), range(6), CPU)
        byz = torch.tensor([False] * 4 + [True] * 2)
        active = torch.tensor([True, False, True, False, True, True])
        deltas.append(group.compute(build_problem(cfg).init_params, 1, byz, active))
    torch.testing.assert_close(deltas[1][2:], 4 * deltas[0][2:], rtol=0, atol=0)
    torch.testing.assert_close(deltas[1][:2], deltas[0][:2], rtol=0, atol=0)


def test_fltrust_judges_updates_against_the_servers_own_k_step_update(tmp_path):
    cfg, _ = parse_args(["--model", "softmax", "-n", "8", "-f", "2", "--agg", "fltrust", "--pre",
                         "none", "--attack", "signflip", "--local-steps", "3",
                         "--clients-per-round", "4", "--local-momentum", "0.5", "--root-size",
                         "40", "--lr", "0.1", "--local-lr", "0.2", "--lr-schedule", "step",
                         "--lr-milestones", "2"])
    tr = main_mod.in_process_trainer(cfg, str(tmp_path))
    ds, rule = tr.problem.dataset, tr.server.rule
    root = root_indices(cfg, len(ds.y_train))
    assert not set(root.tolist()) & set(torch.cat(tr.problem.shards).tolist())
    x = tr.server.params + 0.1 * torch.randn(tr.problem.dim, generator=torch.Generator().manual_seed(0))
    tr.server.params.copy_(x)
    tr.server.aggregate(torch.randn(4, tr.problem.dim), torch.ones(4, dtype=torch.bool), 2)
    assert rule.round == 2
    rule.buf = None                            # from here by hand: 3 steps at 0.2 x 0.1
    g0 = rule.g0()
    model, theta, buf = tr.problem.model, x.clone(), torch.zeros_like(x)
    for _ in range(3):
        tr.problem.flat.load_into(model, theta)
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(ds.x_train[root].float()), ds.y_train[root]).backward()
        buf = 0.5 * buf + torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        theta = theta - 0.02 * buf
    torch.testing.assert_close(g0, x - theta, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# Sampling

def test_sampling_draws_m_distinct_clients_reproducibly():
    draws = [sample_clients(7, t, 50, 20) for t in range(30)]
    for s in draws:
        assert len(s) == 20 == len(set(s.tolist())) and list(s) == sorted(s)
        assert 0 <= s.min() and s.max() < 50
    assert all(np.array_equal(a, sample_clients(7, t, 50, 20)) for t, a in enumerate(draws))
    assert len({tuple(s) for s in draws}) == 30                      # redrawn every round
    assert not np.array_equal(draws[0], sample_clients(8, 0, 50, 20))  # and per seed
    # every client is drawn about m / n = 40 % of the rounds
    counts = np.bincount(np.concatenate([sample_clients(0, t, 50, 20) for t in range(500)]),
                         minlength=50)
    assert counts.min() > 150 and counts.max() < 250


@pytest.mark.slow
def test_sampled_clients_are_logged_and_only_they_send(tmp_path):
    flags = SMALL + ["-n", "10", "-f", "2", "--agg", "cm", "--pre", "none", "--attack",
                     "signflip", "--local-steps", "2", "--participation", "0.4"]
    run(flags, tmp_path / "a")
    recs = read_metrics(tmp_path / "a" / "metrics.jsonl")
    cfg = json.load(open(tmp_path / "a" / "config.json"))
    assert cfg["clients_per_round"] == 4
    for r in recs:
        assert r["clients"] == sample_clients(0, r["round"], 10, 4).tolist()
        assert set(r["byzantine"]) == {c for c in r["clients"] if c >= 8}   # fixed: the last 2
        assert r["lr"] == 1.0 and r["local_lr"] == 0.1


# ------------------------------------------------------------------------------------------
# Checks at start-up

@pytest.mark.parametrize("argv,match", [
    (["--local-steps", "0"], "--local-steps must be >= 1"),
    (["--local-lr", "-1"], "--local-lr must be a positive number"),
    (["--server-lr", "0"], "--server-lr must be a positive number"),
    (["--local-momentum", "1"], r"--local-momentum must be in \[0, 1\)"),
    (["--clients-per-round", "21"], r"--clients-per-round must be in \[1, n = 20\]"),
    (["--participation", "1.5"], r"--participation must be in \(0, 1\]"),
    (["--participation", "0.5", "--clients-per-round", "3"], "not both"),
    (["--agg", "signmv", "--local-steps", "2"], "runs the sign protocol"),
    (["--agg", "rsa", "--pre", "none", "--momentum", "0", "--clients-per-round", "5"],
     "runs the model protocol"),
    (["--agg", "diversefl", "--pre", "none", "--momentum", "0", "--local-steps", "3"],
     "runs the diversefl protocol"),
    (["--clients-per-round", "5", "--defense-f", "5"], "--defense-f must be below m"),
    # krum at m = 6 rows with f = ceil(6 * 4 / 20) = 2: needs 6 >= 2f + 3
    (["--agg", "krum", "-f", "4", "--attack", "alie", "--clients-per-round", "6"], "krum needs"),
    (["--agg", "monna", "--pre", "none", "--clients-per-round", "10"], "it sees a sample"),
])
def test_bad_federated_settings_are_one_line(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_args(argv)


def test_defense_f_defaults_to_the_byzantine_share_of_the_sample():
    cfg, _ = parse_args(["-n", "50", "-f", "10", "--clients-per-round", "20", "--agg", "cm",
                         "--pre", "none"])
    assert (cfg.participants, cfg.f, cfg.sampled_byzantine) == (20, 4, 4)
    cfg, _ = parse_args(["-n", "50", "-f", "9", "--participation", "0.3", "--agg", "cm",
                         "--pre", "none", "--defense-f", "2"])
    assert (cfg.clients_per_round, cfg.f, cfg.sampled_byzantine) == (15, 2, 3)


# ------------------------------------------------------------------------------------------
# MPI

FED_MPI = ["-n", "10", "-f", "2", "--byz-schedule", "random", "--agg", "cclip", "--pre", "nnm",
           "--attack", "alie", "--local-steps", "5", "--clients-per-round", "4",
           "--local-momentum", "0.9", "--lr", "0.05", "--rounds", "8", "--eval-every", "4"]


@pytest.mark.mpi
@pytest.mark.slow
def test_mpi_equals_main_with_local_steps_a_sample_an_attack_and_a_robust_rule(tmp_path):
    """K = 5, m = 4 of n = 10 on 4 worker ranks (some idle in some rounds), ALIE crafted from
    the sampled honest deltas, CClip after NNM: the same parameters, samples and momenta."""
    from tests.processes import run_mpi

    p = run_mpi(5, *FED_MPI, "-o", str(tmp_path / "mpi"))
    assert p.returncode == 0, p.stderr[-3000:]
    run(FED_MPI + ["--no-progress"], tmp_path / "main")
    a = read_metrics(tmp_path / "mpi" / "metrics.jsonl")
    b = read_metrics(tmp_path / "main" / "metrics.jsonl")
    assert [r["clients"] for r in a] == [r["clients"] for r in b]
    assert [r["byzantine"] for r in a] == [r["byzantine"] for r in b]
    assert any(r["byzantine"] for r in a) and all("faults" not in r for r in a)
    assert a[-1]["test_accuracy"] == pytest.approx(b[-1]["test_accuracy"], abs=0.3)
    torch.testing.assert_close(final_params(tmp_path / "mpi"), final_params(tmp_path / "main"),
                               atol=1e-5, rtol=0)
    ca = torch.load(tmp_path / "mpi" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "main" / "checkpoint.pt", weights_only=True)
    torch.testing.assert_close(ca["workers"]["momenta"], cb["workers"]["momenta"], atol=1e-5,
                               rtol=0)


@pytest.mark.mpi
@pytest.mark.slow
def test_mpi_a_bad_delta_is_a_bad_message_and_an_idle_rank_is_no_fault(tmp_path):
    """Rank 2 (clients 3, 4, 5) sends NaN deltas: exactly its sampled clients are dropped as
    ``nonfinite`` in the rounds they are drawn, nothing is logged when none of them is, and the
    model stays finite."""
    from tests.processes import run_mpi

    d = tmp_path / "f"
    p = run_mpi(5, "-n", "10", "-f", "0", "--attack", "none", "--agg", "cm", "--pre", "none",
                "--local-steps", "2", "--clients-per-round", "3", "--rounds", "10",
                "--eval-every", "10", "--inject-fault", "nan:2", "-o", str(d))
    assert p.returncode == 0, p.stderr[-3000:]
    recs = read_metrics(d / "metrics.jsonl")
    assert len(recs) == 10
    for r in recs:
        mine = [c for c in r["clients"] if c in (3, 4, 5)]
        assert r.get("faults", {}) == {str(c): "nonfinite" for c in mine}, r
    assert any(r.get("faults") for r in recs) and any(not r.get("faults") for r in recs)
    assert torch.isfinite(final_params(d)).all()
