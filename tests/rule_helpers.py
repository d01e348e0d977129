"""Helpers of the rule tests: small tensors, closeness, seeded random stacks, the sorting-network
switch."""
from __future__ import annotations

import contextlib

import torch
from hypothesis import settings

from common.aggregation import sortnet

SETTINGS = settings(max_examples=30, deadline=None)


def T(rows, dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype)


def close(a, b, tol=1e-9):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=tol)


@contextlib.contextmanager
def network_path(on: bool):
    """Force (on=True) or forbid (on=False) the sorting-network path of cm/trmean."""
    old = sortnet.MIN_D
    sortnet.MIN_D = 1 if on else 10**12
    try:
        yield
    finally:
        sortnet.MIN_D = old


def randn(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype)


def noise_free(name: str) -> dict:
    """The parameters that switch off a rule's deliberate noise (FLAME's), for tests that
    expect an exact value; the noise itself is tested in test_rules_extra.py."""
    return {"lam": 0.0} if name == "flame" else {}
