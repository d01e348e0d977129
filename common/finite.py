"""Fast finiteness checks for big tensors.

``torch.isfinite(x).all()`` runs several elementwise kernels with boolean temporaries: measured
0.37 ms on a 2e5-vector where ``x.sum()`` takes 0.02 ms. A finite sum proves every entry finite
(NaN and +-Inf propagate through a sum), so the elementwise check only runs when the sum is not
finite, which also covers huge finite entries whose sum overflows.
"""
from __future__ import annotations

import torch
from torch import Tensor


def all_finite(x: Tensor) -> bool:
    """True iff every entry of x is finite (an empty tensor is finite)."""
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def finite_rows(x: Tensor) -> Tensor:
    """Boolean mask over the rows of a 2-D tensor: True where the whole row is finite."""
    ok = torch.isfinite(x.sum(dim=1))
    if not bool(ok.all()):
        bad = torch.nonzero(~ok).flatten()
        ok[bad] = torch.isfinite(x.index_select(0, bad)).all(dim=1)
    return ok
