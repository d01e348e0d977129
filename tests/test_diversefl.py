"""DiverseFL: the filter on hand-built vectors, precision/recall, shared samples, guiding
gradients (vmap = loop = plain autograd), backdoor batches and backdoor accuracy, end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.data.datasets import Dataset
from common.data.flat import FlatParams
from common.errors import ConfigError
from common.protocols.diversefl import (
    DiverseFLFilter,
    GuidingGradients,
    client_samples,
    expected_counts,
    filter_decisions,
    precision_recall,
    share_indices,
    share_size,
)
from common.run.config import Config
from common.run.flags import parse_args
from common.run.problem import Problem, build_problem
from common.wire.samples import check_sample, pack_samples, unpack_samples
from master.evaluate import evaluate

# -- the filter --------------------------------------------------------------------------------

def test_filter_rejects_flipped_and_scaled_and_passes_honest():
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    z = torch.tensor([[1.2, 0.5],    # honest: C1 = 1.2, C2 = 1.3
                      [-1.2, -0.5],  # flipped: C1 = -1.2
                      [12.0, 5.0],   # honest x10: C2 = 13
                      [0.0, 0.5],    # right direction but too short: C2 = 0.25
                      [-4.0, 3.0]])  # orthogonal: C1 = 0, C2 = 1
    accept, c1, c2 = filter_decisions(g, z, 0.5, 2.0)
    assert accept.tolist() == [True, False, False, False, False]
    assert c1.tolist() == pytest.approx([1.2, -1.2, 12.0, 1.0, 0.0])
    assert c2.tolist() == pytest.approx([1.3, 1.3, 13.0, 0.25, 1.0])


def test_filter_bounds_are_strict_and_zero_guide_rejects():
    g = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    z = torch.tensor([[0.5, 0.0], [2.0, 0.0], [1.999, 0.0], [1.0, 0.0]])
    accept, _, c2 = filter_decisions(g, z, 0.5, 2.0)
    assert accept.tolist() == [False, False, True, False]
    assert math.isinf(c2[3])


def test_filter_huge_finite_message_does_not_overflow():
    g = torch.tensor([[1.0, 1.0]])
    z = torch.tensor([[1e30, 1e30]])
    accept, c1, c2 = filter_decisions(g, z, 0.5, 2.0)
    assert not accept[0] and c1[0] == pytest.approx(2e30) and c2[0] == pytest.approx(1e30)


def test_precision_recall_hand_example():
    flagged = torch.tensor([True, True, False, True, False])
    byz = torch.tensor([True, False, False, True, True])
    assert precision_recall(flagged, byz) == {"tp": 2, "fp": 1, "fn": 1,
                                              "precision": pytest.approx(2 / 3),
                                              "recall": pytest.approx(2 / 3)}
    none = precision_recall(torch.zeros(3, dtype=torch.bool), torch.tensor([False, True, False]))
    assert none == {"tp": 0, "fp": 0, "fn": 1, "precision": None, "recall": 0.0}
    clean = precision_recall(torch.tensor([True, False]), torch.zeros(2, dtype=torch.bool))
    assert clean["precision"] == 0.0 and clean["recall"] is None


# -- shared samples ----------------------------------------------------------------------------

def _digits_cfg(**kw) -> Config:
    base = dict(dataset="digits", model="softmax", num_workers=4, num_byzantine=1,
                byz_schedule="random", agg="diversefl", pre="none", momentum=0.0,
                share_frac=0.05, attack="signflip")
    base.update(kw)
    return Config.from_dict(base)


def test_share_size_and_indices():
    assert share_size(3000, 0.01) == 30      # the paper's s = 30 for 1% of 3000
    assert share_size(10, 0.01) == 1         # at least one sample
    assert share_size(7, 1.0) == 7
    cfg = _digits_cfg()
    shard = torch.arange(100, 200)
    a, b = share_indices(cfg, shard, 0), share_indices(cfg, shard, 0)
    assert torch.equal(a, b) and len(a) == 5 and len(set(a.tolist())) == 5
    assert set(a.tolist()) <= set(shard.tolist())
    assert not torch.equal(a, share_indices(cfg, shard, 1))


def test_client_samples_are_own_data_and_pass_checks():
    cfg = _digits_cfg()
    problem = build_problem(cfg)
    samples = client_samples(cfg, problem, range(cfg.num_workers))
    counts = expected_counts(cfg, problem)
    ds = problem.dataset
    for j, ((x, y), c) in enumerate(zip(samples, counts)):
        assert check_sample(x, y, c, ds.input_shape, ds.num_classes) is None
        own = set(ds.y_train[problem.shards[j]].tolist())
        assert set(y.tolist()) <= own


def test_check_sample_reports_bad_buffers():
    x, y = torch.zeros(3, 4), torch.tensor([0, 1, 2])
    assert check_sample(x, y, 3, (4,), 10) is None
    assert "shapes" in check_sample(x, y, 2, (4,), 10)
    assert "dtypes" in check_sample(x.double(), y, 3, (4,), 10)
    assert "dtypes" in check_sample(x, y.int(), 3, (4,), 10)
    assert "labels" in check_sample(x, torch.tensor([0, 1, 10]), 3, (4,), 10)
    bad = x.clone()
    bad[0, 0] = float("nan")
    assert "non-finite" in check_sample(bad, y, 3, (4,), 10)


def test_pack_unpack_round_trip_and_bad_client():
    cfg = _digits_cfg()
    problem = build_problem(cfg)
    samples = client_samples(cfg, problem, range(1, 4))
    counts = expected_counts(cfg, problem)[1:4]
    x, y = pack_samples(samples)
    assert x.dtype.name == "float32" and y.dtype.name == "int64" and len(y) == sum(counts)
    x[counts[0], 0] = float("inf")                  # corrupt the second client's first input
    got = unpack_samples(x, y, counts, problem.dataset.input_shape, 10)
    assert got[1] == (None, "non-finite inputs")
    for (sample, why), want in zip([got[0], got[2]], [samples[0], samples[2]]):
        assert why is None and torch.equal(sample[0], want[0]) and torch.equal(sample[1], want[1])


# -- guiding gradients -------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["softmax", "mlp"])
def test_guiding_gradients_vmap_equals_loop_equals_autograd(model):
    cfg = _digits_cfg(model=model)
    problem = build_problem(cfg)
    torch.manual_seed(1)
    params = problem.init_params + 0.05 * torch.randn(problem.dim)
    samples = client_samples(cfg, problem, range(cfg.num_workers))
    samples[2] = (samples[2][0][:3], samples[2][1][:3])  # unequal sizes exercise the padding
    samples[3] = None                                    # a client whose sample never arrived
    dev = torch.device("cpu")
    gv = GuidingGradients(problem, samples, "vmap", dev)(params)
    gl = GuidingGradients(problem, samples, "loop", dev)(params)
    for j in range(3):
        problem.flat.load_into(problem.model, params)
        problem.model.zero_grad()
        F.cross_entropy(problem.model(samples[j][0]), samples[j][1]).backward()
        want = torch.cat([p.grad.reshape(-1) for p in problem.model.parameters()])
        assert torch.allclose(gv[j], want, atol=1e-6) and torch.allclose(gl[j], want, atol=1e-6)
    assert not gv[3].any() and not gl[3].any()


def test_rule_averages_accepted_and_reports_flags():
    cfg = _digits_cfg()
    problem = build_problem(cfg)
    params = problem.init_params.clone()
    rule = DiverseFLFilter(cfg, problem, torch.device("cpu"), params)
    samples = client_samples(cfg, problem, range(4))
    rule.set_samples(samples)
    g = rule.guides(params)
    msgs = torch.stack([g[0] * 1.1, -g[1], g[2] * 10, g[3] * 0.9])
    honest = torch.tensor([True, False, True, True])
    out = rule(msgs, honest=honest)
    assert torch.allclose(out, (g[0] * 1.1 + g[3] * 0.9) / 2)
    info = rule.info
    assert info["flagged"] == [1, 2] and info["accepted"] == 2
    assert (info["tp"], info["fp"], info["fn"]) == (1, 1, 0)
    assert info["precision"] == 0.5 and info["recall"] == 1.0
    assert info["c2"][0] == pytest.approx(1.1, rel=1e-3) and info["c1"][1] < 0
    assert rule(-g, honest=honest).abs().sum() == 0  # nothing accepted: zero update


def test_rule_needs_samples_and_config_checks():
    cfg = _digits_cfg()
    problem = build_problem(cfg)
    rule = DiverseFLFilter(cfg, problem, torch.device("cpu"), problem.init_params.clone())
    with pytest.raises(RuntimeError, match="set_samples"):
        rule(torch.zeros(4, problem.dim))
    for argv, msg in ((["--agg", "diversefl", "--bucketing", "2"], "--pre none"),
                      (["--agg", "diversefl", "--momentum", "0.9"], "--momentum 0"),
                      (["--agg", "diversefl", "--pre", "none", "--momentum", "0", "--eps1", "2"],
                       "eps1"),
                      (["--agg", "diversefl", "--pre", "none", "--momentum", "0",
                        "--share-frac", "0"], "share-frac")):
        with pytest.raises(ConfigError, match=msg):
            parse_args(argv)
    with pytest.raises(ConfigError, match="diversefl"):
        parse_args(["--agg", "diversfl"])


# -- backdoor ----------------------------------------------------------------------------------

def test_backdoor_accuracy_on_hand_built_model():
    # Identity linear model: the prediction is the index of the hot input coordinate.
    model = nn.Sequential(nn.Linear(10, 10))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(10))
        model[0].bias.zero_()
    hot = torch.tensor([9, 9, 4, 2, 9, 1])
    y = torch.tensor([4, 4, 4, 4, 9, 1])
    x = F.one_hot(hot, 10).float()
    ds = Dataset("hand", x, y, x, y, num_classes=10, input_shape=(10,))
    flat = FlatParams(model)
    problem = Problem(ds, model, flat, flat.flatten(model), [torch.arange(6)])
    res = evaluate(problem, flat.flatten(model), torch.device("cpu"), batch_size=4,
                   metric=("backdoor_accuracy", 4, 9))
    assert res["backdoor_accuracy"] == pytest.approx(50.0)   # 2 of the 4 test 4s called 9
    assert res["test_accuracy"] == pytest.approx(50.0)       # samples 2, 4, 5
    assert "backdoor_accuracy" not in evaluate(problem, flat.flatten(model), torch.device("cpu"))


def test_backdoor_batches_are_half_fours_relabelled_nine():
    from common.attacks import make_attack
    from worker.group import WorkerGroup

    cfg = _digits_cfg(num_workers=10, num_byzantine=3, attack="backdoor", batch_size=8)
    problem = build_problem(cfg)
    attack = make_attack("backdoor", 10, 3, 10)
    group = WorkerGroup(cfg, problem, range(10), attack, torch.device("cpu"))
    byz = torch.zeros(10, dtype=torch.bool)
    byz[[0, 4, 9]] = True
    x0, y0 = group.batches(3)
    x, y = group.round_batches(3, byz)
    ytr = problem.dataset.y_train
    for j in (0, 4, 9):
        assert (y[j, :4] == 9).all()              # ceil(8/2) = 4 source samples, relabelled
        own4 = ytr[problem.shards[j]] == 4
        for xi in x[j, :4]:                        # ... drawn from real class-4 training images
            hit = (problem.dataset.x_train == xi).flatten(1).all(1)
            assert (ytr[hit] == 4).any()
            if own4.any():                         # from the client's own 4s when it has some
                assert hit[problem.shards[j]].any()
        assert torch.equal(x[j, 4:], x0[j, 4:])    # the rest is its usual draw, 4s -> 9
        assert torch.equal(y[j, 4:], torch.where(y0[j, 4:] == 4, 9, y0[j, 4:]))
    honest = ~byz
    assert torch.equal(x[honest], x0[honest]) and torch.equal(y[honest], y0[honest])


# -- end to end --------------------------------------------------------------------------------

@pytest.mark.slow
def test_diversefl_beats_mean_under_signflip_majority(tmp_path):
    """6 of 10 clients flip their sign every round (a Byzantine majority): the mean moves
    backwards, DiverseFL's per-client test keeps training on the honest 4."""
    import main

    common = ["--dataset", "digits", "--model", "softmax", "-n", "10", "-f", "6",
              "--byz-schedule", "random", "--attack", "signflip", "--pre", "none", "--noniid",
              "--momentum", "0", "--rounds", "40", "--lr", "0.1", "--eval-every", "40",
              "--share-frac", "0.05", "--no-progress"]
    dfl = main.main(common + ["--agg", "diversefl", "-o", str(tmp_path / "dfl")])
    mean = main.main(common + ["--agg", "mean", "-o", str(tmp_path / "mean")])
    assert dfl["final_test_accuracy"] > 80.0
    assert dfl["final_test_accuracy"] > mean["final_test_accuracy"] + 40.0
    recs = [json.loads(line) for line in open(tmp_path / "dfl" / "metrics.jsonl")]
    assert len(recs) == 40
    r0 = recs[0]["rule"]
    assert len(r0["c1"]) == len(r0["c2"]) == 10
    assert sum(r["rule"]["tp"] for r in recs) == 40 * 6    # every flipped message rejected


