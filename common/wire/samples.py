"""DiverseFL's start-up samples on the wire: a rank's clients' samples as two numeric buffers
(float32 inputs, int64 labels), and rank 0's checks of what arrived."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from common.finite import all_finite

__all__ = ["Sample", "check_sample", "pack_samples", "unpack_samples"]

Sample = tuple[Tensor, Tensor]  # (s, *input_shape) float32 inputs, (s,) int64 labels


def check_sample(x: Tensor, y: Tensor, count: int, input_shape: Sequence[int],
                 num_classes: int) -> str | None:
    """Why a received sample is unusable (wrong size, dtype, non-finite input, bad label), or None."""
    if x.dtype != torch.float32 or y.dtype != torch.int64:
        return f"dtypes {x.dtype}/{y.dtype}, expected float32/int64"
    if tuple(x.shape) != (count, *input_shape) or tuple(y.shape) != (count,):
        return f"shapes {tuple(x.shape)}/{tuple(y.shape)}, expected {(count, *input_shape)}/({count},)"
    if not all_finite(x):
        return "non-finite inputs"
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        return f"labels outside [0, {num_classes})"
    return None


def pack_samples(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """A worker rank's samples as the two numeric buffers it sends rank 0 (clients in order):
    float32 inputs (sum s_j, *input_shape) and int64 labels (sum s_j,)."""
    x = torch.cat([s[0] for s in samples]).to(torch.float32).contiguous().numpy()
    y = torch.cat([s[1] for s in samples]).to(torch.int64).contiguous().numpy()
    return x, y


def unpack_samples(x: np.ndarray, y: np.ndarray, counts: Sequence[int],
                   input_shape: Sequence[int], num_classes: int) -> list[tuple[Sample | None, str | None]]:
    """Split one rank's received buffers into its clients' samples, each checked with
    :func:`check_sample`: ``(sample, None)`` or ``(None, reason)``."""
    out: list[tuple[Sample | None, str | None]] = []
    start = 0
    for c in counts:
        xs = torch.from_numpy(np.array(x[start:start + c], dtype=np.float32, copy=True))
        ys = torch.from_numpy(np.array(y[start:start + c], dtype=np.int64, copy=True))
        start += c
        why = check_sample(xs, ys, c, input_shape, num_classes)
        out.append((None, why) if why else ((xs, ys), None))
    return out
