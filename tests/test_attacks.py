"""Hand-computed checks for every attack in common/attacks.py."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.attacks import (
    ALIE_P_EPS,
    ATTACKS,
    AttackInput,
    Defense,
    alie_z,
    attack_names,
    make_attack,
)
from common.errors import ConfigError


def gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def bound(name, n=5, f=2, num_classes=10, **params):
    """The attack, told the server runs the mean (attacks that aim at the defense need it)."""
    a = make_attack(name, n, f, num_classes, **params)
    a.bind(Defense("none", "mean", f))
    return a


def inp(own, honest=None, n=5, rnd=0, seed=0):
    return AttackInput(own=own, honest=honest, n=n, round=rnd, generator=gen(seed))


OWN = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, -4.0]])
HONEST3 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0], [5.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------- registry


def test_registry_names():
    expected = {"none", "bitflip", "signflip", "labelflip", "gaussian", "nm", "alie", "ipm",
                "mimic", "mimic2", "backdoor", "reverse", "directional", "random", "minmax",
                "minsum", "fang", "inf", "opt-alie", "opt-ipm"}
    assert set(attack_names()) == expected
    assert attack_names() == sorted(expected)
    for name, cls in ATTACKS.items():
        assert cls.name == name
        assert cls.__doc__ and len(cls.__doc__) > 20
    omni = {name for name, cls in ATTACKS.items() if cls.omniscient}
    assert omni == {"nm", "alie", "ipm", "mimic", "minmax", "minsum", "fang", "opt-alie",
                    "opt-ipm"}


def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError) as e:
        make_attack("bogus", 5, 1, 10)
    msg = str(e.value)
    assert "bogus" in msg
    for name in attack_names():
        assert name in msg


def test_unknown_param():
    with pytest.raises(ConfigError, match="foo"):
        make_attack("ipm", 5, 1, 10, foo=1)
    with pytest.raises(ConfigError, match="eps"):  # lists the valid ones
        make_attack("ipm", 5, 1, 10, foo=1)
    with pytest.raises(ConfigError):
        make_attack("bitflip", 5, 1, 10, scale=2)


def test_none_param_is_default():
    assert make_attack("ipm", 5, 1, 10, eps=None).eps == 0.1
    assert make_attack("gaussian", 5, 1, 10, std=None).std == 200.0
    assert make_attack("mimic", 5, 1, 10, warmup=None).warmup == 1
    assert make_attack("alie", 5, 1, 10, z=None).z is None


@pytest.mark.parametrize("name,params", [
    ("gaussian", {"std": -1}),
    ("gaussian", {"std": "abc"}),
    ("gaussian", {"std": float("nan")}),
    ("ipm", {"eps": float("inf")}),
    ("alie", {"z": "x"}),
    ("mimic", {"warmup": 0}),
    ("mimic", {"warmup": 1.5}),
    ("mimic", {"power_steps": 0}),
    ("backdoor", {"source": 10}),
    ("backdoor", {"target": -1}),
    ("backdoor", {"scale": True}),
])
def test_bad_param_values(name, params):
    with pytest.raises(ConfigError):
        make_attack(name, 5, 1, 10, **params)


def test_bad_constructor_args():
    with pytest.raises(ConfigError):
        make_attack("none", 0, 0, 10)
    with pytest.raises(ConfigError):
        make_attack("none", 5, 6, 10)
    with pytest.raises(ConfigError):  # omniscient with no honest worker
        make_attack("alie", 3, 3, 10)
    with pytest.raises(ConfigError):  # default target 9 does not exist with 3 classes
        make_attack("backdoor", 5, 1, 3)
    make_attack("backdoor", 5, 1, 3, source=0, target=2)


def test_string_params_are_parsed():
    assert make_attack("ipm", 5, 1, 10, eps="0.5").eps == 0.5
    assert make_attack("mimic", 5, 1, 10, warmup="3").warmup == 3


# --------------------------------------------------------------------------------- simple


def test_none_returns_own():
    a = make_attack("none", 5, 1, 10)
    out = a.craft(inp(OWN))
    assert torch.equal(out, OWN)
    y = torch.tensor([0, 3, 9])
    assert torch.equal(a.poison_labels(y), y)


@pytest.mark.parametrize("name", ["bitflip", "signflip"])
def test_bitflip(name):
    out = make_attack(name, 5, 2, 10).craft(inp(OWN))
    assert torch.equal(out, torch.tensor([[-1.0, 2.0, 0.0], [-3.0, -0.5, 4.0]]))


def test_labelflip_c10_and_c3():
    a = make_attack("labelflip", 5, 1, 10)
    y = torch.arange(10)
    assert a.poison_labels(y).tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    assert a.poison_labels(y).dtype == torch.int64
    y2 = torch.tensor([[0, 1], [2, 2]])
    assert make_attack("labelflip", 5, 1, 3).poison_labels(y2).tolist() == [[2, 1], [0, 0]]
    assert torch.equal(a.craft(inp(OWN)), OWN)


def test_mimic2_is_honest():
    a = make_attack("mimic2", 5, 1, 10)
    assert not a.omniscient
    assert torch.equal(a.craft(inp(OWN)), OWN)
    assert "mimic2_layout" in type(a).__doc__


def test_backdoor_mapping_and_scale():
    a = make_attack("backdoor", 20, 5, 10)
    y = torch.tensor([4, 9, 4, 1, 0, 4])
    assert a.poison_labels(y).tolist() == [9, 9, 9, 1, 0, 9]
    assert y.tolist() == [4, 9, 4, 1, 0, 4]  # not in place
    assert torch.equal(a.craft(inp(OWN)), torch.tensor([[4.0, -8.0, 0.0], [12.0, 2.0, -16.0]]))
    b = make_attack("backdoor", 20, 5, 10, source=1, target=2, scale=0.5)
    assert b.poison_labels(torch.tensor([1, 2, 3])).tolist() == [2, 2, 3]
    assert torch.equal(b.craft(inp(OWN)), OWN * 0.5)


# ------------------------------------------------------------------------------- gaussian


def test_gaussian_std_and_reproducible():
    a = make_attack("gaussian", 5, 2, 10)
    own = torch.zeros(2, 100_000)
    out = a.craft(inp(own, seed=123))
    assert out.shape == (2, 100_000) and out.dtype == torch.float32
    assert abs(out.std().item() - 200.0) < 0.02 * 200.0
    assert abs(out.mean().item()) < 5.0  # 200/sqrt(2e5) ~ 0.45 standard error
    assert not torch.equal(out[0], out[1])  # independent rows
    again = a.craft(inp(own, seed=123))
    assert torch.equal(out, again)
    other = a.craft(inp(own, seed=124))
    assert not torch.equal(out, other)
    small = make_attack("gaussian", 5, 2, 10, std=1.5).craft(inp(torch.zeros(1, 50_000), seed=1))
    assert abs(small.std().item() - 1.5) < 0.03


# ------------------------------------------------------------------------------------- nm


def test_nm_known_norms():
    honest = torch.tensor([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    # unit rows: [0.6, 0.8], [0, 0] (zero norm adds nothing), [0, 1], [-1, 0]; sum [-0.4, 1.8]
    out = make_attack("nm", 7, 3, 10).craft(inp(torch.ones(3, 2), honest, n=7))
    expected = torch.tensor([[0.4, -1.8]] * 3)
    assert torch.allclose(out, expected, atol=1e-6)


# ----------------------------------------------------------------------------------- alie


def test_alie_z_formula():
    # n=5, f=1: s = floor(3.5) - 1 = 2, p = (5-1-2)/(5-1) = 0.5 -> z = 0
    assert alie_z(5, 1) == pytest.approx(0.0, abs=1e-12)
    # n=7, f=3: s = floor(4.5) - 3 = 1, p = (7-3-1)/(7-3) = 0.75 -> z = 0.6744897501960817
    assert alie_z(7, 3) == pytest.approx(0.6744897501960817, abs=1e-9)
    # n=25, f=5: s = floor(13.5) - 5 = 8, p = (25-5-8)/20 = 0.6 -> z = 0.2533471031357997
    assert alie_z(25, 5) == pytest.approx(0.2533471031357997, abs=1e-9)
    # n=20, f=4: s = 11 - 4 = 7, p = 9/16 = 0.5625 -> z = 0.1573106846101707
    assert alie_z(20, 4) == pytest.approx(0.1573106846101707, abs=1e-9)
    # clamps: n=5, f=3: s = 0, p = 2/2 = 1 -> 0.999 -> z = 3.090232306167813
    assert ALIE_P_EPS == 1e-3
    assert alie_z(5, 3) == pytest.approx(3.090232306167813, abs=1e-9)
    # n=2, f=1: s = 1, p = 0/1 = 0 -> 0.001 -> z = -3.090232306167813
    assert alie_z(2, 1) == pytest.approx(-3.090232306167813, abs=1e-9)


def test_alie_4x2_hand_values():
    honest = torch.tensor([[1.0, 0.0], [2.0, 2.0], [3.0, 4.0], [6.0, 2.0]])
    # mu = [3, 2]; deviations col0 -2,-1,0,3 -> var = 14/3; col1 -2,0,2,0 -> var = 8/3
    # n=7, f=3 -> z = Phi^-1(0.75) = 0.6744897501960817
    z = 0.6744897501960817
    a = make_attack("alie", 7, 3, 10)
    out = a.craft(inp(torch.zeros(3, 2), honest, n=7))
    e = [3 - z * math.sqrt(14 / 3), 2 - z * math.sqrt(8 / 3)]  # [1.54294..., 0.89855...]
    assert torch.allclose(out, torch.tensor([e] * 3), atol=1e-5)
    assert a.info["z"] == pytest.approx(z)
    json.dumps(a.info)
    # n=5, f=1 on the same rows: z = 0 -> the honest mean
    out = make_attack("alie", 5, 1, 10).craft(inp(torch.zeros(1, 2), honest, n=5))
    assert torch.allclose(out, torch.tensor([[3.0, 2.0]]), atol=1e-6)
    # override z = 1: [3 - sqrt(14/3), 2 - sqrt(8/3)] = [0.83975..., 0.36701...]
    out = make_attack("alie", 5, 1, 10, z=1.0).craft(inp(torch.zeros(2, 2), honest, n=5))
    assert torch.allclose(out, torch.tensor([[0.8397531, 0.3670068]] * 2), atol=1e-5)


def test_alie_single_honest_row():
    honest = torch.tensor([[2.0, -1.0]])
    out = make_attack("alie", 3, 2, 10, z=1.0).craft(inp(torch.zeros(2, 2), honest, n=3))
    assert torch.equal(out, torch.tensor([[2.0, -1.0], [2.0, -1.0]]))


# ------------------------------------------------------------------------------------ ipm


def test_ipm():
    honest = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mu = [2, 4]
    out = make_attack("ipm", 4, 2, 10).craft(inp(torch.zeros(2, 2), honest, n=4))
    assert torch.allclose(out, torch.tensor([[-0.2, -0.4]] * 2))
    out = make_attack("ipm", 4, 2, 10, eps=0.5).craft(inp(torch.zeros(2, 2), honest, n=4))
    assert torch.allclose(out, torch.tensor([[-1.0, -2.0]] * 2))


# ---------------------------------------------------------------------------------- mimic


@pytest.mark.parametrize("seed", range(5))
def test_mimic_target_obvious_direction(seed):
    # mean [0, 0]; the spread is all along e1, so z = +-e1; <x_i, z> is largest for row 0
    # (value 5) when z = +e1, and for row 2 (value 3) when z = -e1.
    honest = torch.tensor([[5.0, 0.1], [-1.0, -0.1], [-3.0, 0.1], [-1.0, -0.1]])
    a = make_attack("mimic", 6, 2, 10)
    out = a.craft(inp(torch.zeros(2, 2), honest, n=6, seed=seed))
    z = a.state_dict()["z"]
    assert abs(abs(z[0].item()) - 1) < 1e-3
    expected = 0 if z[0] > 0 else 2
    assert a.info == {"target": expected}
    assert torch.equal(out, honest[expected].repeat(2, 1))
    # after warmup the target index stays fixed although the messages change
    honest2 = honest.flip(0) * 3
    out2 = a.craft(inp(torch.zeros(2, 2), honest2, n=6, rnd=1, seed=seed))
    assert a.info == {"target": expected}
    assert torch.equal(out2, honest2[expected].repeat(2, 1))
    assert a.state_dict()["t"] == 2


def test_mimic_warmup_and_state_roundtrip():
    torch.manual_seed(0)
    rows = [torch.randn(5, 8) + torch.tensor([4.0] + [0.0] * 7) * torch.arange(5.0)[:, None]
            for _ in range(4)]
    a = make_attack("mimic", 8, 3, 10, warmup=2)
    g = gen(7)
    for r in range(2):
        a.craft(AttackInput(torch.zeros(3, 8), rows[r], 8, r, g))
        # during warmup the target is the argmax by the current z
        z = a.state_dict()["z"]
        assert a.info["target"] == int(torch.argmax(rows[r] @ z))
    sd = a.state_dict()
    assert sd["t"] == 2 and sd["target"] == a.info["target"]
    assert sd["z"].norm().item() == pytest.approx(1.0, abs=1e-5)
    # the top direction is e1 (rows spread along it), target is the row with largest x[0] shift
    assert abs(sd["z"][0].item()) > 0.9
    b = make_attack("mimic", 8, 3, 10, warmup=2)
    b.load_state_dict(sd)
    for r in range(2, 4):
        oa = a.craft(AttackInput(torch.zeros(3, 8), rows[r], 8, r, gen(1)))
        ob = b.craft(AttackInput(torch.zeros(3, 8), rows[r], 8, r, gen(2)))
        assert torch.equal(oa, ob)
        assert torch.equal(oa[0], rows[r][sd["target"]])
        assert a.info == b.info == {"target": sd["target"]}


def test_mimic_single_honest_and_identical_rows():
    a = make_attack("mimic", 3, 2, 10)
    honest = torch.tensor([[1.0, 2.0, 3.0]])
    out = a.craft(inp(torch.zeros(2, 3), honest, n=3))
    assert a.info == {"target": 0}
    assert torch.equal(out, honest.repeat(2, 1))
    b = make_attack("mimic", 5, 2, 10)
    same = torch.ones(3, 3)
    out = b.craft(inp(torch.zeros(2, 3), same, n=5))
    assert torch.isfinite(b.state_dict()["z"]).all()
    assert torch.equal(out, torch.ones(2, 3))


def test_mimic_updates_state_when_b_zero():
    a = make_attack("mimic", 5, 1, 10)
    out = a.craft(inp(torch.zeros(0, 3), HONEST3, n=5))
    assert out.shape == (0, 3)
    assert a.state_dict()["t"] == 1 and a.info["target"] in (0, 1, 2)


# ---------------------------------------------------------------------------- vote attacks


def test_vote_attacks():
    own = torch.tensor([[0.5, -2.0, 0.0], [-1.0, 3.0, 7.0]])
    assert torch.equal(make_attack("reverse", 5, 2, 10).craft(inp(own)),
                       torch.tensor([[-1.0, 1.0, 0.0], [1.0, -1.0, -1.0]]))
    assert torch.equal(make_attack("directional", 5, 2, 10).craft(inp(own)),
                       -torch.ones(2, 3))
    r = make_attack("random", 5, 2, 10)
    big = torch.zeros(3, 10_000)
    out = r.craft(inp(big, seed=5))
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    assert abs(out.mean().item()) < 0.05
    assert not torch.equal(out[0], out[1])
    assert torch.equal(out, r.craft(inp(big, seed=5)))


# ------------------------------------------------------------------------- shared contracts


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_b_zero(name):
    a = make_attack(name, 5, 1, 10)
    out = a.craft(inp(torch.zeros(0, 3), HONEST3.clone(), n=5))
    assert out.shape == (0, 3)
    # without honest messages too (a rank that hosts no Byzantine worker this round)
    out = make_attack(name, 5, 1, 10).craft(inp(torch.zeros(0, 3), None, n=5))
    assert out.shape == (0, 3)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_craft_into_given_rows_equals_a_fresh_craft(name):
    fresh = bound(name).craft(inp(OWN.clone(), HONEST3.clone(), seed=3))
    out = torch.full_like(OWN, 7.0)
    got = bound(name).craft(inp(OWN.clone(), HONEST3.clone(), seed=3), out)
    assert got is out and torch.equal(out, fresh)


def test_consecutive_rows_are_a_writable_block():
    from common.rows import row_block

    x = torch.arange(12.0).view(6, 2)
    assert torch.equal(row_block(x, torch.tensor([3, 4, 5])), x[3:6])
    row_block(x, torch.tensor([4, 5])).fill_(0)
    assert x[4:].eq(0).all() and x[:4].ne(0).any()
    for rows in ([], [1, 3], [4, 3]):
        assert row_block(x, torch.tensor(rows, dtype=torch.long)) is None


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_no_in_place_and_shape(name):
    a = bound(name)
    own, honest = OWN.clone(), HONEST3.clone()
    out = a.craft(inp(own, honest, n=5))
    assert out.shape == own.shape and out.dtype == own.dtype and out.device == own.device
    assert torch.equal(own, OWN) and torch.equal(honest, HONEST3)
    out.add_(1.0)  # the output is a fresh tensor, not a view of the inputs
    assert torch.equal(own, OWN) and torch.equal(honest, HONEST3)
    json.dumps(a.info)
    y = torch.tensor([4, 1])
    a.poison_labels(y)
    assert y.tolist() == [4, 1]


@pytest.mark.parametrize("name", ["nm", "alie", "ipm", "mimic", "minmax", "minsum", "fang",
                                  "opt-alie", "opt-ipm"])
def test_omniscient_need_honest(name):
    a = bound(name)
    with pytest.raises(ValueError, match="honest"):
        a.craft(inp(OWN, None, n=5))


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 4), h=st.integers(1, 5), d=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_colluding_rows_identical(b, h, d, seed):
    g = gen(seed)
    own = torch.randn(b, d, generator=g)
    honest = torch.randn(h, d, generator=g)
    for name in ("nm", "alie", "ipm", "mimic"):
        out = make_attack(name, b + h, b, 10).craft(inp(own, honest, n=b + h, seed=seed))
        assert out.shape == (b, d)
        assert torch.isfinite(out).all()
        assert torch.equal(out, out[:1].expand(b, d))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_cuda_device(name):
    own, honest = OWN.cuda(), HONEST3.cuda()
    out = make_attack(name, 5, 2, 10).craft(inp(own, honest, n=5))
    assert out.device == own.device
