"""The adaptive attacks (opt-alie, opt-ipm, minmax, minsum, fang) and inf: the line search and the
constraints by hand, the search finding the known optimum, minmax's constraint holding with
equality at the gamma found (hypothesis), Fang's values beyond the honest extremes, inf dropped
by the message policy, and each end to end in main.py and under mpiexec."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import main as main_mod
from common.attacks import AttackInput, Defense, make_attack
from common.attacks.fang import fang_bounds
from common.attacks.minmax import PERTURBATIONS, minmax_vector, minsum_vector, perturbation
from common.attacks.omniscient import alie_vector
from common.attacks.optimal import defense_distance, line_search, unsupported
from common.errors import ConfigError
from common.run.config import Config, validate

SETTINGS = settings(max_examples=30, deadline=None)
TWO = torch.tensor([[0.0, 0.0], [2.0, 0.0]])


def craft(name, honest, rows=2, seed=0, defense=None, **params):
    """The attack's ``rows`` Byzantine messages for the honest stack (n = h + rows)."""
    a = make_attack(name, honest.shape[0] + rows, rows, 10, **params)
    if defense is not None:
        a.bind(defense)
    own = torch.zeros(rows, honest.shape[1])
    out = a.craft(AttackInput(own, honest, honest.shape[0] + rows, 0,
                              torch.Generator().manual_seed(seed)))
    return out, a.info


# -- opt-alie / opt-ipm ------------------------------------------------------------------------

def test_line_search_by_hand():
    # score -(x-3)^2 from 0, step 1: 0, 1, 3 improve (step doubles: 1, 2, 4), 7 does not (step
    # 4 * 0.8); then 3 + 3.2 and 3 + 2.56 do not either: the optimum 3 after 6 evaluations
    calls = []

    def score(x):
        calls.append(x)
        return -(x - 3.0) ** 2

    assert line_search(score, evals=6, start=0.0, delta=1.0, ratio=0.8) == (3.0, 0.0)
    assert calls == pytest.approx([0.0, 1.0, 3.0, 7.0, 6.2, 5.56])


def test_opt_alie_against_the_mean_takes_the_largest_factor_it_reaches():
    # the mean moves by (b/n) s ||sigma||: every step helps, so 5 evaluations reach 0+1+2+4+8
    x = torch.randn(6, 40, generator=torch.Generator().manual_seed(0))
    defense = Defense("none", "mean", 2)
    out, info = craft("opt-alie", x, 2, defense=defense, evals=5, delta=1.0)
    assert info["factor"] == 15.0
    sigma = x.double().std(0)
    assert info["distance"] == pytest.approx(2 / 8 * 15 * float(sigma.norm()), rel=1e-5)
    torch.testing.assert_close(out[0], alie_vector(x, 15.0))


@pytest.mark.parametrize("name,pre,agg", [("opt-alie", "none", "cm"),
                                          ("opt-ipm", "bucketing:2", "trmean"),
                                          ("opt-alie", "nnm", "krum")])
def test_opt_attacks_reach_the_best_distance_of_a_fine_grid(name, pre, agg):
    x = torch.randn(9, 30, generator=torch.Generator().manual_seed(1)) + 0.3
    defense = Defense(pre, agg, 2)
    _, info = craft(name, x, 2, defense=defense, evals=40, delta=1.0)
    vector = alie_vector if name == "opt-alie" else (lambda h, s: -s * h.mean(0))
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(0)))
    grid = max(defense_distance(defense, x, vector(x, s / 4), 2, seed) for s in range(0, 161))
    assert info["distance"] >= grid * (1 - 1e-6) - 1e-9, (info, grid)


def test_opt_attacks_refuse_what_a_worker_cannot_evaluate():
    for agg in ("clippedclustering", "fltrust"):
        cfg = Config(agg=agg, attack="opt-alie", pre="none", momentum=0.0, num_workers=10,
                     num_byzantine=2)
        with pytest.raises(ConfigError, match="opt-alie evaluates the server's rule"):
            validate(cfg)
    # the reason the worst-case grids give for the cells they leave out
    assert unsupported("clippedclustering") == "clippedclustering keeps a growing state across rounds"
    assert unsupported("cclip") is None  # its center: the attack keeps a replica
    assert unsupported("fltrust") == "fltrust needs the fltrust protocol's server"
    assert unsupported("cm") is None and unsupported("krum") is None
    with pytest.raises(ValueError, match="needs the defense"):
        craft("opt-ipm", torch.ones(3, 2), 1)