@pytest.mark.mpi
@pytest.mark.slow
def test_mpi_samples_are_sent_by_worker_ranks_and_match_in_process(tmp_path):
    """Under MPI the samples travel from the worker ranks; the run equals the in-process one."""
    import main
    from common.run.io import read_metrics
    from tests.processes import final_params, run_mpi

    flags = ["--dataset", "digits", "--model", "softmax", "-n", "5", "-f", "2", "--byz-schedule",
             "random", "--attack", "signflip", "--agg", "diversefl", "--pre", "none",
             "--momentum", "0", "--rounds", "4", "--eval-every", "2", "--share-frac", "0.05",
             "--no-progress"]
    proc = run_mpi(3, *flags, "-o", str(tmp_path / "mpi"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    main.main(flags + ["-o", str(tmp_path / "inp")])
    a = read_metrics(tmp_path / "mpi" / "metrics.jsonl")
    b = read_metrics(tmp_path / "inp" / "metrics.jsonl")
    assert [r["rule"]["flagged"] for r in a] == [r["rule"]["flagged"] for r in b]
    assert all("no_sample" not in r["rule"] for r in a)
    pa, pb = final_params(tmp_path / "mpi"), final_params(tmp_path / "inp")
    assert torch.allclose(pa, pb, atol=1e-5)
