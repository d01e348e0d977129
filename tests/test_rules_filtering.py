"""The filtering and clustering rules (dnc, signguard, clippedclustering, flame) and the FLTrust
protocol: values by hand, invariants (hypothesis), FLTrust's root set, and each one end to end in
main.py (under mpiexec: tests/test_rules_mpi.py)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import main as main_mod
from common.aggregation.rules import make_rule
from common.aggregation.rules.clippedclustering import clipped_clustering, larger_cosine_cluster
from common.aggregation.rules.dnc import _coordinates, dnc, dnc_kept
from common.aggregation.rules.flame import flame, flame_admitted
from common.aggregation.rules.signguard import sign_features, signguard, signguard_kept
from common.data.datasets import load_dataset
from common.errors import ConfigError
from common.protocols.fltrust import fltrust, root_indices, trust_weights
from common.run.config import Config, validate
from common.run.problem import worker_shards
from tests.rule_helpers import SETTINGS, T, close, randn

# -- DnC ---------------------------------------------------------------------------------------


def test_dnc_by_hand():
    x = T([[0.0], [1.0], [2.0], [10.0]])
    # mean 3.25; centred -3.25, -2.25, -1.25, 6.75; v = +-1; scores are the squares
    assert dnc_kept(x, 1).tolist() == [0, 1, 2] and close(dnc(x, 1), [1.0])
    # c = 2: floor(2 f) = 2 rows go: 6.75^2 and 3.25^2 are the largest
    assert dnc_kept(x, 1, c=2.0).tolist() == [1, 2] and close(dnc(x, 1, c=2.0), [1.5])
    assert close(dnc(x, 0), x.mean(0))
    with pytest.raises(ConfigError, match=r"dnc needs n > floor\(c f\)"):
        make_rule("dnc", 4, 2, c=2.0)


def test_dnc_top_direction_is_the_outliers():
    # 2-d: the outliers sit along (1, 1); the honest rows spread less, along (1, -1)
    x = T([[0.1, -0.1], [-0.1, 0.1], [0.2, -0.2], [-0.2, 0.2], [0.0, 0.0], [5.0, 5.0]])
    assert dnc_kept(x, 1).tolist() == [0, 1, 2, 3, 4]


@SETTINGS
@given(d=st.integers(1, 5000), b=st.integers(1, 6000), seed=st.integers(0, 2**31))
def test_dnc_coordinates_are_distinct_and_in_range(d, b, seed):
    r = _coordinates(d, b, torch.Generator().manual_seed(seed))
    assert r.numel() == min(b, d) and torch.unique(r).numel() == r.numel()
    assert int(r.min()) >= 0 and int(r.max()) < d


def test_dnc_subsampling_is_seeded():
    x = randn(12, 30000, 0, torch.float32)
    x[-3:] += 0.05
    a = dnc(x, 3, sub_dim=500, generator=torch.Generator().manual_seed(1))
    b = dnc(x, 3, sub_dim=500, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert dnc_kept(x, 3, sub_dim=500).numel() >= 12 - 3 * 5


# -- SignGuard ---------------------------------------------------------------------------------


def test_signguard_by_hand():
    ones = torch.ones(10, dtype=torch.float64)
    x = torch.stack([0.1 * ones, 0.2 * ones, 0.3 * ones, 100 * ones, -0.2 * ones])
    # norms sqrt(10) x (0.1, 0.2, 0.3, 100, 0.2): median M = 0.2 sqrt(10); the band (0.1 M, 3 M)
    # leaves out row 3; the sign statistics put row 4 (all negative) alone
    kept, _, med = signguard_kept(x, frac=1.0)
    assert kept.tolist() == [0, 1, 2] and med == pytest.approx(0.2 * math.sqrt(10))
    # row 2 is clipped to M: (0.1 + 0.2 + 0.2) / 3
    assert close(signguard(x, frac=1.0), (0.5 / 3) * ones)
    feats = sign_features(x, 1.0, torch.Generator())
    assert close(feats, [[1, 0, 0]] * 4 + [[0, 0, 1]])
    with pytest.raises(ConfigError, match="signguard-lower < --signguard-upper"):
        make_rule("signguard", 5, 1, lower=2.0, upper=1.0)


def test_signguard_keeps_everything_when_all_alike():
    x = torch.ones(6, 8, dtype=torch.float64)
    assert signguard_kept(x)[0].tolist() == list(range(6))


# -- Clipped Clustering ------------------------------------------------------------------------


def test_clipped_clustering_by_hand_and_its_history():
    x = T([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [-1.0, 0.0], [-3.0, 0.0]])
    assert larger_cosine_cluster(x).tolist() == [0, 1, 2]
    rule = make_rule("clippedclustering", 5, 1)
    # round 1: norms 1, 2, 4, 1, 3; tau = 2: (1 + 2 + 2) / 3
    assert close(rule(x.float()), [5 / 3, 0.0], tol=1e-6)
    assert rule.info["tau"] == 2.0 and rule.info["selected"] == [0, 1, 2]
    state = rule.state_dict()
    # round 2: norms x 10; the history's median is (4 + 10) / 2 = 7: every kept row clipped to 7
    assert close(rule(10 * x.float()), [7.0, 0.0], tol=1e-6)
    resumed = make_rule("clippedclustering", 5, 1)
    resumed.load_state_dict(state)
    assert close(resumed(10 * x.float()), [7.0, 0.0], tol=1e-6)
    assert close(clipped_clustering(x, 1.5), [(1 + 1.5 + 1.5) / 3, 0.0])


def test_clipped_clustering_tie_takes_row_zeros_cluster():
    x = T([[-1.0, 0.0], [-2.0, 0.0], [3.0, 0.0], [5.0, 0.0]])
    assert larger_cosine_cluster(x).tolist() == [0, 1]


# -- FLAME -------------------------------------------------------------------------------------


def test_flame_by_hand():
    x = T([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [4.0, 0.0], [1.0, 0.0], [-5.0, 1.0],
           [-6.0, -1.0]])
    # rows 0-4 share a direction (cosine distance 0): HDBSCAN's one cluster of at least 4; the
    # median of all 7 norms is 2: rows 3 (norm 4) clipped to 2, the mean of 1, 2, 0.5, 2, 1
    assert flame_admitted(x).tolist() == [0, 1, 2, 3, 4]
    assert close(flame(x, lam=0.0), [6.5 / 5, 0.0])
    rule = make_rule("flame", 7, 2, lam=0.0)
    rule(x.float())
    assert rule.info == {"selected": [0, 1, 2, 3, 4], "bound": 2.0}


def test_flame_noise_has_lambda_times_median_norm_std():
    d = 200_000
    v = torch.ones(d) / math.sqrt(d)                  # norm 1
    x = torch.stack([v, 2 * v, 3 * v, 0.5 * v, v])     # median norm 1
    out = flame(x, lam=0.01, generator=torch.Generator().manual_seed(0))
    noise = out - v * (1 + 1 + 1 + 0.5 + 1) / 5
    assert float(noise.std()) == pytest.approx(0.01, rel=0.02)
    again = flame(x, lam=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_flame_admits_all_of_two_rows_and_of_a_structureless_stack():
    assert flame_admitted(T([[1.0, 0.0], [0.0, 1.0]])).tolist() == [0, 1]
    # three pairs 120 degrees apart merge all at once: HDBSCAN's single cluster is the root;
    # clipped to the median norm 1.5 every direction weighs 1 + 1.5, and they cancel
    c, s = -0.5, math.sqrt(3) / 2
    x = T([[1.0, 0.0], [2.0, 0.0], [c, s], [2 * c, 2 * s], [c, -s], [2 * c, -2 * s]])
    assert flame_admitted(x).tolist() == list(range(6))
    assert close(flame(x, lam=0.0), [0.0, 0.0], tol=1e-12)


# -- FLTrust -----------------------------------------------------------------------------------


def test_fltrust_by_hand():
    g0 = T([1.0, 0.0])
    x = T([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 3.0]])
    # TS = 1, 1/sqrt 2, 0, 0; each row rescaled to ||g0|| = 1: ((1, 0) + (1/2, 1/2)) / (1 + 1/sqrt 2)
    w, trust = trust_weights(x, g0)
    assert close(trust, [1.0, 1 / math.sqrt(2), 0.0, 0.0])
    assert close(fltrust(x, g0), T([1.5, 0.5]) / (1 + 1 / math.sqrt(2)))
    assert close(fltrust(-x[:2], g0), [0.0, 0.0])                     # nobody trusted
    assert close(fltrust(x, T([0.0, 0.0])), [0.0, 0.0])                # no reference
    assert close(fltrust(T([[0.0, 0.0], [3.0, 0.0]]), g0), [1.0, 0.0])  # a zero row weighs 0


@SETTINGS
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31), scale=st.floats(1e-3, 1e3))
def test_fltrust_output_norm_is_at_most_g0s(n, seed, scale):
    x = randn(n, 7, seed) * scale
    g0 = randn(1, 7, seed + 1)[0]
    out = fltrust(x, g0)
    assert float(out.norm()) <= float(g0.norm()) * (1 + 1e-9)
    w, trust = trust_weights(x, g0)
    assert bool((w >= 0).all()) and bool((trust >= 0).all()) and bool((trust <= 1).all())


def test_fltrust_root_set_is_no_workers_data():
    ds = load_dataset("digits")
    cfg = Config(num_workers=10, num_byzantine=2, agg="fltrust", pre="none", attack="none",
                 momentum=0.0)
    validate(cfg)
    root = root_indices(cfg, len(ds.y_train))
    shards = worker_shards(cfg, ds.y_train, ds.num_classes)
    held = torch.cat(shards)
    assert root.numel() == 100 and not bool(torch.isin(held, root).any())
    # the honest workers still split everything else
    assert torch.unique(torch.cat(shards[:8])).numel() == len(ds.y_train) - 100
    with pytest.raises(ConfigError, match="--root-size .* leaves no training data"):
        root_indices(Config(agg="fltrust", agg_params={"root_size": len(ds.y_train)}),
                     len(ds.y_train))


# -- end to end --------------------------------------------------------------------------------

FLAGS = ["-n", "10", "-f", "2", "--pre", "none", "--attack", "alie", "--partition", "iid",
         "--momentum", "0", "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize("agg", ["dnc", "signguard", "clippedclustering", "flame", "fltrust"])
def test_each_trains_under_alie(agg, tmp_path):
    summary = main_mod.main([*FLAGS, "--agg", agg, "--rounds", "60", "--eval-every", "60",
                             "-o", str(tmp_path / "r")])
    assert summary["final_test_accuracy"] > 80, summary
