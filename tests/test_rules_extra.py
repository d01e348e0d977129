"""The rules and pre-aggregators beyond the seed papers (meamed, monna, mda, caf, smea; clip,
arc): values by hand, agreement with ByzFL 0.0.11 where it has the rule (skipped without it),
their limits, and each one end to end in main.py (under mpiexec:
tests/test_rules_mpi.py)."""
from __future__ import annotations

import importlib

import pytest
import torch

import main as main_mod
from common.aggregation.preagg import make_chain
from common.aggregation.preagg.clipping import arc, clip
from common.aggregation.rules import make_rule
from common.aggregation.rules.caf import caf, caf_weights
from common.aggregation.rules.mda import mda
from common.aggregation.rules.meamed import meamed
from common.aggregation.rules.monna import monna
from common.aggregation.rules.smea import smea
from common.errors import ConfigError
from master.server import aggregate_usable
from tests.rule_helpers import T, close

try:
    BYZFL = importlib.import_module("byzfl.aggregators.aggregators")
    BYZFL_PRE = importlib.import_module("byzfl.aggregators.preaggregators")
except ImportError:
    BYZFL = BYZFL_PRE = None
needs_byzfl = pytest.mark.skipif(BYZFL is None, reason="ByzFL (bench/test dependency) not installed")


