"""Election-coded signSGD end to end (worker/coded.py, master/signsgd.py, the config defaults):
the seed's commands, packed votes through the transport path, node votes against an independent
autograd computation, the master's step by hand, bytes on the wire, grouping independence.

The codes themselves (tolerance counts, Bernoulli redundancy, search) are tested in
tests/test_coding.py, and the bit packing in tests/test_bitpack.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.attacks import make_attack
from common.errors import ConfigError
from common.protocols import protocol_of
from common.protocols.sign import MajorityVote, code_for
from common.run.config import Config
from common.run.flags import parse_args
from common.run.problem import build_problem
from common.wire.formats import VoteWire
from master.server import Server
from worker.group import make_worker_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED_CMD = "--trial_idx 1 --num_nodes 5 --num_Byz_nodes 1 --batch_size 120".split()
PAPER = np.array([[1, 0, 0, 0, 0], [0, 1, 1, 1, 0]] + [[1] * 5] * 3)


def coded_cfg(*extra: str) -> Config:
    cfg, _ = parse_args([*SEED_CMD, "--deterministic", "True", "--redundancy", "3.8",
                         "--no-progress", *extra])
    return cfg


# -- configuration --------------------------------------------------------------------------

def test_seed_command_selects_signsgd_with_the_papers_master():
    cfg = coded_cfg()
    assert protocol_of(cfg).name == "sign" and cfg.agg == "signmv"
    assert (cfg.attack, cfg.pre, cfg.partition, cfg.momentum) == ("reverse", "none", "iid", 0.0)
    assert (cfg.server_momentum, cfg.weight_decay, cfg.lr) == (0.9, 1e-4, 1e-3)
    assert np.array_equal(code_for(cfg), PAPER)


def test_explicit_flags_win_over_the_election_defaults():
    cfg = coded_cfg("--attack", "directional", "--lr", "0.01", "--server-momentum", "0.5")
    assert (cfg.attack, cfg.lr, cfg.server_momentum) == ("directional", 0.01, 0.5)
    # a coding flag next to an explicit gradient rule leaves that run alone
    cfg, _ = parse_args(["--redundancy", "2", "-n", "5", "-f", "1", "--agg", "cm"])
    assert protocol_of(cfg).name == "gradient" and cfg.attack == "none" and cfg.momentum == 0.0


def test_cifar10_gets_the_papers_resnet18_schedule():
    cfg = coded_cfg("--dataset", "cifar10")
    per_epoch = math.ceil(50000 / 120)  # 417 iterations per epoch
    assert (cfg.model, cfg.lr, cfg.lr_schedule) == ("resnet18", 1e-4, "step")
    assert cfg.rounds == 100 * per_epoch and cfg.lr_milestones == (40 * per_epoch, 80 * per_epoch)
    cfg, _ = parse_args("--num_nodes 15 --num_Byz_nodes 3 --redundancy 2 --batch_size 120 "
                        "--dataset cifar10".split())
    assert cfg.lr_milestones == (20 * per_epoch, 40 * per_epoch, 80 * per_epoch)


@pytest.mark.parametrize("argv,needle", [
    ("-n 5 -f 1 --deterministic True --redundancy 2.7", "no known deterministic code for n=5, r=2.7"),
    ("-n 5 -f 1 --agg signmv --attack alie",
     "does not act on sign votes; choose one of: bitflip, directional, none, random, reverse"),
    ("-n 5 -f 1 --agg signmv --pre bucketing:2", "use --pre none"),
    ("-n 5 -f 1 --agg signmv --momentum 0.9", "use --momentum 0"),
    ("-n 5 -f 1 --agg signmv --noniid", "--partition noniid does not apply"),
    ("-n 5 -f 1 --agg signmv --batch_size 4", "at least n = 5 samples, got 4"),
])
def test_bad_sign_configs_are_config_errors(argv, needle):
    with pytest.raises(ConfigError) as e:
        parse_args(argv.split())
    assert needle in str(e.value) and "\n" not in str(e.value)


# -- the wire ---------------------------------------------------------------------------------

def test_wire_layout_bits_follow_row_parity():
    d = 21  # ceil(21/8) = 3 bytes per bit-plane
    G = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    w = VoteWire(G, d)
    assert w.bits.tolist() == [1, 2, 1] and w.nbytes.tolist() == [3, 6, 3]
    assert w.width == 7 and w.float32_bytes == 84
    assert VoteWire(PAPER, d).bits.tolist() == [1] * 5  # the paper's code: 1 bit for every node


def test_packed_votes_round_trip_through_stack_payload_and_tally():
    d = 19
    G = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    w = VoteWire(G, d)
    g = torch.Generator().manual_seed(3)
    votes = torch.randint(-1, 2, (3, d), generator=g).float()
    votes[[0, 2]] = torch.where(votes[[0, 2]] == 0, 1.0, votes[[0, 2]])  # 1-bit nodes: +-1
    bufs = [w.pack(votes[j], j) for j in range(3)]
    assert [b.nbytes for b in bufs] == [3, 6, 3]
    stack = w.stack(bufs)
    # what an MPI rank hosting nodes 1..2 sends, and rank 0's split of it
    payload = w.payload(stack[1:], range(1, 3))
    assert payload.nbytes == w.payload_nbytes(range(1, 3)) == 9
    assert all(np.array_equal(a, b) for a, b in zip(w.split(payload, range(1, 3)), bufs[1:]))
    total, info = w.tally(stack)
    assert torch.equal(total, votes.sum(0)) and info == {}
    # a missing node abstains; a ternary buffer with a sign bit on a zero coordinate is invalid
    bad = bufs[1].copy()
    bad[0] = 0           # clear the first 8 nonzero bits ...
    bad[3] |= 0x80       # ... and set coordinate 0's sign bit
    total, info = w.tally(w.stack([bufs[0], bad, None]))
    assert info == {"invalid": [1], "abstained": [2]}
    assert torch.equal(total, votes[0])


def test_master_vote_and_step_by_hand():
    cfg = coded_cfg("--lr", "0.5", "--weight-decay", "0.25", "--server-momentum", "0.5")
    problem = build_problem(cfg)
    d = problem.dim
    server = Server(cfg, problem, torch.device("cpu"))
    assert isinstance(server.rule, MajorityVote)
    w = server.rule.wire
    votes = torch.ones(5, d)
    votes[:2, 0] = -1                 # coordinate 0: 3 to 2 for +1
    votes[:3, 1] = -1                 # coordinate 1: 3 to 2 for -1
    stack = w.stack([w.pack(v, j) for j, v in enumerate(votes)])
    update, info = server.aggregate(stack, torch.ones(5, dtype=torch.bool), 0)
    expected = torch.ones(d)
    expected[1] = -1
    assert torch.equal(update, expected) and info["margin"] == pytest.approx((d - 2 + 2 / 5) / d)
    x0 = server.params.clone()
    server.step(update, 0)
    u1 = expected + 0.25 * x0          # buf = u1
    x1 = x0 - 0.5 * u1
    assert torch.allclose(server.params, x1)
    server.step(update, 1)
    buf = 0.5 * u1 + (expected + 0.25 * x1)
    assert torch.allclose(server.params, x1 - 0.5 * buf)


# -- coded workers ----------------------------------------------------------------------------

def _reference_slice_signs(group, params: torch.Tensor, t: int) -> torch.Tensor:
    """(n, d) signs of the n slice gradients by plain autograd, one slice at a time."""
    idx = group.clients.slice_indices(t)
    model = group.problem.model
    group.flat.load_into(model, params)
    out = []
    for k in range(idx.shape[0]):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(group.x[idx[k]]), group.y[idx[k]]).backward()
        g = torch.empty(group.flat.dim)
        out.append(torch.sign(group.flat.flatten_grads(model, g)))
    return torch.stack(out)


def _group(cfg: Config, ids=None):
    problem = build_problem(cfg)
    attack = make_attack(cfg.attack, cfg.num_workers, cfg.num_byzantine, 10)
    ids = range(cfg.num_workers) if ids is None else ids
    return make_worker_group(cfg, problem, ids, torch.device("cpu"), attack=attack), problem


def test_slices_are_an_epoch_permutation_of_the_training_set():
    group, problem = _group(coded_cfg())
    N = len(problem.dataset.y_train)
    per_round = 120
    rounds = -(-N // per_round)
    seen = torch.cat([group.clients.slice_indices(t).flatten() for t in range(rounds)])
    # the first epoch's N samples are all distinct, the rest of the last round starts epoch 2
    assert group.clients.slice_indices(0).shape == (5, 24)
    assert len(torch.unique(seen[:N])) == N
    assert not torch.equal(group.clients.slice_indices(0), group.clients.slice_indices(rounds))


@pytest.mark.parametrize("path", ["linear", "vmap", "loop"])
def test_node_votes_match_an_independent_computation(path):
    cfg = coded_cfg("--grad-path", path)
    group, problem = _group(cfg)
    params = problem.init_params + 0.01 * torch.randn(problem.dim,
                                                      generator=torch.Generator().manual_seed(0))
    t = 3
    byz = torch.tensor([False] * 4 + [True])
    votes = group.clients.votes(params, t, byz)
    S = _reference_slice_signs(group, params, t)
    honest = torch.sign(torch.as_tensor(PAPER, dtype=torch.float32) @ S)
    # 1-bit nodes break exact ties (zero slice gradients: e.g. always-blank pixels) by a coin
    tie = honest == 0
    assert tie.any(), "digits has blank pixels: some slice gradients are exactly 0"
    assert torch.equal(votes[:4][~tie[:4]], honest[:4][~tie[:4]])
    assert set(votes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(votes[4], -group.clients.votes(params, t, torch.zeros(5, dtype=torch.bool))[4])
    # the code tolerates one Byzantine node: the master's vote is the slice majority
    # wherever no slice gradient is exactly zero
    master = torch.sign(votes.sum(0))
    clean = (S != 0).all(0)
    assert torch.equal(master[clean], torch.sign(S.sum(0))[clean])


def test_plain_mv_loses_the_majority_to_one_reverse_node():
    cfg, _ = parse_args([*SEED_CMD, "--deterministic", "True", "--redundancy", "1"])
    group, problem = _group(cfg)
    votes = group.clients.votes(problem.init_params, 0, torch.tensor([False] * 4 + [True]))
    S = _reference_slice_signs(group, problem.init_params, 0)
    clean = (S != 0).all(0)
    wrong = (torch.sign(votes.sum(0)) != torch.sign(S.sum(0))) & clean
    # the reverse node flips exactly the coordinates whose slice signs are 3 to 2 with slice 4
    # on the majority side (sum s = +-1 and s_4 = sum s)
    s = S.sum(0)
    expected = clean & (s.abs() == 1) & (S[4] == s)
    assert wrong.any() and torch.equal(wrong, expected)


def test_votes_do_not_depend_on_the_grouping():
    """What MPI ranks hosting nodes {0, 1} and {2, 3, 4} send equals one in-process group."""
    cfg = coded_cfg("--redundancy", "2.5", "--deterministic", "False", "--attack", "random",
                    "--byz-schedule", "random")
    whole, problem = _group(cfg)
    assert set(whole.wire.bits.tolist()) == {1, 2}, "this seed's code mixes 1- and 2-bit nodes"
    params = problem.init_params
    byz = torch.tensor([False, True, False, False, True])
    one = whole.compute(params, 5, byz)
    parts = [_group(cfg, ids)[0] for ids in (range(0, 2), range(2, 5))]
    two = torch.cat([parts[0].compute(params, 5, byz[:2]), parts[1].compute(params, 5, byz[2:])])
    assert torch.equal(one, two)


# -- runs -------------------------------------------------------------------------------------

def test_in_process_run_records_bytes_on_the_wire(tmp_path):
    import main as main_mod

    out = tmp_path / "run"
    main_mod.main([*SEED_CMD, "--redundancy", "2.5", "--rounds", "2", "--eval-every", "1",
                   "--no-progress", "-o", str(out)])
    recs = [json.loads(line) for line in open(out / "metrics.jsonl")]
    cfg = Config.from_dict(json.load(open(out / "config.json")))
    d = build_problem(cfg).dim
    bits = VoteWire(code_for(cfg), d).bits
    for r in recs:
        w = r["wire"]
        assert w["float32_bytes"] == 4 * d
        assert w["vote_bytes"] == [b * -(-d // 8) for b in bits.tolist()]
    one_bit = -(-d // 8)
    assert 4 * d / one_bit >= 31.99  # 32x smaller than float32 up to the last byte's padding


@pytest.mark.slow
def test_seed_commands_run_as_written(tmp_path):
    """The seed's three commands (plus --rounds, --output) as subprocesses, run side by side."""
    codes = {"plain": ["--deterministic", "True", "--redundancy", "1.0"],
             "det": ["--deterministic", "True", "--redundancy", "3.8"],
             "bern": ["--redundancy", "2.5"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {k: subprocess.Popen([sys.executable, "main.py", *SEED_CMD, *v, "--rounds", "3",
                                  "--eval-every", "3", "--no-progress", "-o", str(tmp_path / k)],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for k, v in codes.items()}
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "final test accuracy" in out
        s = json.load(open(tmp_path / k / "summary.json"))
        assert s["rounds"] == 3 and s["config"]["agg"] == "signmv"
        assert s["final_test_accuracy"] > 20  # 3 sign steps already beat chance (10%)


def test_resume_continues_to_the_same_model(tmp_path):
    import main as main_mod
    from common.run.io import load_torch

    flags = [*SEED_CMD, "--redundancy", "2.5", "--attack", "random", "--eval-every", "2",
             "--no-progress"]
    main_mod.main([*flags, "--rounds", "4", "-o", str(tmp_path / "full")])
    main_mod.main([*flags, "--rounds", "2", "-o", str(tmp_path / "cut")])
    main_mod.main(["--resume", str(tmp_path / "cut"), "--rounds", "4", "--no-progress"])
    a = load_torch(str(tmp_path / "full" / "checkpoint.pt"))["server"]
    b = load_torch(str(tmp_path / "cut" / "checkpoint.pt"))["server"]
    assert torch.equal(a["params"], b["params"]) and torch.equal(a["buf"], b["buf"])