def test_replica_of_a_stateful_rule_follows_the_server(tmp_path):
    # opt-alie against CClip evaluates candidates from its replica of the center; with the
    # Byzantine rows last (the server's order) the replica is the server's center, every round
    flags = [*FLAGS, "--agg", "cclip", "--attack", "opt-alie", "--pre", "none",
             "--checkpoint-every", "1"]
    for rounds in (1, 3):
        main_mod.main([*flags, "--rounds", str(rounds), "-o", str(tmp_path / str(rounds))])
        ck = torch.load(tmp_path / str(rounds) / "checkpoint.pt", weights_only=True)
        server, replica = ck["server"]["rule"]["center"], ck["workers"]["attack"]["center"]
        torch.testing.assert_close(replica, server, atol=1e-6, rtol=0)
    with open(tmp_path / "3" / "metrics.jsonl") as fh:
        factors = [json.loads(line)["attack"]["factor"] for line in fh if '"round"' in line]
    assert len(factors) == 3


# -- min-max / min-sum -------------------------------------------------------------------------

def test_minmax_and_minsum_by_hand():
    # honest (0,0), (2,0): mu = (1,0), sigma = (sqrt 2, 0). Largest pairwise distance 2, largest
    # summed squared distance 4. std: p = (-sqrt 2, 0); min-max's tightest row is (2,0):
    # ||(1 - sqrt2 g) - 2|| = 2 -> g = 1/sqrt 2, m = (0,0); min-sum: 2 (1 + 2 g^2) = 4 -> the same.
    for vector in (minmax_vector, minsum_vector):
        m, g = vector(TWO, "std")
        assert g == pytest.approx(1 / math.sqrt(2), rel=1e-6)
        torch.testing.assert_close(m, torch.zeros(2), atol=1e-6, rtol=0)
        m, g = vector(TWO, "unit")  # p = (-1, 0): g = 1, m = (0,0)
        assert g == pytest.approx(1.0, rel=1e-6)
        m, g = vector(TWO, "sign")
        assert g == pytest.approx(1.0, rel=1e-6)
    out, info = craft("minmax", TWO, rows=3)
    assert out.shape == (3, 2) and torch.equal(out[0], out[2])
    assert info["gamma"] == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    json.dumps(info)


def test_perturbations():
    h = torch.tensor([[1.0, -2.0, 0.0], [3.0, -4.0, 0.0]])
    torch.testing.assert_close(perturbation(h, "sign"), torch.tensor([-1.0, 1.0, 0.0]))
    torch.testing.assert_close(perturbation(h, "unit"), torch.tensor([-2.0, 3.0, 0.0]) / 13 ** 0.5)
    torch.testing.assert_close(perturbation(h, "std"), -torch.tensor([2 ** 0.5, 2 ** 0.5, 0.0]))
    assert not perturbation(torch.zeros(3, 4), "unit").any()  # mu = 0: no direction, gamma 0
    m, g = minmax_vector(torch.zeros(3, 4), "unit")
    assert g == 0.0 and not m.any()
    with pytest.raises(ConfigError, match="choose one of: sign, std, unit"):
        make_attack("minmax", 5, 1, 10, perturb="gauss")


def _sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).square().sum(-1)


@SETTINGS
@given(h=st.integers(2, 12), d=st.integers(1, 300), kind=st.sampled_from(PERTURBATIONS),
       shift=st.floats(-3, 3), seed=st.integers(0, 2**31))
def test_constraints_hold_with_equality_at_the_largest_gamma(h, d, kind, shift, seed):
    x = torch.randn(h, d, generator=torch.Generator().manual_seed(seed)) + shift
    pair = _sq(x[:, None], x[None])
    m, g = minmax_vector(x, kind)
    p = perturbation(x, kind)
    if g > 0:
        ratio = float(_sq(m, x).max() / pair.max())
        assert ratio == pytest.approx(1.0, abs=1e-4)
        beyond = x.mean(0) + 1.01 * g * p  # a larger gamma breaks the constraint
        assert float(_sq(beyond, x).max()) > float(pair.max())
    m, g = minsum_vector(x, kind)
    if g > 0:
        ratio = float(_sq(m, x).sum() / pair.sum(1).max())
        assert ratio == pytest.approx(1.0, abs=1e-4)


