"""Fault injection for the tests (``--inject-fault KIND:RANKS``): what a faulty worker rank sends
instead of its messages. Rank 0 never trusts a worker; these make the fault matrix of
tests/test_faults.py real."""
from __future__ import annotations

import numpy as np

from common.wire.commands import DRAIN_BYTES, NUM_KINDS, TAG_MAX, TAG_PERIOD, tag

__all__ = ["corrupt", "flood", "stall_seconds", "FLOOD_MESSAGES"]


#: ``wrongsize``: seconds between the short message and the round's trailer.
WRONGSIZE_TRAILER_DELAY = 0.05


def corrupt(kind: str | None, payload: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a faulty rank sends instead of the float32 ``payload`` (``--inject-fault``)."""
    if kind == "wrongsize":
        return payload.reshape(-1)[:-1]          # one float short
    if kind == "wrongdtype":
        return payload.astype(np.float64)        # twice the bytes: a truncation at rank 0
    if kind in ("nan", "inf", "huge"):
        return np.full_like(payload, {"nan": np.nan, "inf": np.inf, "huge": 1e30}[kind])
    if kind == "randombytes":
        return rng.integers(0, 256, payload.nbytes, dtype=np.uint8)
    return payload


# ``flood``: besides its real message, every round the rank sends one message larger than rank
# 0's 1 MiB drain scratch (common.wire.commands.DRAIN_BYTES), then FLOOD_MESSAGES small ones of
# 0..FLOOD_SMALL_BYTES random bytes, all with tags no receive of rank 0 wants.
FLOOD_MESSAGES = 500
FLOOD_SMALL_BYTES = 64
FLOOD_BIG_BYTES = DRAIN_BYTES + 4096


def flood(seq: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """The stray messages of a ``flood`` rank in command ``seq``: (buffer, tag) pairs. Tags
    alternate between the previous command's (stale: already received or given up) and tags
    above the protocol's range (``tag`` never exceeds TAG_PERIOD * NUM_KINDS - 1)."""
    out = [(np.zeros(FLOOD_BIG_BYTES, np.uint8), TAG_MAX)]
    unused = TAG_MAX - TAG_PERIOD * NUM_KINDS + 1
    for i in range(FLOOD_MESSAGES):
        tg = (tag(seq - 1, i % NUM_KINDS) if i % 2 and seq > 1
              else TAG_PERIOD * NUM_KINDS + i % unused)
        out.append((rng.integers(0, 256, int(rng.integers(0, FLOOD_SMALL_BYTES + 1)),
                                 dtype=np.uint8), tg))
    return out


def stall_seconds(cfg) -> float:
    """How long a ``stall`` rank sleeps before answering: twice the timeout, and at least 1.5 s
    past it, so a rank 0 starved of CPU for a moment still cannot mistake it for punctual
    (1 s without a timeout)."""
    t = cfg.round_timeout
    return t + max(t, 1.5) if t > 0 else 1.0
