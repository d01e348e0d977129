"""Pre-aggregators and chains: hand-computed values, invariants, spec parsing, errors."""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.aggregation import native
from common.aggregation import preagg as P
from common.errors import ConfigError

SETTINGS = settings(max_examples=30, deadline=None)


def T(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(n, d, seed, dtype=torch.float64):
    return torch.randn(n, d, generator=gen(seed), dtype=dtype)


# ------------------------------------------------------------------------------------------
# bucketing
# ------------------------------------------------------------------------------------------

def test_bucketing_by_hand():
    x = T([[0], [2], [4], [6], [10]])
    # s = n: one bucket, the mean 22/5; s = 1: a permutation of the rows
    assert torch.allclose(P.bucketing(x, 5, gen()), T([[4.4]]))
    assert torch.allclose(P.bucketing(x, 7, gen()), T([[4.4]]))
    assert sorted(P.bucketing(x, 1, gen()).flatten().tolist()) == [0, 2, 4, 6, 10]
    # s = 2 with the permutation torch.randperm draws from the same seed
    perm = torch.randperm(5, generator=gen(3)).tolist()
    vals = [0, 2, 4, 6, 10]
    expected = [[(vals[perm[0]] + vals[perm[1]]) / 2], [(vals[perm[2]] + vals[perm[3]]) / 2],
                [vals[perm[4]]]]
    assert torch.allclose(P.bucketing(x, 2, gen(3)), T(expected))


def test_bucketing_stage_info_and_reproducibility():
    x = randn(7, 4, 0)
    st_ = P.make_chain("bucketing:3", 7, 1).stages[0]
    out = st_(x, gen(5))
    perm = st_.info["permutation"]
    assert sorted(perm) == list(range(7)) and st_.info["s"] == 3
    json.dumps(st_.info)
    expected = torch.stack([x[perm[0:3]].mean(0), x[perm[3:6]].mean(0), x[perm[6:]].mean(0)])
    assert torch.allclose(out, expected)
    assert torch.equal(st_(x, gen(5)), out)  # same seed, same buckets


@SETTINGS
@given(n=st.integers(1, 12), s=st.integers(1, 6), d=st.integers(1, 4),
       seed=st.integers(0, 10**6))
def test_bucketing_shape_and_mean(n, s, d, seed):
    x = randn(n, d, seed)
    y = P.bucketing(x, s, gen(seed))
    assert y.shape == (math.ceil(n / s), d)
    if n % s == 0:
        assert torch.allclose(y.mean(0), x.mean(0))


# ------------------------------------------------------------------------------------------
# resampling
# ------------------------------------------------------------------------------------------

def test_resampling_by_hand():
    x = T([[0], [2], [4], [6], [10]])
    # s = n: every average uses every message -> all rows 4.4; s = 1: a permutation
    assert torch.allclose(P.resampling(x, 5, gen()), T([[4.4]] * 5))
    assert sorted(P.resampling(x, 1, gen()).flatten().tolist()) == [0, 2, 4, 6, 10]


@SETTINGS
@given(n=st.integers(1, 12), s=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_resampling_uses_each_message_at_most_s_times(n, s, seed):
    s = min(s, n)
    groups = P.resampling_groups(n, s, gen(seed))
    assert groups.shape == (n, s)
    for row in groups.tolist():
        assert len(set(row)) == s  # distinct within an average
    counts = Counter(groups.flatten().tolist())
    assert max(counts.values()) <= s and sum(counts.values()) == n * s
    x = randn(n, 3, seed)
    y = P.resampling(x, s, gen(seed))
    expected = torch.stack([x[g].mean(0) for g in groups.tolist()])
    assert y.shape == (n, 3) and torch.allclose(y, expected)
    assert torch.allclose(y.mean(0), x.mean(0))  # every message used exactly s times


def test_resampling_stage_info():
    stage = P.make_chain("resampling:3", 6, 1).stages[0]
    stage(randn(6, 2, 0), gen(1))
    groups = stage.info["groups"]
    assert len(groups) == 6 and all(len(set(g)) == 3 for g in groups)
    json.dumps(stage.info)


# ------------------------------------------------------------------------------------------
# nnm
# ------------------------------------------------------------------------------------------

def test_nnm_by_hand():
    # rows 0, 1, 10 with f = 1 -> 2 neighbours (itself first):
    # row 0: {0, 1} -> 0.5; row 1: {1, 0} (1 < 81) -> 0.5; row 2: {10, 1} (81 < 100) -> 5.5
    x = T([[0], [1], [10]])
    assert torch.allclose(P.nnm(x, 1), T([[0.5], [0.5], [5.5]]))
    assert P.nnm_neighbours(x, 1).tolist() == [[0, 1], [1, 0], [2, 1]]
    # f = 2: each row keeps itself only
    assert torch.allclose(P.nnm(x, 2), x)


@SETTINGS
@given(n=st.integers(1, 10), d=st.integers(1, 4), seed=st.integers(0, 10**6),
       f=st.integers(0, 9))
def test_nnm_shape_and_f0_global_mean(n, d, seed, f):
    x = randn(n, d, seed)
    f = min(f, n - 1)
    assert P.nnm(x, f).shape == (n, d)
    y = P.nnm(x, 0)
    assert torch.allclose(y, x.mean(0).expand(n, d))


def test_nnm_identical_rows_and_stage_info():
    x = T([[1.0, 2.0]] * 4)
    stage = P.make_chain("nnm", 4, 1).stages[0]
    assert torch.allclose(stage(x, gen()), x)
    assert all(nb[0] == i for i, nb in enumerate(stage.info["neighbours"]))


@pytest.mark.parametrize("n,f,d,far", [(25, 5, 3000, True), (12, 3, 5001, False),
                                      (7, 0, 100, False), (30, 29, 64, False)])
def test_nnm_float32_equals_the_mixing_matrix(n, f, d, far, monkeypatch):
    """float32 on CPU runs as group means (the rows every neighbourhood shares summed once);
    it must equal W @ x in float64, and the torch path's matrix product."""
    x = randn(n, d, n, torch.float32)
    if far:  # the last f rows far away: every neighbourhood holds the same n - 2f rows
        x[n - f:] = x[n - f:] * 3 - 5
    nb = P.nnm_neighbours(x, f)
    w = torch.zeros(n, n, dtype=torch.float64).scatter_(1, nb, 1.0 / (n - f))
    out = P.nnm(x, f)
    torch.testing.assert_close(out.double(), w @ x.double(), rtol=1e-5, atol=1e-5)
    monkeypatch.setitem(native._state, "lib", None)
    torch.testing.assert_close(P.nnm(x, f), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("spec", ["nnm", "bucketing:2", "resampling:2"])
def test_a_stage_reuses_its_output_buffer(spec):
    x = randn(9, 50, 0, torch.float32)
    stage = P.make_chain(spec, 9, 2).stages[0]
    first = stage(x, gen(1))
    kept = first.clone()
    again = stage(2 * x, gen(1))  # the same buckets, groups or neighbours: twice the output
    assert again.data_ptr() == first.data_ptr()
    torch.testing.assert_close(again, 2 * kept)
    if spec != "bucketing:2":  # its own output as input: written elsewhere, not over it
        own = stage(again, gen(1))
        assert own.data_ptr() != again.data_ptr()
        fresh = P.make_chain(spec, 9, 2).stages[0](again.clone(), gen(1))
        torch.testing.assert_close(own, fresh)


def test_nonfinite_row_only_spoils_its_own_mixtures():
    x = T([[0.0], [1.0], [2.0], [100.0]])
    x[3] = math.inf
    y = P.nnm(x, 1)  # row 3 is infinitely far: no other row takes it as a neighbour
    assert bool(torch.isfinite(y[:3]).all())
    b = P.bucketing(x, 2, gen(0))
    assert int(torch.isfinite(b).all(dim=1).sum()) == 1  # only the bucket holding row 3 is bad


def test_huge_values_stay_finite():
    x = randn(7, 10, 0, torch.float32)
    x[2] = 1e30
    for spec in ("nnm", "bucketing:2", "resampling:2", "bucketing:2,nnm"):
        y = P.make_chain(spec, 7, 1)(x, gen(0))
        assert y.dtype == torch.float32 and bool(torch.isfinite(y).all()), spec
    # nnm with f = 1: the huge row is nobody else's neighbour
    y = P.nnm(x, 1)
    assert float(y[[0, 1, 3, 4, 5, 6]].abs().max()) < 10


# ------------------------------------------------------------------------------------------
# chains and errors
# ------------------------------------------------------------------------------------------

def test_parse_chain():
    assert P.parse_chain("bucketing:2,nnm,resampling:3") == [
        ("bucketing", {"s": 2}), ("nnm", {}), ("resampling", {"s": 3})]
    assert P.parse_chain("") == [] and P.parse_chain("none") == [] and P.parse_chain(None) == []
    assert P.parse_chain(" Bucketing : 4 , NNM ") == [("bucketing", {"s": 4}), ("nnm", {})]
    assert P.parse_chain("bucketing") == [("bucketing", {})]


@pytest.mark.parametrize("spec,match", [
    ("bucketing:x", "bucketing parameter s must be an integer"),
    ("bucketing:1.5", "bucketing parameter s must be an integer"),
    ("bucketing:0", "bucketing parameter s must be >= 1"),
    ("resampling:-2", "resampling parameter s must be >= 1"),
    ("nnm:3", "takes no parameter"),
    ("bucketing:2,,nnm", "empty stage"),
    ("buckting:2", "unknown pre-aggregator 'buckting'; choose one of: arc, bucketing, clip, nnm, resampling"),
])
def test_parse_chain_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        P.parse_chain(spec)


def test_make_chain_out_count_and_apply():
    chain = P.make_chain("bucketing:2,nnm", 25, 5)
    assert chain.out_count(25) == 13 and len(chain) == 2
    assert P.make_chain("bucketing:2,bucketing:2", 25, 5).out_count(25) == 7
    assert P.make_chain("resampling:3,nnm", 25, 5).out_count(25) == 25
    assert P.make_chain("none", 25, 5).out_count(25) == 25
    x = randn(25, 6, 0)
    y = chain(x, gen(0))
    assert y.shape == (13, 6)
    assert [i["name"] for i in chain.info] == ["bucketing", "nnm"]
    json.dumps(chain.info)
    empty = P.make_chain("", 25, 5)
    assert empty(x, gen(0)) is x and empty.out_count(25) == 25
    assert chain.spec() == "bucketing:2,nnm" and empty.spec() == "none"


def test_make_chain_preconditions():
    with pytest.raises(ConfigError, match="s <= n.*s=30, n=25"):
        P.make_chain("resampling:30", 25, 5)
    with pytest.raises(ConfigError, match="s <= n.*s=5, n=4"):
        P.make_chain("bucketing:7,resampling:5", 25, 5)  # resampling sees ceil(25/7) = 4
    with pytest.raises(ConfigError, match="nnm needs f < n, got n=3, f=5"):
        P.make_chain("bucketing:10,nnm", 25, 5)


def test_registry():
    assert sorted(P.PREAGGREGATORS) == ["arc", "bucketing", "clip", "nnm", "resampling"]
    assert P.preaggregator_names() == ["arc", "bucketing", "clip", "nnm", "resampling"]
