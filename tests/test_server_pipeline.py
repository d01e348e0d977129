"""The server's pipeline around the rule: the message policy (:func:`master.messages.sanitize`
finds unusable or non-finite rows by one-sum finiteness checks; the server drops them) and the trainer
under a hostile transport (bad rows logged and dropped, a non-finite update never applied,
a round where every worker is faulty is skipped)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.finite import all_finite, finite_rows
from master.messages import OK, sanitize

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------------------
# the message policy
# ------------------------------------------------------------------------------------------

@SETTINGS
@given(n=st.integers(1, 12), d=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
       data=st.data())
def test_sanitize_zeroes_exactly_the_unusable_rows(n, d, seed, data):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    bad_value = data.draw(st.lists(st.sampled_from([None, math.nan, math.inf, -math.inf]),
                                   min_size=n, max_size=n))
    status = data.draw(st.lists(st.sampled_from([OK, OK, "wrongsize", "timeout", "dtype"]),
                                min_size=n, max_size=n))
    for i, v in enumerate(bad_value):
        if v is not None:
            x[i, int(seed % d)] = v
    before = x.clone()
    faults = sanitize(x, status)
    expected = {}
    for i in range(n):
        if status[i] != OK:
            expected[i] = status[i]
        elif bad_value[i] is not None:
            expected[i] = "nonfinite"
    assert faults == expected
    for i in range(n):
        if i in expected:
            assert bool((x[i] == 0).all())
        else:
            assert torch.equal(x[i], before[i])
    assert bool(torch.isfinite(x).all())


@SETTINGS
@given(n=st.integers(1, 6), d=st.integers(1, 7),
       data=st.data())
def test_fast_finite_checks_equal_the_elementwise_ones(n, d, data):
    # 3e38 twice overflows a float32 sum although every entry is finite
    values = st.sampled_from([0.0, 1.5, -2.0, 3e38, -3e38, math.nan, math.inf, -math.inf])
    x = torch.tensor(data.draw(st.lists(st.lists(values, min_size=d, max_size=d),
                                        min_size=n, max_size=n)), dtype=torch.float32)
    assert all_finite(x) == bool(torch.isfinite(x).all())
    assert torch.equal(finite_rows(x), torch.isfinite(x).all(dim=1))


def test_fast_finite_checks_by_hand():
    assert all_finite(torch.tensor([3e38, 3e38]))          # the sum overflows, entries do not
    assert not all_finite(torch.tensor([1.0, math.nan]))
    assert all_finite(torch.empty(0))
    x = torch.tensor([[3e38, 3e38], [1.0, -math.inf], [math.inf, -math.inf], [0.0, 2.0]])
    assert finite_rows(x).tolist() == [True, False, False, True]


# ------------------------------------------------------------------------------------------
# the trainer: hostile transport, non-finite update
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    from common.run.flags import parse_args
    from common.run.problem import build_problem

    cfg, _ = parse_args(["-n", "5", "-f", "1", "--model", "softmax", "--agg", "cm", "--pre",
                         "none", "--attack", "none", "--rounds", "3", "--eval-every", "100",
                         "--no-progress", "--momentum", "0"])
    return cfg, build_problem(cfg, "cpu")


class HostileTransport:
    """Wraps the in-process transport and spoils rows the way a malicious rank could."""

    def __init__(self, inner, spoil):
        self.inner, self.spoil = inner, spoil

    def round(self, params, t, byz, clients=None):
        res = self.inner.round(params, t, byz, clients)
        self.spoil(res)
        return res

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, d):
        self.inner.load_state_dict(d)

    def close(self):
        pass


def _trainer(tiny, tmp_path, spoil):
    from common.protocols import protocol_of
    from master.trainer import Trainer
    from master.transport import InProcessTransport
    from worker.group import make_worker_group

    cfg, problem = tiny
    group = make_worker_group(cfg, problem, range(cfg.num_workers), torch.device("cpu"))
    transport = HostileTransport(InProcessTransport(group, protocol_of(cfg)), spoil)
    return Trainer(cfg, problem, transport, str(tmp_path), torch.device("cpu"))


def test_trainer_logs_and_drops_bad_rows(tiny, tmp_path):
    seen = {}

    def spoil(res):
        seen["rows"] = res.messages[[1, 2, 3]].clone()
        res.messages[0, 0] = math.nan
        res.messages[0, 3] = math.inf
        seen["rows"][1] = res.messages[2] = 1e30  # finite but huge: the rule's job, not a fault
        res.status[4] = "wrongsize"     # what the MPI transport reports for a bad buffer
        res.messages[4] = -1e38
        res.losses[0] = -1.6e35         # a faulty rank's trailer is garbage too
        seen["losses"] = res.losses.clone()

    tr = _trainer(tiny, tmp_path, spoil)
    before = tr.server.params.clone()
    rec = tr.round(0)
    assert rec["faults"] == {"0": "nonfinite", "4": "wrongsize"}
    assert rec["rule"]["workers"] == [1, 2, 3]
    # train_loss averages the honest workers with usable messages: 1, 2, 3 (4 is Byzantine)
    assert rec["train_loss"] == pytest.approx(float(seen["losses"][1:4].mean()))
    step = (before - tr.server.params) / rec["lr"]
    # rows 0 and 4 dropped, f = 1 - 2 -> 0: cm of {a, 1e30, b} is the middle value per coordinate
    assert torch.allclose(step, seen["rows"].median(dim=0).values, atol=1e-6, rtol=1e-5)


def test_trainer_skips_a_nonfinite_update(tiny, tmp_path, monkeypatch):
    tr = _trainer(tiny, tmp_path, lambda res: None)
    before = tr.server.params.clone()
    d = before.numel()
    monkeypatch.setattr(tr.server, "aggregate",
                        lambda msgs, honest, t, dropped, clients: (torch.full((d,), math.nan),
                                                                   {}))
    rec = tr.round(0)
    assert rec["faults"] == {"-1": "nonfinite_update"}
    assert torch.equal(tr.server.params, before)


def test_all_workers_faulty_round_is_skipped(tiny, tmp_path):
    def spoil(res):
        res.messages[:] = math.nan

    tr = _trainer(tiny, tmp_path, spoil)
    before = tr.server.params.clone()
    rec = tr.round(0)
    assert rec["faults"] == {str(i): "nonfinite" for i in range(5)}
    assert rec["rule"] == {"skipped": "no usable message"}
    assert torch.equal(tr.server.params, before)
    assert rec["train_loss"] is None or np.isfinite(rec["train_loss"])


def test_a_precondition_that_fails_after_dropping_skips_the_round():
    """multikrum with m = 4 fixed needs 4 rows: with 2 of 5 dropped the round is skipped, the
    reason logged."""
    from common.aggregation.preagg import make_chain
    from common.aggregation.rules import make_rule
    from master.server import aggregate_usable

    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    rule = make_rule("multikrum", 5, 1, m=4)
    out, info = aggregate_usable(make_chain("none", 5, 1), rule, x, torch.ones(5, dtype=torch.bool),
                                 1, dropped=[0, 3])
    assert out is None
    assert info["skipped"] == ("2 unusable messages dropped: multikrum needs 1 <= m <= n, "
                               "got m=4, n=3")
    assert rule.f == 1  # the configured f is back for the next round


@pytest.mark.parametrize("agg", ["krum", "multikrum", "bulyan", "cm", "rfa", "cclip"])
def test_a_worker_sending_inf_does_not_stop_a_robust_rule(agg, tmp_path):
    """One Byzantine worker whose messages overflow to inf (gaussian std 1e38) is dropped every
    round; the rule learns as without it (89 % on digits here). A substituted zero row would be
    Krum's choice whenever the honest gradients are noisier than their mean is long."""
    from main import train

    res = train({"agg": agg, "pre": "none", "num_workers": 10, "num_byzantine": 1,
                 "attack": "gaussian", "gaussian_std": 1e38, "partition": "iid", "momentum": 0.0,
                 "rounds": 60, "eval_every": 60, "progress": False}, output=str(tmp_path / agg))
    assert res.summary["final_test_accuracy"] > 80, res.summary
    import json
    recs = [json.loads(line) for line in open(tmp_path / agg / "metrics.jsonl")]
    assert all(r["faults"] == {"9": "nonfinite"} for r in recs)


@pytest.mark.parametrize("agg,pre", [("krum", "none"), ("cclip", "bucketing:2")])
def test_a_worker_whose_messages_are_all_unusable_is_as_if_absent(agg, pre, tmp_path):
    """n = 10 with one Byzantine worker sending inf every round ends with bit for bit the model
    of n = 9 honest workers and f = 0 (the honest workers hold the same shards: the Byzantine
    one draws from the whole training set), on non-iid data with momentum."""
    from main import train

    common = {"agg": agg, "pre": pre, "partition": "noniid", "momentum": 0.9, "rounds": 30,
              "eval_every": 30, "progress": False}
    hostile = train({**common, "num_workers": 10, "num_byzantine": 1, "attack": "gaussian",
                     "gaussian_std": 1e38}, output=str(tmp_path / "hostile"))
    absent = train({**common, "num_workers": 9, "num_byzantine": 0, "attack": "none"},
                   output=str(tmp_path / "absent"))
    assert torch.equal(hostile.params, absent.params)
