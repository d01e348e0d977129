"""Fuzzing what the server decodes from workers: packed sign/ternary votes (common.bitpack) and
DiverseFL's shared samples (master.diversefl.check_sample).

Contract: random bytes of any length and any buffer type either decode to votes of the right
shape with values in {-1, +1} / {-1, 0, +1}, or raise ``ValueError`` (the documented error, which
the server turns into a fault for that worker); nothing else is raised and nothing non-finite is
produced.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.coding import bitpack as bp
from common.wire import codecs, formats, samples

SETTINGS = settings(max_examples=60, deadline=None)


def as_type(raw: bytes, kind: str, rows: int):
    if kind == "bytes":
        return raw
    if kind == "bytearray":
        return bytearray(raw)
    if kind == "memoryview":
        return memoryview(raw)
    arr = np.frombuffer(raw, dtype=np.uint8).copy()
    if kind == "int8":
        arr = arr.view(np.int8)
    if kind == "stack" and rows and len(raw) % rows == 0:
        arr = arr.reshape(rows, -1)
    if kind == "tensor":
        return torch.from_numpy(arr)
    return arr


@SETTINGS
@given(raw=st.binary(min_size=0, max_size=64), d=st.integers(0, 200), bits=st.sampled_from([1, 2]),
       kind=st.sampled_from(["bytes", "bytearray", "memoryview", "uint8", "int8", "stack",
                             "tensor"]),
       rows=st.integers(1, 4))
def test_unpack_random_bytes(raw, d, bits, kind, rows):
    buf = as_type(raw, kind, rows)
    try:
        out = bp.unpack(buf, d, bits)
    except ValueError:
        # only a length mismatch or (ternary) a sign bit on a zero coordinate
        nbytes = bp.packed_nbytes(d, bits)
        width = np.asarray(np.frombuffer(bytes(raw), np.uint8)).size
        if kind == "stack" and len(raw) % rows == 0:
            width //= rows
        if width == nbytes:
            assert bits == 2
        return
    assert out.dtype == torch.float32 and out.shape[-1] == d
    allowed = {-1.0, 1.0} if bits == 1 else {-1.0, 0.0, 1.0}
    assert set(out.flatten().tolist()) <= allowed
    assert bool(torch.isfinite(out).all())


@SETTINGS
@given(n=st.integers(1, 9), d=st.integers(1, 70), bits=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1), extra=st.integers(-2, 2))
def test_sum_votes_random_stack(n, d, bits, seed, extra):
    rng = np.random.default_rng(seed)
    width = bp.packed_nbytes(d, bits) + extra
    if width < 0:
        width = 0
    stack = rng.integers(0, 256, size=(n, width), dtype=np.uint8)
    try:
        total = bp.sum_votes(stack, d, bits)
    except ValueError:
        assert extra != 0 or bits == 2
        return
    assert extra == 0
    assert total.shape == (d,) and total.dtype == torch.float32
    # exact: equals the sum of the individually unpacked votes, bounded by n
    assert torch.equal(total, bp.unpack(stack, d, bits).sum(0))
    assert float(total.abs().max()) <= n


@SETTINGS
@given(n=st.integers(1, 9), d=st.integers(1, 70), seed=st.integers(0, 2**31 - 1))
def test_sum_votes_valid_ternary_stack_roundtrip(n, d, seed):
    rng = np.random.default_rng(seed)
    votes = rng.integers(-1, 2, size=(n, d)).astype(np.float32)
    packed = bp.pack_ternary(votes)
    assert torch.equal(bp.sum_votes(packed, d, 2), torch.from_numpy(votes.sum(0)))
    signs = np.where(votes >= 0, 1.0, -1.0).astype(np.float32)
    assert torch.equal(bp.sum_votes(bp.pack_signs(signs), d, 1), torch.from_numpy(signs.sum(0)))


@pytest.mark.parametrize("buf", [
    np.zeros(3, dtype=np.float32),          # wrong dtype
    np.zeros(2, dtype=np.int16),            # wrong item size
    np.uint8(7),                            # a scalar
    np.zeros((2, 2, 2), dtype=np.uint8),    # a 3-D stack: sum_votes wants (n, nbytes)
])
def test_sum_votes_rejects_wrong_buffers(buf):
    with pytest.raises(ValueError):
        bp.sum_votes(buf, 16, 1)


def test_padding_bits_are_ignored():
    # d = 3 uses the top 3 bits of one byte; a hostile sender setting the 5 padding bits
    # changes nothing
    assert torch.equal(bp.unpack_signs(bytes([0b10111111]), 3), torch.tensor([1.0, -1.0, 1.0]))
    # ternary: nonzero plane 0b11000000, positive plane 0b10000000 -> [+1, -1, 0]
    assert torch.equal(bp.unpack_ternary(bytes([0b11011111, 0b10000101]), 3),
                       torch.tensor([1.0, -1.0, 0.0]))


def test_ternary_sign_bit_without_nonzero_bit_is_rejected():
    with pytest.raises(ValueError, match="sign bit is set on a zero coordinate"):
        bp.unpack_ternary(bytes([0b00000000, 0b10000000]), 1)


# ------------------------------------------------------------------------------------------
# DiverseFL's shared samples: the only non-gradient payload a client sends the server
# ------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float64, torch.int64, torch.uint8, torch.float16]


@SETTINGS
@given(count=st.integers(0, 4), got=st.integers(0, 5), xdt=st.sampled_from(DTYPES),
       ydt=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1),
       poison=st.sampled_from([None, "nan", "inf", "label_hi", "label_lo", "shape"]))
def test_check_sample_never_raises_and_accepts_only_clean(count, got, xdt, ydt, seed, poison):
    g = torch.Generator().manual_seed(seed)
    shape = (1, 8, 8)
    xs = (got, *shape) if poison != "shape" else (got, 64)
    x = (torch.randn(xs, generator=g) * 3).to(xdt)
    y = torch.randint(0, 10, (got,), generator=g).to(ydt)
    if got and poison == "nan" and x.is_floating_point():
        x.view(-1)[0] = float("nan")
    if got and poison == "inf" and x.is_floating_point():
        x.view(-1)[-1] = float("inf")
    if got and poison == "label_hi":
        y[0] = 10
    if got and poison == "label_lo" and ydt != torch.uint8:
        y[-1] = -1
    why = samples.check_sample(x, y, count, shape, 10)
    clean = (xdt == torch.float32 and ydt == torch.int64 and got == count
             and (poison is None or (poison != "shape" and not got)))
    if clean:
        assert why is None
    else:
        assert isinstance(why, str) and why


# ------------------------------------------------------------------------------------------
# the election-coded signSGD master's vote stack (common/wire/formats.py VoteWire.tally)
# ------------------------------------------------------------------------------------------

@SETTINGS
@given(n=st.integers(1, 7), d=st.integers(1, 40), seed=st.integers(0, 2**31 - 1),
       data=st.data())
def test_vote_tally_random_stack(n, d, seed, data):
    rng = np.random.default_rng(seed)
    weights = data.draw(st.lists(st.integers(1, n), min_size=n, max_size=n))
    G = np.zeros((n, n), dtype=np.int64)
    for j, w in enumerate(weights):
        G[j, rng.choice(n, size=w, replace=False)] = 1
    wire = formats.VoteWire(G, d)
    stack = rng.integers(0, 256, size=(n, wire.width), dtype=np.uint8)
    # the last byte says "present"; make it 1 for a random subset (anything else is absent)
    stack[:, -1] = np.where(rng.random(n) < 0.7, 1, stack[:, -1])
    total, info = wire.tally(torch.from_numpy(stack))
    present = stack[:, -1] == 1
    assert info.get("abstained", []) == np.flatnonzero(~present).tolist()
    invalid = info.get("invalid", [])
    assert set(invalid) <= set(np.flatnonzero(present & (wire.bits == 2)).tolist())
    counted = [j for j in range(n) if present[j] and j not in invalid]
    # exact: the sum of the individually decoded votes of the counted rows
    expected = torch.zeros(d)
    for j in counted:
        expected += bp.unpack(stack[j, :wire.nbytes[j]], d, int(wire.bits[j]))
    assert torch.equal(total, expected)
    assert bool(torch.isfinite(total).all()) and float(total.abs().max()) <= len(counted)


def test_vote_tally_rejects_a_stack_of_the_wrong_shape():
    wire = formats.VoteWire(np.eye(3, dtype=np.int64), 10)
    for bad in (torch.zeros(3, wire.width + 1, dtype=torch.uint8),
                torch.zeros(2, wire.width, dtype=torch.uint8),
                torch.zeros(3, wire.width, dtype=torch.float32)):
        with pytest.raises(ValueError, match="vote stack must be uint8"):
            wire.tally(bad)


# ------------------------------------------------------------------------------------------
# the MPI protocol's numeric codecs for attack info and attack state (common/wire/codecs.py):
# rank 0 decodes what worker ranks send for metrics.jsonl and checkpoints
# ------------------------------------------------------------------------------------------

@SETTINGS
@given(raw=st.binary(min_size=0, max_size=80))
def test_decode_info_random_bytes(raw):
    mw = codecs
    out = mw.decode_info(np.frombuffer(raw, np.uint8))
    assert out is None or (isinstance(out, dict) and all(
        isinstance(v, (int, float, bool)) for v in out.values()))


@SETTINGS
@given(info=st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                            st.one_of(st.booleans(), st.integers(-10**12, 10**12),
                                      st.floats(allow_nan=False, width=64)), max_size=4))
def test_info_roundtrip(info):
    mw = codecs
    assert mw.decode_info(mw.encode_info(info)) == info


state_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
    st.lists(st.integers(0, 3), min_size=0, max_size=3).map(
        lambda shape: torch.arange(int(np.prod(shape, dtype=np.int64)), dtype=torch.float32)
        .reshape(shape)),
    st.lists(st.integers(-5, 5), max_size=6).map(lambda v: torch.tensor(v, dtype=torch.int64)),
)


@SETTINGS
@given(state=st.dictionaries(st.sampled_from(["a", "b", "dir", "count", "m"]), state_values,
                             max_size=4),
       data=st.data())
def test_decode_state_roundtrip_and_mutations(state, data):
    mw = codecs
    keys = list(state)
    enc = mw.encode_state(state)
    back = mw.decode_state(enc, keys)
    assert set(back) == set(state)
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(back[k], v)
        else:
            assert back[k] == v and type(back[k]) is type(v)
    # a hostile rank changes one number, truncates or extends the buffer: a dict or ValueError
    mutated = enc.copy()
    if len(mutated):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.sampled_from([np.nan, np.inf, -1.0, 0.5, 7.0, 2.0**31,
                                                2.0**53, 1e300, 4.0]))
    cut = data.draw(st.integers(-2, 2))
    mutated = mutated[:len(mutated) + cut] if cut < 0 else np.concatenate(
        [mutated, np.full(cut, 3.0)])
    try:
        mw.decode_state(mutated, keys)
    except ValueError:
        pass


@SETTINGS
@given(raw=st.binary(min_size=0, max_size=96), nkeys=st.integers(0, 3))
def test_decode_state_random_numbers(raw, nkeys):
    mw = codecs
    arr = np.frombuffer(raw[:len(raw) // 8 * 8], np.float64)
    try:
        out = mw.decode_state(arr, ["k0", "k1", "k2"][:nkeys])
    except ValueError:
        return
    assert set(out) == {"k0", "k1", "k2"}.intersection(["k0", "k1", "k2"][:nkeys])


@pytest.mark.parametrize("arr", [
    [4, 2, 2**32, 2**32],          # 2^64 elements: an int64 product wraps to 0
    [4, 3, 2**31, 2**31, 4],
    [5, 4, 2**21, 2**21, 2**21, 2**21],
    [4, 2, 2**52, 0],
])
def test_decode_state_hostile_shapes_are_value_errors(arr):
    mw = codecs
    with pytest.raises(ValueError):
        mw.decode_state(np.array(arr, np.float64), ["x"])
