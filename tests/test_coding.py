"""Tests for common.coding: election codes, votes, exhaustive verification and code search."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.coding import (
    ATTACKS,
    KNOWN_CODES,
    bernoulli_code,
    count_failures,
    deterministic_code,
    make_code,
    master_vote,
    node_votes,
    paper_family_code,
    redundancy,
    search,
    search_code,
    tolerates,
)
from common.coding.cli import main
from common.errors import ConfigError
from tests.processes import run_python

PAPER_CODE = [[1, 0, 0, 0, 0], [0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]


def _sign(x):
    return (x > 0) - (x < 0)


def brute_force_failures(G, b, attack="worst"):
    """Plain loops, sharing no code with common.coding: count (pattern, placement) pairs where
    the master's vote differs from the majority of the slice signs (tie patterns skipped)."""
    G = [list(map(int, row)) for row in G]
    n_nodes, n = len(G), len(G[0])
    failures = total = 0
    for pattern in itertools.product([-1, 1], repeat=n):
        truth = _sign(sum(pattern))
        if truth == 0:
            continue
        honest = [_sign(sum(s for s, g in zip(pattern, row) if g)) for row in G]
        for byz in itertools.combinations(range(n_nodes), b):
            votes = []
            for j in range(n_nodes):
                if j not in byz:
                    votes.append(honest[j])
                elif attack == "worst":
                    votes.append(-truth)
                elif attack == "reverse":
                    votes.append(-honest[j])
                elif attack == "directional":
                    votes.append(-1)
                else:
                    votes.append(0)
            total += 1
            if _sign(sum(votes)) != truth:
                failures += 1
    return failures, total


# ------------------------------------------------------------------------------ verification


def test_paper_code_tolerates_one_byzantine_node():
    G = deterministic_code(5, 3.8)
    assert G.tolist() == PAPER_CODE
    assert redundancy(G) == pytest.approx(3.8)
    res = count_failures(G, 1)
    assert tuple(res) == (0, 160)
    assert set(res.per_placement) == {(j,) for j in range(5)}
    assert all(v == 0 for v in res.per_placement.values())


def test_identity_does_not_tolerate_one_byzantine_node():
    # Hand count for plain signSGD-MV (identity), n = 5, b = 1: the Byzantine node flips the
    # master's vote iff the slice signs split 3-2 and it holds one of the 3 majority slices (then
    # 2 honest majority votes face 2 + 1 opposite ones; with a 4-1 or 5-0 split 3 majority votes
    # remain). 3-2 patterns: 2 * C(5, 3) = 20, each with 3 bad placements: 60 of 32 * 5 = 160.
    G = np.eye(5, dtype=int)
    res = count_failures(G, 1)
    assert tuple(res) == brute_force_failures(G, 1) == (60, 160)
    assert all(v == 12 for v in res.per_placement.values())  # C(4,2) * 2 per node
    assert not tolerates(G, 1)
    assert tolerates(G, 0)


def test_paper_code_breaks_with_two_byzantine_nodes():
    res = count_failures(PAPER_CODE, 2)
    assert res == brute_force_failures(PAPER_CODE, 2)
    assert res.failures > 0 and res.total == 32 * 10


@settings(max_examples=40, deadline=None)
@given(
    n_nodes=st.integers(1, 5),
    n=st.integers(1, 5),
    b=st.integers(0, 3),
    attack=st.sampled_from(ATTACKS),
    data=st.data(),
)
def test_count_failures_matches_brute_force(n_nodes, n, b, attack, data):
    b = min(b, n_nodes)
    bits = data.draw(st.lists(st.integers(0, 1), min_size=n_nodes * n, max_size=n_nodes * n))
    G = np.array(bits).reshape(n_nodes, n)
    res = count_failures(G, b, attack)
    assert tuple(res) == brute_force_failures(G, b, attack)
    assert sum(res.per_placement.values()) == res.failures
    # the worst case dominates every other attack, placement by placement
    worst = count_failures(G, b, "worst").per_placement
    assert all(worst[pl] >= cnt for pl, cnt in res.per_placement.items())


def test_even_n_skips_tie_patterns():
    res = count_failures(np.ones((4, 4), dtype=int), 1)
    assert res.total == (16 - 6) * 4  # C(4,2) = 6 tie patterns skipped
    assert res.failures == 0


def test_count_failures_rejects_bad_input():
    with pytest.raises(ConfigError, match="attack"):
        count_failures(PAPER_CODE, 1, attack="nope")
    with pytest.raises(ConfigError, match="Byzantine"):
        count_failures(PAPER_CODE, 6)
    with pytest.raises(ConfigError, match="0 and 1"):
        count_failures([[2, 0], [0, 1]], 0)


# ------------------------------------------------------------------------------ codes