def _cases(count, max_n=10, d=6, min_f=0, duplicates=True):
    for seed in range(count):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(3, max_n + 1, (1,), generator=g))
        f = int(torch.randint(min_f, (n - 1) // 2 + 1, (1,), generator=g))
        x = torch.randn(n, d, generator=g)
        if seed % 3 == 0:
            x[:f] += 5.0
        if duplicates and seed % 5 == 0:      # ties: duplicated rows
            x[1] = x[0]
        yield n, f, x


# -- by hand -----------------------------------------------------------------------------------

def test_clip_and_arc_by_hand():
    x = T([[3.0, 4.0], [0.3, 0.4], [6.0, 8.0], [0.0, 0.0]])           # norms 5, 0.5, 10, 0
    assert close(clip(x, 2.0), [[1.2, 1.6], [0.3, 0.4], [1.2, 1.6], [0.0, 0.0]])
    # n = 4, f = 1: k = floor(2 * 1/4 * 3) = 1: the largest (10) clipped to the next (5)
    assert close(arc(x, 1), [[3.0, 4.0], [0.3, 0.4], [3.0, 4.0], [0.0, 0.0]])
    assert close(arc(x, 0), x)
    ch = make_chain("arc", 4, 1)
    ch(x.float())
    assert ch.info[0]["clipped"] == [2] and ch.info[0]["threshold"] == pytest.approx(5.0)


def test_meamed_by_hand():
    x = T([[1.0], [2.0], [3.0], [100.0], [-50.0]])
    # median 2; the 3 nearest: 1, 2, 3
    assert close(meamed(x, 2), [2.0])
    # the 4 nearest 2 are 1, 2, 3 and then -50 (distance 52) before 100 (distance 98)
    assert close(meamed(x, 1), [(1 + 2 + 3 - 50) / 4])
    # even n: the median is the mean of the two middle values (2.5): nearest 2 of 1,2,3,4 -> 2,3
    assert close(meamed(T([[1.0], [2.0], [3.0], [4.0], [40.0], [-40.0]]), 2), [2.5])


def test_monna_by_hand():
    x = T([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [10.0, 10.0], [-3.0, 0.0]])
    # nearest 3 to row 0: itself, row 1 (1), row 2 (2)
    assert close(monna(x, 2, pivot=0), [1 / 3, 2 / 3])
    # nearest 3 to row 4 = (-3, 0): itself, row 0 (3), row 2 (sqrt 13 < 4, row 1's)
    assert close(monna(x, 2, pivot=4), [-1.0, 2 / 3])


def test_mda_by_hand():
    x = T([[0.0], [1.0], [2.0], [10.0], [11.0]])
    # 3 rows of least diameter: {0, 1, 2} (diameter 2)
    assert close(mda(x, 2), [1.0])
    # 4 rows: {0, 1, 2, 10} (10) beats {1, 2, 10, 11} (10) by coming first, and {0,...,11} is
    # not allowed; both have diameter 10: the lexicographically first wins
    assert close(mda(x, 1), [13 / 4])


def test_caf_by_hand():
    # one far row: the first pass's top eigenvector points at it and its weight goes to 0; the
    # square's corners lose a little weight each (their tau against the far row's), so the
    # output is the square's centre up to that
    x = T([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [100.0, -100.0]])
    w = caf_weights(x @ x.T, 1)
    assert float(w[4]) == 0.0
    assert close(caf(x, 1), [0.5, 0.5], tol=1e-2)
    # f = 0: the mean
    assert close(caf(x, 0), x.mean(0))


def test_caf_terminates_when_the_farthest_row_already_weighs_nothing():
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    x[:3] = 1e30
    out = caf(x, 3)
    assert bool(torch.isfinite(out).all()) and float(out.abs().max()) < 10


def test_smea_by_hand():
    x = T([[0.0], [1.0], [2.0], [10.0], [11.0]])
    # 3 rows of least spread: {0, 1, 2} (variance sum 2) against {1, 2, 10}, ...
    assert close(smea(x, 2), [1.0])


# -- ByzFL -------------------------------------------------------------------------------------

@needs_byzfl
def test_clip_and_arc_agree_with_byzfl():
    for n, f, x in _cases(40):
        assert torch.allclose(arc(x, f), BYZFL_PRE.ARC(f=f)(x.clone()), atol=1e-6)
        assert torch.allclose(clip(x, 1.5), BYZFL_PRE.Clipping(c=1.5)(x.clone()), atol=1e-6)


@needs_byzfl
@pytest.mark.parametrize("name", ["meamed", "monna", "mda"])
def test_rules_agree_with_byzfl(name):
    for n, f, x in _cases(60):
        if name == "meamed":
            if n % 2 == 0:
                continue  # ByzFL takes the lower middle value as the median of an even count
            ours, theirs = meamed(x, f), BYZFL.Meamed(f=f)(x.clone())
        elif name == "monna":
            p = n - 1
            ours, theirs = monna(x, f, p), BYZFL.MoNNA(f=f, idx=p)(x.clone())
        else:
            ours, theirs = mda(x, f), BYZFL.MDA(f=f)(x.clone())
        assert torch.allclose(ours, theirs, atol=1e-6), (name, n, f)


@needs_byzfl
def test_smea_agrees_with_byzfl_where_its_power_step_is_exact():
    """ByzFL estimates each eigenvalue by one power-iteration step from a random vector; in one
    dimension that step is exact. (Not with duplicated rows: a subset of identical rows gives
    ByzFL 0/0 = NaN, which never compares as least, where its true spread is 0.)"""
    for n, f, x in _cases(60, d=1, min_f=1, duplicates=False):
        assert torch.allclose(smea(x, f), BYZFL.SMEA(f=f)(x.clone()), atol=1e-5), (n, f)


def test_caf_weights_sum_to_one():
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(3)).double()
    w = caf_weights(x @ x.T, 3)
    assert float(w.sum()) == pytest.approx(1.0) and bool((w >= 0).all())


# -- limits and the server's drop policy -------------------------------------------------------

def test_exact_searches_name_their_limit():
    with pytest.raises(ConfigError, match=r"mda searches the C\(40, 15\) = 40225345056 subsets"):
        make_rule("mda", 40, 15)
    with pytest.raises(ConfigError, match=r"smea searches all C\(30, 20\) = 30045015 subsets"):
        make_rule("smea", 30, 10)
    make_rule("mda", 29, 14)
    make_rule("smea", 25, 5)


def test_monna_finds_its_pivot_among_the_usable_rows_or_skips():
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(1))
    rule = make_rule("monna", 7, 2, pivot=4)
    chain = make_chain("none", 7, 2)
    honest = torch.ones(7, dtype=torch.bool)
    out, info = aggregate_usable(chain, rule, x, honest, 2, dropped=[1])
    keep = torch.tensor([0, 2, 3, 4, 5, 6])
    assert torch.allclose(out, monna(x[keep], 1, pivot=3))       # worker 4 is row 3 now
    assert 4 in info["kept"] and 1 not in info["kept"]
    out, info = aggregate_usable(chain, rule, x, honest, 2, dropped=[4])
    assert out is None and "pivot worker 4 sent no usable message" in info["skipped"]


# -- end to end --------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("agg,pre", [("meamed", "none"), ("monna", "none"), ("mda", "none"),
                                     ("caf", "none"), ("smea", "none"), ("cm", "arc"),
                                     ("mean", "clip:5")])
def test_each_runs_end_to_end(agg, pre, tmp_path):
    summary = main_mod.main(["-n", "9", "-f", "2", "--agg", agg, "--pre", pre, "--attack",
                             "signflip", "--partition", "iid", "--momentum", "0", "--rounds", "40",
                             "--eval-every", "40", "--no-progress", "-o", str(tmp_path / "r")])
    assert summary["final_test_accuracy"] > 70, summary
