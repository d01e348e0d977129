"""Byzantine schedules (fixed, random, markov) and the paper's learning-rate schedules."""
from __future__ import annotations

import numpy as np
import pytest

from common.run.config import Config
from common.run.flags import parse_args
from common.run.schedule import ByzantineSchedule, learning_rate


def _masks(cfg: Config, rounds: int) -> np.ndarray:
    s = ByzantineSchedule(cfg)
    return np.stack([s.mask(t) for t in range(rounds)])


def test_fixed_is_the_last_f():
    m = _masks(Config(num_workers=6, num_byzantine=2, byz_schedule="fixed"), 5)
    assert (m == np.array([False] * 4 + [True] * 2)).all()


def test_random_draws_exactly_f_every_round_uniformly():
    m = _masks(Config(num_workers=20, num_byzantine=5, byz_schedule="random", seed=3), 2000)
    assert (m.sum(1) == 5).all()
    assert len({tuple(r) for r in m[:50]}) > 40                 # redrawn every round
    freq = m.mean(0)                                            # each worker ~ 5/20
    assert np.abs(freq - 0.25).max() < 0.04
    again = _masks(Config(num_workers=20, num_byzantine=5, byz_schedule="random", seed=3), 10)
    assert (again == m[:10]).all()                              # a pure function of the seed


def _runs(col: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of every run of True in a boolean series."""
    out, start = [], None
    for t, v in enumerate(list(col) + [False]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            out.append((start, t - start))
            start = None
    return out


def test_markov_persists_k_rounds_and_turns_with_probability_p():
    n, k, p, rounds = 20, 3, 0.2, 3000
    # f = n - 1: the cap on simultaneous Byzantine workers practically never binds here.
    cfg = Config(num_workers=n, num_byzantine=n - 1, byz_schedule="markov", markov_p=p,
                 markov_k=k, seed=1)
    m = _masks(cfg, rounds)
    turns, eligible = 0, 0
    for j in range(n):
        for start, length in _runs(m[:, j]):
            # back-to-back episodes merge into a run of a multiple of k rounds
            assert length % k == 0 or start + length == rounds
        # an eligible round: the worker was not Byzantine with rounds left (free at round t)
        busy = 0
        for t in range(rounds):
            if busy == 0:
                eligible += 1
                if m[t, j]:
                    turns += 1
                    busy = k
            busy -= 1 if busy else 0
    assert abs(turns / eligible - p) < 0.02
    stationary = k * p / (k * p + 1 - p)                        # 3/7 of the workers Byzantine
    assert abs(m.mean() - stationary) < 0.03


def test_markov_never_exceeds_f_and_episodes_last_k():
    cfg = Config(num_workers=20, num_byzantine=5, byz_schedule="markov", markov_p=0.5,
                 markov_k=5, seed=0)
    m = _masks(cfg, 500)
    assert m.sum(1).max() == 5 and m[20:].sum(1).min() >= 3     # the budget is (nearly) used
    for j in range(20):
        for start, length in _runs(m[:, j]):
            assert length % 5 == 0 or start + length == 500


def test_markov_resume_continues_identically():
    cfg = Config(num_workers=10, num_byzantine=4, byz_schedule="markov", markov_p=0.3,
                 markov_k=4, seed=2)
    s = ByzantineSchedule(cfg)
    first = [s.mask(t) for t in range(7)]
    state = s.state_dict()
    rest = [s.mask(t) for t in range(7, 20)]
    s2 = ByzantineSchedule(cfg)
    s2.load_state_dict(state)
    assert all((a == s2.mask(t)).all() for t, a in zip(range(7, 20), rest))
    assert (np.stack(first + rest) == _masks(cfg, 20)).all()


def test_paper_lr_schedules():
    sq, _ = parse_args(["--lr", "0.001", "--lr-schedule", "sqrt"])
    assert learning_rate(sq, 0) == pytest.approx(0.001)
    assert learning_rate(sq, 3) == pytest.approx(0.0005)          # 0.001 / sqrt(4)
    st, _ = parse_args(["--lr", "0.06", "--lr-schedule", "step", "--lr-milestones", "500,950",
                        "--lr-gamma", "0.5"])
    assert [learning_rate(st, t) for t in (0, 499, 500, 949, 950)] == pytest.approx(
        [0.06, 0.06, 0.03, 0.03, 0.015])
    wu, _ = parse_args(["--lr-schedule", "warmup", "--warmup-start", "0.05", "--lr", "0.1",
                        "--warmup-rounds", "1000"])
    assert [learning_rate(wu, t) for t in (0, 500, 1000, 5000)] == pytest.approx(
        [0.05, 0.075, 0.1, 0.1])


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--lr", "0.001", "--lr-schedule", "sqrt"],
    ["--lr-schedule", "step", "--lr-milestones", "1,2", "--lr-gamma", "0.5"],
    ["--lr-schedule", "warmup", "--warmup-start", "0.05", "--lr", "0.1", "--warmup-rounds", "1000"],
])
def test_paper_lr_schedules_run_end_to_end(tmp_path, flags):
    import json

    import main

    main.main(["--dataset", "digits", "--model", "softmax", "--agg", "diversefl", "--pre", "none",
               "--momentum", "0", "--attack", "backdoor", "--byz-schedule", "markov",
               "-n", "6", "-f", "2", "--rounds", "3", "--eval-every", "3", "--no-progress",
               "-o", str(tmp_path)] + flags)
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    cfg = Config.from_dict(json.load(open(tmp_path / "config.json")))
    assert [r["lr"] for r in recs] == pytest.approx([learning_rate(cfg, t) for t in range(3)])
    assert "backdoor_accuracy" in recs[-1]
