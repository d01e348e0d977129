"""Sign and ternary votes on the wire, bit-packed with numpy.

* Binary signs (1 bit per coordinate): +1 -> bit 1, -1 -> bit 0; ``ceil(d/8)`` bytes per vector.
* Ternary votes in {-1, 0, 1} (2 bits per coordinate): two bit-planes, each ``ceil(d/8)`` bytes,
  concatenated: first the nonzero mask (v != 0), then the positive mask (v > 0); a vector takes
  ``2 * ceil(d/8)`` bytes. Decoding gives ``2 * positive - nonzero``; a positive bit without its
  nonzero bit is an invalid encoding and raises ``ValueError``.

Bits are in numpy's default big-endian bit order (``np.packbits``); padding bits of the last byte
are written as 0 and ignored on reading. Every function works on one vector (shape (d,) /
(nbytes,)) or a stack of k vectors (shape (k, d) / (k, nbytes)); the server unpacks an
(n, nbytes) stack at once (:func:`sum_votes`). A buffer of the wrong length raises ``ValueError``
with a clear message, so the server can treat the sender as faulty.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "packed_nbytes",
    "pack_signs",
    "unpack_signs",
    "pack_ternary",
    "unpack_ternary",
    "pack",
    "unpack",
    "sum_votes",
]

# coordinates unpacked at a time by sum_votes (bounds its temporary memory to ~ n * this bytes)
_SUM_CHUNK_BYTES = 1 << 17


def packed_nbytes(d: int, bits: int) -> int:
    """Bytes of one packed vector of d coordinates: ``ceil(d/8)`` (bits=1) or ``2*ceil(d/8)``."""
    if bits not in (1, 2):
        raise ValueError(f"bits must be 1 (signs) or 2 (ternary), got {bits!r}")
    if int(d) != d or d < 0:
        raise ValueError(f"d must be a non-negative integer, got {d!r}")
    return bits * ((int(d) + 7) // 8)


def _as_array(v) -> np.ndarray:
    if torch.is_tensor(v):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _valid(a: np.ndarray, allow_zero: bool) -> bool:
    """All entries in {-1, +1} (or {-1, 0, 1}); checked in blocks to keep temporaries small."""
    flat = a.reshape(-1)
    step = 1 << 20
    for i in range(0, flat.size, step):
        c = flat[i : i + step]
        ok = (c == 1) | (c == -1)
        if allow_zero:
            ok |= c == 0
        if not ok.all():
            return False
    return True


def pack_signs(v, check: bool = True) -> np.ndarray:
    """Pack a (..., d) tensor of signs in {-1, +1} into (..., ceil(d/8)) uint8, 1 bit each.

    With ``check`` (default) any value other than -1/+1 raises ValueError (a 0 cannot be sent in
    one bit: use :func:`pack_ternary`); without it, positive -> 1 and everything else -> 0.
    """
    a = _as_array(v)
    if a.ndim == 0:
        raise ValueError("pack_signs needs a vector or a stack of vectors, got a scalar")
    if check and not _valid(a, allow_zero=False):
        raise ValueError("pack_signs: values must be -1 or +1 (use pack_ternary for {-1, 0, 1})")
    return np.packbits(a > 0, axis=-1)


def pack_ternary(v, check: bool = True) -> np.ndarray:
    """Pack a (..., d) tensor in {-1, 0, 1} into (..., 2*ceil(d/8)) uint8: the nonzero bit-plane
    followed by the positive bit-plane. ``check`` rejects values outside {-1, 0, 1}."""
    a = _as_array(v)
    if a.ndim == 0:
        raise ValueError("pack_ternary needs a vector or a stack of vectors, got a scalar")
    if check and not _valid(a, allow_zero=True):
        raise ValueError("pack_ternary: values must be -1, 0 or +1")
    return np.concatenate([np.packbits(a != 0, axis=-1), np.packbits(a > 0, axis=-1)], axis=-1)


def _as_buffer(buf, d: int, bits: int, min_ndim: int = 1) -> np.ndarray:
    """Validate a packed buffer (ndarray of bytes, bytes-like, or tensor) and return it as uint8."""
    if isinstance(buf, (bytes, bytearray, memoryview)):
        arr = np.frombuffer(buf, dtype=np.uint8)
    else:
        arr = _as_array(buf)
        if arr.dtype != np.uint8:
            if arr.dtype.itemsize != 1 or arr.dtype.kind not in "iub":
                raise ValueError(f"packed votes must be a uint8 buffer, got dtype {arr.dtype}")
            arr = arr.view(np.uint8)
    expected = packed_nbytes(d, bits)
    if arr.ndim < min_ndim or arr.ndim == 0:
        raise ValueError(f"packed votes must be at least {max(min_ndim, 1)}-D, got shape {arr.shape}")
    if arr.shape[-1] != expected:
        what = "sign" if bits == 1 else "ternary"
        raise ValueError(
            f"malformed {what} vote buffer: {arr.shape[-1]} bytes per vector, expected {expected} "
            f"for d={d} at {bits} bit(s) per coordinate"
        )
    return arr


def unpack_signs(buf, d: int) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: (..., ceil(d/8)) bytes -> (..., d) float32 in {-1, +1}."""
    arr = _as_buffer(buf, d, 1)
    bits = np.unpackbits(arr, axis=-1, count=d)
    out = torch.from_numpy(bits).to(torch.float32)
    return out.mul_(2).sub_(1)