# -- Fang --------------------------------------------------------------------------------------

def test_fang_bounds_by_hand():
    h = torch.tensor([[1.0, -1.0, 2.0, -3.0], [3.0, -2.0, -1.0, -1.0]])
    # means 2, -1.5, 0.5, -2; ranges [1,3], [-2,-1], [-1,2], [-3,-1]; b = 2:
    # mu > 0 -> under w_min: [0.5, 1], [-2, -1]; mu <= 0 -> over w_max: [-1, -0.5] twice
    lo, hi = fang_bounds(h, 2.0)
    torch.testing.assert_close(lo, torch.tensor([0.5, -1.0, -2.0, -1.0]))
    torch.testing.assert_close(hi, torch.tensor([1.0, -0.5, -1.0, -0.5]))


@SETTINGS
@given(h=st.integers(1, 8), d=st.integers(1, 50), b=st.floats(1.01, 5), seed=st.integers(0, 2**31))
def test_fang_values_lie_beyond_the_honest_extreme_opposite_the_mean(h, d, b, seed):
    x = torch.randn(h, d, generator=torch.Generator().manual_seed(seed))
    out, _ = craft("fang", x, 3, seed, b=b)
    up = x.mean(0) > 0
    slack = 1e-6 * (1 + x.abs().max())
    assert bool((out[:, up] <= x.amin(0)[up] + slack).all())
    assert bool((out[:, ~up] >= x.amax(0)[~up] - slack).all())
    lo, hi = fang_bounds(x, b)
    assert bool(((out >= lo - slack) & (out <= hi + slack)).all())


# -- inf and end to end ------------------------------------------------------------------------

FLAGS = ["-n", "8", "-f", "2", "--pre", "none", "--partition", "iid", "--momentum", "0",
         "--no-progress"]


def test_inf_rows_are_dropped_and_training_goes_on(tmp_path):
    summary = main_mod.main([*FLAGS, "--agg", "cm", "--attack", "inf", "--rounds", "30",
                             "--eval-every", "30", "-o", str(tmp_path / "r")])
    assert summary["final_test_accuracy"] > 70, summary
    with open(tmp_path / "r" / "metrics.jsonl") as fh:
        rec = [json.loads(line) for line in fh if '"round"' in line][-1]
    assert rec["faults"] == {"6": "nonfinite", "7": "nonfinite"}, rec


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["minmax", "minsum"])
def test_runs_end_to_end_and_logs_gamma(attack, tmp_path):
    summary = main_mod.main([*FLAGS, "--agg", "cm", "--attack", attack, "--rounds", "20",
                             "--eval-every", "20", "-o", str(tmp_path / "r")])
    assert 10 < summary["final_test_accuracy"] <= 100
    with open(tmp_path / "r" / "metrics.jsonl") as fh:
        gammas = [json.loads(line)["attack"]["gamma"] for line in fh if '"round"' in line]
    assert len(gammas) == 20 and all(g > 0 for g in gammas), gammas


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")
@pytest.mark.parametrize("attack,pre,agg", [("minmax", "none", "trmean"),
                                            ("minsum", "none", "trmean"),
                                            ("fang", "none", "trmean"), ("inf", "none", "trmean"),
                                            ("opt-alie", "nnm", "trmean"),
                                            ("opt-ipm", "arc", "trmean"),
                                            ("opt-alie", "none", "cclip")])
def test_under_mpi_equals_main(attack, pre, agg, tmp_path):
    from tests.processes import final_params, run_mpi

    flags = [*FLAGS, "--agg", agg, "--attack", attack, "--rounds", "4", "--pre", pre]
    p = run_mpi(3, *flags, "-o", str(tmp_path / "mpi"))
    assert p.returncode == 0, p.stderr[-3000:]
    main_mod.main([*flags, "-o", str(tmp_path / "main")])
    torch.testing.assert_close(final_params(tmp_path / "mpi"), final_params(tmp_path / "main"),
                               atol=1e-5, rtol=0)
