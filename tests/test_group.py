"""Worker groups: the linear, vmap and loop gradient paths agree, a worker's message does not
depend on which group hosts it, and both momentum conventions match a hand computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.attacks import make_attack
from common.compute.paths import FAST_PATH, choose_path
from common.errors import ConfigError
from common.run.config import Config
from common.run.problem import build_problem
from worker.group import WorkerGroup

CPU = torch.device("cpu")


def make_group(cfg: Config, problem, ids: range) -> WorkerGroup:
    attack = make_attack(cfg.attack, cfg.num_workers, cfg.num_byzantine,
                         problem.dataset.num_classes, **cfg.attack_params)
    return WorkerGroup(cfg, problem, ids, attack, CPU)


@pytest.mark.parametrize("model", ["mlp", "cnn", "softmax"])
def test_gradient_paths_give_the_same_gradients(model):
    base = dict(model=model, num_workers=6, num_byzantine=0, attack="none", agg="mean",
                pre="none", batch_size=16)
    problem = build_problem(Config(**base))
    # a point away from the initialisation, so no gradient is trivially small
    params = problem.init_params + 0.05 * torch.randn(problem.dim,
                                                     generator=torch.Generator().manual_seed(1))
    out = {}
    paths = ("linear", "vmap", "loop") if model != "cnn" else ("vmap", "loop")
    for path in paths:
        g = make_group(Config(**base, grad_path=path), problem, range(6))
        assert g.path == path
        x, y = g.batches(0)
        out[path] = (g.gradients(params, x, y), g.losses.clone())
    gl, ll = out["loop"]
    assert gl.shape == (6, problem.dim)
    for path in paths[:-1]:
        torch.testing.assert_close(out[path][0], gl, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out[path][1], ll, atol=1e-5, rtol=1e-5)
    # and the loop equals a plain autograd gradient of worker 2's batch
    model_ = problem.model
    problem.flat.load_into(model_, params)
    model_.zero_grad(set_to_none=True)
    F.cross_entropy(model_(x[2]), y[2]).backward()
    ref = torch.cat([p.grad.reshape(-1) for p in model_.parameters()])
    torch.testing.assert_close(gl[2], ref, atol=1e-5, rtol=1e-4)


def test_auto_path_follows_fast_path_table():
    for model, path in FAST_PATH.items():
        cfg = Config(model=model)
        assert choose_path(cfg, build_problem(cfg).model) == path
    cnn = Config(model="cnn", grad_path="vmap")
    assert choose_path(cnn, build_problem(cnn).model) == "vmap"
    # auto never picks the linear path for a module that is not made of Linear layers
    assert choose_path(Config(model="mlp"), torch.nn.Conv2d(1, 2, 3)) == "vmap"


def test_linear_path_refuses_a_model_with_other_layers():
    cfg = Config(model="cnn", num_workers=2, num_byzantine=0, attack="none", grad_path="linear")
    with pytest.raises(ConfigError, match="Linear layers.*auto, vmap or loop"):
        make_group(cfg, build_problem(cfg), range(2))


@pytest.mark.parametrize("path", ["linear", "vmap", "loop"])
@pytest.mark.parametrize("agg,attack", [("cm", "bitflip"), ("nmedian", "gaussian"),
                                        ("cm", "labelflip")])
def test_message_does_not_depend_on_grouping(path, agg, attack):
    cfg = Config(model="mlp", num_workers=8, num_byzantine=3, agg=agg, attack=attack,
                 pre="none", partition="noniid", grad_path=path, batch_size=8)
    problem = build_problem(cfg)
    byz = torch.zeros(8, dtype=torch.bool)
    byz[5:] = True
    whole = make_group(cfg, problem, range(8))
    parts = [make_group(cfg, problem, range(0, 3)), make_group(cfg, problem, range(3, 8))]
    params = problem.init_params.clone()
    for t in range(2):  # two rounds: momenta carry over
        a = whole.compute(params, t, byz)
        b = torch.cat([parts[0].compute(params, t, byz[0:3]), parts[1].compute(params, t, byz[3:8])])
        # vmap batches differently sized groups; allow float reassociation, nothing more
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        params = params - 0.1 * a.mean(0)
    if attack == "gaussian":
        # rows 5..7 are N(0, 200^2) draws keyed by worker, not group
        assert float(a[5:].std()) > 100
    if agg == "nmedian":
        # honest rows carry worker-keyed upload noise: without it they are the momenta
        assert not torch.allclose(a[:5], whole.momenta[:5])
        assert float((a[:5] - whole.momenta[:5]).std()) == pytest.approx(cfg.rule_values["std"], rel=0.05)


@pytest.mark.parametrize("style", ["heavyball", "ema"])
def test_momentum_conventions_by_hand(style):
    beta = 0.9
    cfg = Config(model="softmax", num_workers=3, num_byzantine=0, attack="none", agg="mean",
                 pre="none", momentum=beta, momentum_style=style, batch_size=8)
    problem = build_problem(cfg)
    group = make_group(cfg, problem, range(3))
    no_byz = torch.zeros(3, dtype=torch.bool)
    p0 = problem.init_params.clone()
    p1 = p0 - 0.5 * torch.ones_like(p0) * 0.01
    g0 = group.gradients(p0, *group.batches(0))
    g1 = group.gradients(p1, *group.batches(1))
    m0 = group.compute(p0, 0, no_byz).clone()  # the messages are the live momentum buffer
    m1 = group.compute(p1, 1, no_byz)
    if style == "heavyball":      # m <- beta m + g
        want0, want1 = g0, beta * g0 + g1
    else:                         # m <- beta m + (1 - beta) g
        want0, want1 = (1 - beta) * g0, beta * (1 - beta) * g0 + (1 - beta) * g1
    torch.testing.assert_close(m0, want0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(m1, want1, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(g0, g1)
    assert m1.data_ptr() == group.momenta.data_ptr()  # no (k, d) copy per round


@pytest.mark.parametrize("style", ["heavyball", "ema"])
def test_byzantine_raw_gradients_send_the_attacked_gradient_not_the_momentum(style):
    """--byz-raw-gradients (the bucketing paper's code: its bit-flip and label-flip workers keep
    no momentum): round 2's Byzantine message is minus that round's own gradient; the honest
    rows keep their momenta."""
    from common.run.config import validate

    cfg = Config(model="softmax", num_workers=3, num_byzantine=1, attack="bitflip", agg="mean",
                 momentum=0.9, momentum_style=style, batch_size=8, byz_raw_gradients=True)
    validate(cfg)
    problem = build_problem(cfg)
    group = make_group(cfg, problem, range(3))
    byz = torch.tensor([False, False, True])
    p0 = problem.init_params.clone()
    p1 = p0 - 0.01
    g1 = group.gradients(p1, *group.round_batches(1, byz))
    group.compute(p0, 0, byz)
    m1 = group.compute(p1, 1, byz).clone()
    torch.testing.assert_close(m1[2], -g1[2], atol=1e-6, rtol=1e-5)
    # without the flag the Byzantine worker flips its momentum, which differs from g
    plain = make_group(Config(**{**cfg.to_dict(), "byz_raw_gradients": False}), problem, range(3))
    plain.compute(p0, 0, byz)
    assert not torch.allclose(plain.compute(p1, 1, byz)[2], -g1[2], atol=1e-4)
    torch.testing.assert_close(plain.momenta[:2], group.momenta[:2])
    with pytest.raises(ConfigError, match="fixed Byzantine set"):
        validate(Config(attack="bitflip", num_byzantine=1, byz_schedule="random",
                        byz_raw_gradients=True))


def test_byzantine_momenta_are_lent_to_the_attack_and_restored():
    """Messages are the momentum buffer; an attack overwrites the Byzantine rows in place, and
    the next round (or a checkpoint) puts the worker's own momentum back, so the Byzantine
    worker's momentum follows its own gradients exactly as an honest worker's would."""
    cfg = Config(model="softmax", num_workers=3, num_byzantine=1, attack="signflip", agg="mean",
                 pre="none", momentum=0.9, batch_size=8)
    problem = build_problem(cfg)
    attacked, clean = make_group(cfg, problem, range(3)), make_group(cfg, problem, range(3))
    byz = torch.tensor([False, False, True])
    p = problem.init_params.clone()
    for t in range(3):
        m = attacked.compute(p, t, byz)
        ref = clean.compute(p, t, torch.zeros(3, dtype=torch.bool))
        torch.testing.assert_close(m[2], -ref[2])          # sign flip of its own momentum
        torch.testing.assert_close(m[:2], ref[:2])
        m[2] = 123.0                                        # the server may scribble on rows too
    torch.testing.assert_close(attacked.state_dict()["momenta"], clean.momenta)


def test_linear_layers_names_every_parameter_of_a_linear_model_only():
    from common.compute.linear_grads import linear_layers
    for model, expect in (("mlp", True), ("softmax", True), ("cnn", False)):
        problem = build_problem(Config(model=model))
        layers = linear_layers(problem.model)
        assert (layers is not None) == expect
        if expect:
            assert list(layers) == problem.flat.names
            assert {kind for _, kind in layers.values()} == {"weight", "bias"}


@pytest.mark.parametrize("attack,schedule,skipped", [
    ("ipm", "fixed", True),        # never reads its own message, never honest: not computed
    ("ipm", "markov", False),      # may turn honest later: its momentum must be kept up to date
    ("signflip", "fixed", False),  # reads its own momentum
])
def test_byzantine_gradients_are_skipped_only_when_nothing_reads_them(attack, schedule, skipped):
    """Under a fixed schedule an attack that ignores ``own`` (IPM, ALIE, mimic, ...) leaves the
    Byzantine workers' gradients uncomputed; the honest rows, and hence the messages the server
    sees, are the same as when every worker computes."""
    base = dict(model="softmax", num_workers=5, num_byzantine=2, attack=attack, agg="mean",
                pre="none", momentum=0.9, batch_size=8, byz_schedule=schedule)
    problem = build_problem(Config(**base))
    group, full = make_group(Config(**base), problem, range(5)), make_group(Config(**base),
                                                                           problem, range(5))
    full.attack.reads_own = True  # the reference computes every row
    byz = torch.tensor([False, False, False, True, True])
    honest = torch.zeros(5, dtype=torch.bool)
    p = problem.init_params.clone()
    for t in range(2):
        m = group.compute(p, t, byz).clone()
        ref = full.compute(p, t, byz).clone()
        torch.testing.assert_close(m[:3], ref[:3], rtol=1e-5, atol=1e-6)
        assert group.losses[3:].isnan().all() == skipped
        torch.testing.assert_close(group.losses[:3], full.losses[:3], rtol=1e-5, atol=1e-6)
    momenta = group.state_dict()["momenta"]
    assert bool((momenta[3:] == 0).all()) == skipped
    torch.testing.assert_close(momenta[:3], full.state_dict()["momenta"][:3], rtol=1e-5, atol=1e-6)
    # the honest-only reference: with nobody Byzantine the first rows are the same again
    clean = make_group(Config(**base), problem, range(5))
    for t in range(2):
        clean.compute(p, t, honest)
    torch.testing.assert_close(clean.momenta[:3], momenta[:3], rtol=1e-5, atol=1e-6)