def _planes(arr: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    nb = arr.shape[-1] // 2
    nz = np.unpackbits(arr[..., :nb], axis=-1, count=d)
    pos = np.unpackbits(arr[..., nb:], axis=-1, count=d)
    if np.any(pos > nz):
        raise ValueError("malformed ternary vote buffer: a sign bit is set on a zero coordinate")
    return nz, pos


def unpack_ternary(buf, d: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: (..., 2*ceil(d/8)) bytes -> (..., d) float32 in {-1,0,1}."""
    arr = _as_buffer(buf, d, 2)
    nz, pos = _planes(arr, d)
    out = torch.from_numpy(pos).to(torch.float32).mul_(2)
    return out.sub_(torch.from_numpy(nz).to(torch.float32))


def pack(v, bits: int) -> np.ndarray:
    """:func:`pack_signs` (bits=1) or :func:`pack_ternary` (bits=2)."""
    packed_nbytes(0, bits)
    return pack_signs(v) if bits == 1 else pack_ternary(v)


def unpack(buf, d: int, bits: int) -> torch.Tensor:
    """:func:`unpack_signs` (bits=1) or :func:`unpack_ternary` (bits=2)."""
    packed_nbytes(d, bits)
    return unpack_signs(buf, d) if bits == 1 else unpack_ternary(buf, d)


def sum_votes(packed, d: int, bits: int) -> torch.Tensor:
    """Sum of the n packed votes in an (n, nbytes) stack, as a float32 tensor of length d.

    Equals ``unpack(packed, d, bits).sum(0)`` but unpacks at most a block of columns of all n rows
    at a time and counts bits in integers (exact for any n). A 1-D buffer is one vote.
    """
    arr = _as_buffer(packed, d, bits)
    if arr.ndim == 1:
        arr = arr[None, :]
    elif arr.ndim != 2:
        raise ValueError(f"sum_votes needs an (n, nbytes) stack, got shape {arr.shape}")
    n = arr.shape[0]
    nb = (d + 7) // 8
    out = np.empty(d, dtype=np.int64)
    for b0 in range(0, nb, _SUM_CHUNK_BYTES):
        b1 = min(nb, b0 + _SUM_CHUNK_BYTES)
        c0, c1 = 8 * b0, min(d, 8 * b1)
        if bits == 1:
            ones = np.unpackbits(arr[:, b0:b1], axis=1, count=c1 - c0).sum(axis=0, dtype=np.int64)
            out[c0:c1] = 2 * ones - n
        else:
            nz, pos = _planes(np.concatenate([arr[:, b0:b1], arr[:, nb + b0 : nb + b1]], axis=1), c1 - c0)
            out[c0:c1] = 2 * pos.sum(axis=0, dtype=np.int64) - nz.sum(axis=0, dtype=np.int64)
    return torch.from_numpy(out.astype(np.float32))