def test_identity_and_all_ones_for_any_n():
    for n in range(1, 10):
        assert np.array_equal(deterministic_code(n, 1), np.eye(n))
        assert np.array_equal(deterministic_code(n, float(n)), np.ones((n, n)))
        assert tolerates(deterministic_code(n, n), (n - 1) // 2)


@pytest.mark.parametrize("key", sorted(KNOWN_CODES))
def test_known_codes_tolerate_their_b(key):
    n, ones = key
    code = KNOWN_CODES[key]
    G = deterministic_code(n, ones / n)
    assert G.shape == (n, n) and G.sum() == ones
    assert G.sum(axis=1).min() > 0
    assert count_failures(G, code["b"]).failures == 0
    assert count_failures(G, code["b"] + 1).failures > 0
    # the redundancy as users type it (3 decimals) selects the same code
    assert np.array_equal(deterministic_code(n, round(ones / n, 3)), G)


@pytest.mark.parametrize("n", [5, 7, 9])
def test_paper_family(n):
    G = paper_family_code(n)
    assert G.sum() == n * n - n - 1
    assert np.array_equal(deterministic_code(n, n - 1 - 1 / n), G)
    assert count_failures(G, (n - 3) // 2).failures == 0
    assert count_failures(G, (n - 1) // 2).failures > 0
    if n == 5:
        assert G.tolist() == PAPER_CODE
    with pytest.raises(ConfigError):
        paper_family_code(6)


def test_unknown_deterministic_code_is_a_config_error():
    with pytest.raises(ConfigError) as exc:
        deterministic_code(5, 2.0)
    msg = str(exc.value)
    assert "n=5" in msg and "--deterministic False" in msg and "python -m common.coding search" in msg
    assert "r=3.8" in msg  # lists the known pairs
    with pytest.raises(ConfigError):
        deterministic_code(0, 1)


def test_bernoulli_code_mean_redundancy_and_no_empty_rows():
    rng = np.random.default_rng(0)
    for n, r in [(5, 3.0), (9, 4.5), (5, 2.5)]:
        draws = [bernoulli_code(n, r, rng) for _ in range(2000)]
        assert all(G.shape == (n, n) and G.sum(axis=1).min() > 0 for G in draws)
        assert set(np.unique(np.stack(draws))) <= {0, 1}
        mean = np.mean([redundancy(G) for G in draws])
        # redrawing matrices with an empty row biases the mean up to r / (1 - (1-p)^n)
        p = r / n
        assert mean == pytest.approx(r / (1 - (1 - p) ** n), rel=0.02)
        if (1 - p) ** n < 0.011:
            assert mean == pytest.approx(r, rel=0.03)


def test_bernoulli_code_validates_r():
    rng = np.random.default_rng(0)
    for r in (0.5, 5.5, float("nan")):
        with pytest.raises(ConfigError, match=r"\[1, 5\]"):
            bernoulli_code(5, r, rng)
    assert np.array_equal(bernoulli_code(5, 5, rng), np.ones((5, 5)))


def test_make_code():
    assert make_code(5, 3.8, True, 0).tolist() == PAPER_CODE
    a, b = make_code(9, 3, False, 7), make_code(9, 3, False, 7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, make_code(9, 3, False, 8))


# ------------------------------------------------------------------------------ votes


def test_node_and_master_votes_hand_example():
    G = np.array(PAPER_CODE)
    slice_signs = torch.tensor(
        [  # 5 slices x 4 coordinates
            [1.0, -1.0, 1.0, 0.0],
            [-1.0, -1.0, 1.0, 1.0],
            [-1.0, 1.0, -1.0, 1.0],
            [1.0, -1.0, -1.0, 1.0],
            [1.0, 1.0, 1.0, -1.0],
        ]
    )
    votes = node_votes(slice_signs, G)
    expected = torch.tensor(
        [
            [1.0, -1.0, 1.0, 0.0],  # node 0: slice 0 only
            [-1.0, -1.0, -1.0, 1.0],  # node 1: slices 1-3
            [1.0, -1.0, 1.0, 1.0],  # nodes 2-4: all slices (sums 1, -1, 1, 2)
            [1.0, -1.0, 1.0, 1.0],
            [1.0, -1.0, 1.0, 1.0],
        ]
    )
    assert torch.equal(votes, expected)
    assert torch.equal(master_vote(votes), torch.tensor([1.0, -1.0, 1.0, 1.0]))
    # ties give 0
    tie = node_votes(torch.tensor([[1.0], [-1.0]]), np.ones((1, 2)))
    assert tie.item() == 0.0
    assert master_vote(torch.tensor([[1.0], [-1.0]])).item() == 0.0
    with pytest.raises(ValueError):
        node_votes(slice_signs[:4], G)


def test_node_votes_equal_loop():
    g = torch.Generator().manual_seed(0)
    slice_signs = torch.randint(-1, 2, (7, 50), generator=g).float()
    G = make_code(7, 3, False, 1)
    votes = node_votes(slice_signs, G)
    for j in range(7):
        manual = torch.sign(sum(slice_signs[k] for k in range(7) if G[j, k]))
        assert torch.equal(votes[j], manual)


# ------------------------------------------------------------------------------ search


def test_search_b0_is_identity_like(capsys):
    G = search(3, 0)
    assert G is not None and redundancy(G) == 1
    assert "r=1" in capsys.readouterr().out


def test_search_rediscovers_paper_redundancy():
    res = search_code(5, 1)
    assert res.complete
    assert res.ones <= 19 and count_failures(res.G, 1).failures == 0
    assert res.ones == 19  # and nothing lighter exists
    assert search_code(5, 1, max_ones=18).G is None


def test_search_n7_matches_without_knapsack_prune():
    a = search_code(7, 1)
    b = search_code(7, 1, _knapsack=False)
    assert a.complete and b.complete and a.ones == b.ones == 27
    assert tolerates(a.G, 1) and tolerates(b.G, 1)


def test_search_n5_is_least_by_independent_enumeration():
    # every multiset of 5 rows (non-empty subsets of 5 columns): 324,632 codes, vectorised
    n = 5
    rows = np.array([[(x >> k) & 1 for k in range(n)] for x in range(1, 2**n)])
    P = np.array(list(itertools.product([-1, 1], repeat=n)))
    truth = np.sign(P.sum(1))
    contrib = np.sign(P @ rows.T) * truth[:, None]  # (patterns, rows)
    contrib = contrib.astype(np.int8)
    combos = np.array(list(itertools.combinations_with_replacement(range(len(rows)), n)))
    margin = contrib[:, combos[:, 0]].copy()
    for k in range(1, n):
        margin += contrib[:, combos[:, k]]
    margin = margin.min(axis=0)  # worst pattern per code
    ones = rows.sum(1)[combos].sum(1)
    for b in (0, 1, 2):
        least = ones[margin >= 2 * b + 1].min()
        assert search_code(n, b).ones == least


def test_search_impossible_and_budget():
    assert search_code(3, 2).G is None and search_code(3, 2).complete
    res = search_code(9, 1, budget_seconds=1e-9)
    assert not res.complete and res.nodes <= 256


# ------------------------------------------------------------------------------ CLI


def _cli(*args):
    return run_python("-m", "common.coding", *args, timeout=60)


def test_cli_verify_builtin_code():
    out = _cli("verify", "--n", "5", "--r", "3.8", "--b", "1")
    assert out.returncode == 0, out.stderr
    assert "G (n=5, r=3.80): 0 of 160 (pattern, placement) pairs break the vote (b=1)" in out.stdout


def test_cli_bad_input_exits_2_with_one_line():
    bad = _cli("verify", "--n", "5", "--r", "2.0", "--b", "1")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "no known deterministic code for n=5" in bad.stderr


def test_cli_in_process(tmp_path, capsys):
    f = tmp_path / "G.txt"
    f.write_text("1 0 0 0 0\n0 1 0 0 0\n0 0 1 0 0  # comment\n0 0 0 1 0\n0 0 0 0 1\n")
    assert main(["verify", "--file", str(f), "--b", "1", "--detail"]) == 0
    out = capsys.readouterr().out
    assert "60 of 160" in out and "Byzantine nodes [4]: 12 of 32 patterns" in out
    assert main(["verify", "--bernoulli", "--n", "5", "--r", "2.5", "--seed", "0", "--b", "1"]) == 0
    assert "Bernoulli G (seed=0) (n=5, r=" in capsys.readouterr().out
    assert main(["verify", "--n", "5", "--r", "1", "--b", "1", "--attack", "reverse"]) == 0
    assert "60 of 160" in capsys.readouterr().out
    assert main(["search", "--n", "5", "--b", "1", "--budget-seconds", "30"]) == 0
    out = capsys.readouterr().out
    assert "r=3.8 (19 ones)" in out and "search complete" in out and "0 of 160" in out
    assert main(["known"]) == 0 and "r=3.8" in capsys.readouterr().out
    f.write_text("1 0\n0 2\n")
    bad_inputs = [
        ["verify", "--file", str(f), "--b", "1"],
        ["verify", "--file", str(tmp_path / "missing.txt")],
        ["verify", "--bernoulli", "--n", "5", "--r", "9"],
        ["verify", "--n", "5"],
        ["verify", "--n", "5", "--r", "3.8", "--b", "7"],
        ["search", "--n", "15", "--b", "1"],
        ["search", "--n", "5", "--b", "1", "--budget-seconds", "0"],
    ]
    for argv in bad_inputs:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
