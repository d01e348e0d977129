"""Tests for common.bitpack: 1-bit signs and 2-bit ternary votes on the wire."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.coding import bitpack
from common.coding.bitpack import (
    pack,
    pack_signs,
    pack_ternary,
    packed_nbytes,
    sum_votes,
    unpack,
    unpack_signs,
    unpack_ternary,
)

shapes = st.tuples(st.integers(0, 4), st.integers(1, 70))  # (k, d); k = 0 means a single vector


def _draw(shape, values, seed):
    k, d = shape
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (k, d) if k else (d,), generator=gen)
    return torch.tensor(values, dtype=torch.float32)[idx]


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_sign_round_trip(shape, seed):
    v = _draw(shape, [-1.0, 1.0], seed)
    d = shape[1]
    buf = pack_signs(v)
    assert buf.dtype == np.uint8
    assert buf.shape == v.shape[:-1] + (packed_nbytes(d, 1),)
    out = unpack_signs(buf, d)
    assert out.dtype == torch.float32 and torch.equal(out, v)
    assert torch.equal(unpack(pack(v, 1), d, 1), v)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1))
def test_ternary_round_trip(shape, seed):
    v = _draw(shape, [-1.0, 0.0, 1.0], seed)
    d = shape[1]
    buf = pack_ternary(v)
    assert buf.shape == v.shape[:-1] + (packed_nbytes(d, 2),)
    out = unpack_ternary(buf, d)
    assert out.dtype == torch.float32 and torch.equal(out, v)
    assert torch.equal(unpack(pack(v, 2), d, 2), v)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 9), d=st.integers(1, 70), bits=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1))
def test_sum_votes_equals_plain_sum(n, d, bits, seed):
    v = _draw((n, d), [-1.0, 1.0] if bits == 1 else [-1.0, 0.0, 1.0], seed)
    packed = pack(v, bits)
    assert torch.equal(sum_votes(packed, d, bits), v.sum(0))
    # the server may also stack per-worker buffers itself
    stacked = np.stack([pack(row, bits) for row in v])
    assert torch.equal(sum_votes(stacked, d, bits), v.sum(0))


def test_sum_votes_chunked(monkeypatch):
    monkeypatch.setattr(bitpack, "_SUM_CHUNK_BYTES", 3)  # force several column blocks
    gen = torch.Generator().manual_seed(1)
    for bits, vals in [(1, [-1.0, 1.0]), (2, [-1.0, 0.0, 1.0])]:
        for d in (1, 23, 24, 25, 61):
            v = torch.tensor(vals)[torch.randint(len(vals), (5, d), generator=gen)]
            assert torch.equal(sum_votes(pack(v, bits), d, bits), v.sum(0))
    v = torch.ones(3)
    assert torch.equal(sum_votes(pack_signs(v), 3, 1), v)  # a 1-D buffer is one vote


def test_sizes_and_layout():
    for d in (1, 7, 8, 9, 16, 17, 1000):
        assert packed_nbytes(d, 1) == -(-d // 8)
        assert packed_nbytes(d, 2) == 2 * -(-d // 8)
        assert pack_signs(torch.ones(d)).nbytes == packed_nbytes(d, 1)
        assert pack_ternary(torch.zeros(d)).nbytes == packed_nbytes(d, 2)
    assert packed_nbytes(0, 1) == 0
    # +1 -> bit 1, big-endian within a byte, padding zero
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, -1.0, -1.0, 1.0])
    assert pack_signs(signs).tolist() == [0b10011000, 0b10000000]
    # ternary: nonzero plane then positive plane
    assert pack_ternary(torch.tensor([1.0, 0.0, -1.0])).tolist() == [0b10100000, 0b10000000]
    with pytest.raises(ValueError):
        packed_nbytes(10, 3)


def test_accepts_numpy_and_bytes():
    v = np.array([1, -1, 1, 1, -1, -1, 1, 1, -1, 1], dtype=np.int8)
    buf = pack_signs(v)
    assert torch.equal(unpack_signs(buf.tobytes(), 10), torch.from_numpy(v).float())
    assert torch.equal(unpack_signs(torch.from_numpy(buf), 10), torch.from_numpy(v).float())
    assert torch.equal(unpack_signs(buf.view(np.int8), 10), torch.from_numpy(v).float())


def test_wrong_buffers_raise_value_error():
    d = 20  # 3 bytes per sign vector, 6 per ternary vector
    for bad in (np.zeros(2, np.uint8), np.zeros(4, np.uint8), np.zeros((5, 4), np.uint8), b"\x00\x00"):
        with pytest.raises(ValueError, match="expected 3"):
            unpack_signs(bad, d)
        with pytest.raises(ValueError, match="expected 3"):
            sum_votes(bad, d, 1)
    for bad in (np.zeros(3, np.uint8), np.zeros((5, 7), np.uint8)):
        with pytest.raises(ValueError, match="expected 6"):
            unpack_ternary(bad, d)
        with pytest.raises(ValueError, match="expected 6"):
            sum_votes(bad, d, 2)
    with pytest.raises(ValueError, match="uint8"):
        unpack_signs(np.zeros(3, np.float32), d)
    with pytest.raises(ValueError):
        sum_votes(np.zeros((2, 2, 3), np.uint8), d, 1)
    # a sign bit on a zero coordinate is not a valid ternary vote
    buf = pack_ternary(torch.zeros(d))
    buf[3] = 0b01000000
    with pytest.raises(ValueError, match="malformed ternary"):
        unpack_ternary(buf, d)
    with pytest.raises(ValueError, match="malformed ternary"):
        sum_votes(np.stack([pack_ternary(torch.ones(d)), buf]), d, 2)


def test_pack_rejects_values_outside_the_alphabet():
    with pytest.raises(ValueError, match="-1 or \\+1"):
        pack_signs(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError):
        pack_ternary(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        pack_ternary(torch.tensor([float("nan")]))
    assert pack_signs(torch.tensor([0.5, -3.0, 0.0]), check=False).tolist() == [0b10000000]
