"""RSA (l1 variant): client and master updates computed by hand, the worker group's round against
plain autograd, attacked uploads, checkpoint/resume of the clients' models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.attacks import make_attack
from common.errors import ConfigError
from common.protocols import protocol_of
from common.protocols.rsa import RSAClients, RSAMaster, rsa_client_step, rsa_master_direction
from common.run.config import Config
from common.run.flags import parse_args
from common.run.io import load_torch
from common.run.problem import build_problem
from master.server import Server
from worker.group import make_worker_group


def test_client_step_by_hand():
    thetas = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    grads = torch.tensor([[2.0, 4.0], [-1.0, 0.0]])
    theta_m = torch.tensor([0.5, 0.0])
    out = rsa_client_step(thetas, grads, theta_m, lr=0.1, n=2, delta=0.5)
    # client 0: [1 - 0.1 (2/2 + 0.5), -2 - 0.1 (4/2 - 0.5)]; client 1 sits on theta_M: sign 0
    assert torch.allclose(out, torch.tensor([[0.85, -2.15], [0.55, 0.0]]))


def test_master_direction_by_hand():
    theta_m = torch.tensor([0.5, 0.0])
    models = torch.tensor([[0.85, -2.15], [0.55, 0.0], [0.0, 1.0]])
    # signs of theta_M - theta_j: [-1, 1], [-1, 0], [1, -1] -> sum [-1, 0]
    assert torch.allclose(rsa_master_direction(theta_m, models, 0.5), torch.tensor([-0.5, 0.0]))


def _cfg(**kw) -> Config:
    base = dict(dataset="digits", model="softmax", num_workers=3, num_byzantine=1,
                byz_schedule="fixed", agg="rsa", pre="none", momentum=0.0, attack="signflip",
                lr=0.1, rsa_delta=0.5, batch_size=4)
    base.update(kw)
    return Config.from_dict(base)


def test_server_step_with_weight_decay_by_hand():
    cfg = _cfg(weight_decay=0.2)
    problem = build_problem(cfg)
    server = Server(cfg, problem, torch.device("cpu"))
    assert isinstance(server.rule, RSAMaster)
    d = problem.dim
    server.params.fill_(0.5)
    models = torch.stack([torch.full((d,), 0.85), torch.full((d,), 0.55), torch.zeros(d)])
    update, info = server.aggregate(models, torch.tensor([True, True, False]), 0)
    assert torch.allclose(update, torch.full((d,), -0.5))          # 0.5 * (-1 - 1 + 1)
    assert info["mean_l1"] == pytest.approx((0.35 + 0.05 + 0.5) / 3)
    server.step(update, 0)
    # theta_M <- 0.5 - 0.1 (0.2 * 0.5 - 0.5) = 0.54
    assert torch.allclose(server.params, torch.full((d,), 0.54))


@pytest.mark.parametrize("path", ["linear", "vmap", "loop"])
def test_group_round_matches_autograd_and_reflects_byzantine(path):
    cfg = _cfg(grad_path=path)
    problem = build_problem(cfg)
    attack = make_attack("signflip", 3, 1, 10)
    group = make_worker_group(cfg, problem, range(3), torch.device("cpu"), attack=attack)
    assert isinstance(group.clients, RSAClients)
    torch.manual_seed(0)
    group.state["thetas"].copy_(problem.init_params + 0.1 * torch.randn(3, problem.dim))
    start = group.state["thetas"].clone()
    theta_m = problem.init_params + 0.1 * torch.randn(problem.dim)
    byz = torch.tensor([False, False, True])
    x, y = group.round_batches(0, byz)
    msgs = group.compute(theta_m, 0, byz)
    for j in range(3):
        problem.flat.load_into(problem.model, start[j])
        problem.model.zero_grad()
        F.cross_entropy(problem.model(x[j]), y[j]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in problem.model.parameters()])
        want = start[j] - 0.1 * (g / 3 + 0.5 * torch.sign(start[j] - theta_m))
        assert torch.allclose(group.state["thetas"][j], want, atol=1e-6)
    assert torch.allclose(msgs[:2], group.state["thetas"][:2])
    # signflip on models: the reflection of the client's model about theta_M
    assert torch.allclose(msgs[2], 2 * theta_m - group.state["thetas"][2], atol=1e-6)


def test_backdoor_upload_is_model_replacement():
    cfg = _cfg(attack="backdoor", byz_schedule="random")
    problem = build_problem(cfg)
    group = make_worker_group(cfg, problem, range(3), torch.device("cpu"),
                              attack=make_attack("backdoor", 3, 1, 10))
    theta_m = torch.full((problem.dim,), 0.01)
    msgs = group.compute(theta_m, 0, torch.tensor([True, False, False]))
    assert torch.allclose(msgs[0], theta_m + 4 * (group.state["thetas"][0] - theta_m), atol=1e-6)


def test_config_rejects_momentum_and_preaggregation():
    with pytest.raises(ConfigError, match="--momentum 0"):
        parse_args(["--agg", "rsa", "--momentum", "0.9"])
    with pytest.raises(ConfigError, match="--pre none"):
        parse_args(["--agg", "rsa", "--bucketing", "2"])
    assert protocol_of(parse_args(["--agg", "rsa"])[0]).name == "model"  # the defaults fit
    with pytest.raises(ConfigError, match="rsa-delta"):
        parse_args(["--agg", "rsa", "--momentum", "0", "--pre", "none", "--rsa-delta", "-1"])
    cfg, _ = parse_args(["--agg", "rsa", "--momentum", "0", "--pre", "none"])
    assert protocol_of(cfg).name == "model"


@pytest.mark.slow
def test_resume_restores_client_models(tmp_path):
    import main

    argv = ["--dataset", "digits", "--model", "softmax", "-n", "6", "-f", "2", "--agg", "rsa",
            "--pre", "none", "--momentum", "0", "--attack", "signflip", "--byz-schedule",
            "random", "--lr", "0.3", "--rsa-delta", "0.01", "--eval-every", "3", "--no-progress"]
    main.main(argv + ["--rounds", "6", "-o", str(tmp_path / "full")])
    main.main(argv + ["--rounds", "3", "-o", str(tmp_path / "half")])
    main.main(["--resume", str(tmp_path / "half"), "--rounds", "6", "--no-progress"])
    full = load_torch(str(tmp_path / "full" / "checkpoint.pt"))
    half = load_torch(str(tmp_path / "half" / "checkpoint.pt"))
    assert half["round"] == 6
    assert torch.equal(full["server"]["params"], half["server"]["params"])
    assert torch.equal(full["workers"]["thetas"], half["workers"]["thetas"])
    assert not torch.equal(full["workers"]["thetas"][0], full["server"]["params"])


@pytest.mark.mpi
@pytest.mark.slow
def test_mpi_run_matches_in_process(tmp_path):
    """Client models live on the worker ranks; the final checkpoint gathers them from the ranks,
    and the run ends where the in-process run ends."""
    import main
    from tests.processes import run_mpi

    flags = ["--dataset", "digits", "--model", "softmax", "-n", "5", "-f", "2", "--agg", "rsa",
             "--pre", "none", "--momentum", "0", "--attack", "signflip", "--byz-schedule",
             "random", "--lr", "0.3", "--rsa-delta", "0.01", "--eval-every", "2", "--rounds", "4",
             "--no-progress"]
    proc = run_mpi(3, *flags, "-o", str(tmp_path / "mpi"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    main.main(flags + ["-o", str(tmp_path / "inp")])
    a = load_torch(str(tmp_path / "mpi" / "checkpoint.pt"))
    b = load_torch(str(tmp_path / "inp" / "checkpoint.pt"))
    assert a["round"] == b["round"] == 4
    assert torch.allclose(a["server"]["params"], b["server"]["params"], atol=1e-5)
    assert torch.allclose(a["workers"]["thetas"], b["workers"]["thetas"], atol=1e-5)
