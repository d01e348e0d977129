"""Attack info and attack state as raw numbers on the wire (no pickle).

The info an attack reports each round (scalars only) travels as :data:`INFO_BYTES` of ASCII
(``key=i:3;key=f:0.5``); its state (mimic's direction, ...) as float64 numbers. Rank 0 decodes
what an untrusted rank sent with strict parsers: anything malformed is a ``ValueError`` (state)
or None (info), never an exception from deep inside.
"""
from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from common.wire.commands import INFO_BYTES

__all__ = ["encode_info", "decode_info", "encode_state", "decode_state"]

_KEY = r"[A-Za-z_][A-Za-z0-9_]{0,31}"
_INFO_ITEM = re.compile(rf"({_KEY})=(?:i:(-?\d{{1,19}})|b:([01])|"
                        r"f:([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan)))")


def encode_info(info: dict) -> np.ndarray:
    """The attack's per-round info (scalars only) as INFO_BYTES of ASCII; other values are dropped."""
    items = []
    for k, v in info.items():
        if not re.fullmatch(_KEY, str(k)):
            continue
        if isinstance(v, bool):
            items.append(f"{k}=b:{int(v)}")
        elif isinstance(v, (int, np.integer)):
            items.append(f"{k}=i:{int(v)}")
        elif isinstance(v, (float, np.floating)):
            items.append(f"{k}=f:{float(v)!r}")
    out = np.zeros(INFO_BYTES, np.uint8)
    text = b""
    for item in items:
        if len(text) + len(item) + 1 > INFO_BYTES:
            break
        text += (b";" if text else b"") + item.encode()
    out[:len(text)] = np.frombuffer(text, np.uint8)
    return out


def decode_info(buf: np.ndarray) -> dict | None:
    """Inverse of :func:`encode_info`; None if the bytes are not a well-formed info string."""
    raw = bytes(buf).split(b"\0", 1)[0]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    out: dict[str, Any] = {}
    for item in filter(None, text.split(";")):
        m = _INFO_ITEM.fullmatch(item)
        if m is None:
            return None
        key, i, b, f = m.groups()
        out[key] = int(i) if i is not None else bool(int(b)) if b is not None else float(f)
    return out


# Value tags of the state encoding.
_NONE, _INT, _FLOAT, _BOOL, _FTENSOR, _ITENSOR = range(6)
MAX_NDIM = 4


def encode_state(state: dict) -> np.ndarray:
    """A flat attack state {key: None | bool | int | float | tensor} as float64 numbers, keys in
    sorted order: per key ``tag [value | ndim shape... values...]``. Integers and float32 tensors
    are exact in float64."""
    out: list[np.ndarray] = []
    for key in sorted(state):
        v = state[key]
        if v is None:
            out.append(np.array([_NONE], np.float64))
        elif isinstance(v, bool):
            out.append(np.array([_BOOL, float(v)]))
        elif isinstance(v, (int, np.integer)):
            out.append(np.array([_INT, float(v)]))
        elif isinstance(v, (float, np.floating)):
            out.append(np.array([_FLOAT, float(v)]))
        elif isinstance(v, torch.Tensor):
            if v.dim() > MAX_NDIM:
                raise ValueError(f"attack state '{key}': at most {MAX_NDIM} dimensions")
            kind = _FTENSOR if v.is_floating_point() else _ITENSOR
            arr = v.detach().cpu().to(torch.float64).reshape(-1).numpy()
            out.append(np.concatenate([[kind, v.dim()], list(v.shape), arr]).astype(np.float64))
        else:
            raise ValueError(f"attack state '{key}' of type {type(v).__name__} cannot be sent")
    return np.concatenate(out) if out else np.zeros(0)


def decode_state(arr: np.ndarray, keys: list[str]) -> dict:
    """Inverse of :func:`encode_state` for the known ``keys``; ValueError on anything malformed
    (wrong tag, non-integral count, lengths that overrun the buffer, trailing numbers)."""
    arr = np.asarray(arr, np.float64)
    pos = 0

    def take(m: int) -> np.ndarray:
        nonlocal pos
        if m < 0 or pos + m > len(arr):
            raise ValueError("attack state overruns its buffer")
        pos += m
        return arr[pos - m:pos]

    def integer(x: float) -> int:
        if not math.isfinite(x) or x != int(x) or abs(x) > 2**53:
            raise ValueError(f"attack state holds {x} where an integer belongs")
        return int(x)

    out: dict[str, Any] = {}
    for key in sorted(keys):
        kind = integer(take(1)[0])
        if kind == _NONE:
            out[key] = None
        elif kind == _INT:
            out[key] = integer(take(1)[0])
        elif kind == _BOOL:
            out[key] = bool(integer(take(1)[0]))
        elif kind == _FLOAT:
            out[key] = float(take(1)[0])
        elif kind in (_FTENSOR, _ITENSOR):
            ndim = integer(take(1)[0])
            if not 0 <= ndim <= MAX_NDIM:
                raise ValueError(f"attack state '{key}': {ndim} dimensions")
            shape = [integer(s) for s in take(ndim)]
            # Every dimension fits in the buffer, and the count is an exact Python integer: an
            # int64 product of hostile dimensions can wrap around and pass the length check.
            if any(s < 0 or s > len(arr) for s in shape):
                raise ValueError(f"attack state '{key}': shape {shape} does not fit its buffer")
            vals = take(math.prod(shape))
            t = torch.from_numpy(vals.copy()).reshape(shape)
            out[key] = t.to(torch.float32) if kind == _FTENSOR else t.to(torch.int64)
        else:
            raise ValueError(f"attack state '{key}': unknown value tag {kind}")
    if pos != len(arr):
        raise ValueError(f"attack state has {len(arr) - pos} trailing numbers")
    return out
