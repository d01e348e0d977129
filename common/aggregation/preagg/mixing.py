"""Mixing rows: means of groups of rows as direct row sums (bucketing, resampling, NNM), and a
mixing matrix product whose non-finite rows are recomputed from their nonzero weights only.

Either way one bad message can only spoil the outputs it actually enters.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.aggregation import native
from common.finite import finite_rows

__all__ = ["mix", "group_plan", "group_means", "cpu_randperm"]

_MM_CHUNK = 16384  # columns per torch.mm on CPU (see mix)


def mix(w: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """``w @ x`` for a (k, n) mixing matrix, recomputing non-finite rows from their nonzero
    weights only (where the native group means do not apply: CUDA, other dtypes).

    On CPU over column blocks: MKL's single (k, n) x (n, d) call for d in the millions streams
    x through memory once per output row block, measured 3x slower than blocks that stay in
    cache.
    """
    w = w.to(device=x.device, dtype=x.dtype)
    d = x.shape[1]
    if out is None:
        out = torch.empty(w.shape[0], d, dtype=x.dtype, device=x.device)
    if x.device.type != "cpu" or d <= _MM_CHUNK:
        torch.mm(w, x, out=out)
    else:
        for s in range(0, d, _MM_CHUNK):
            torch.mm(w, x[:, s:s + _MM_CHUNK], out=out[:, s:s + _MM_CHUNK])
    bad = ~finite_rows(out)
    if bool(bad.any()):
        for r in torch.nonzero(bad).flatten().tolist():
            row = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            for j in torch.nonzero(w[r]).flatten().tolist():
                row.add_(x[j], alpha=float(w[r, j]))
            out[r] = row
    return out


def group_plan(groups: list[list[int]]) -> tuple[list[int], list[tuple[list[int], list[int]]]]:
    """Split row groups into ``core``, the members every group has (in the first group's order),
    and per distinct remainder ``(rest, output rows)``: each group's mean is then summed as core
    first, then its rest in its own order, and identical groups are computed once."""
    common = set(groups[0]).intersection(*groups[1:])
    core = [j for j in groups[0] if j in common]
    parts: dict[tuple[int, ...], list[int]] = {}
    for r, g in enumerate(groups):
        parts.setdefault(tuple(j for j in g if j not in common), []).append(r)
    return core, [(list(rest), rows) for rest, rows in parts.items()]


def group_means(x: Tensor, groups: list[list[int]], out: Tensor | None = None) -> Tensor:
    """Row r = mean of the rows ``groups[r]`` of x, as direct row sums: members shared by every
    group (NNM: most of them) summed once, then each group's other members in its order
    (:func:`group_plan`), then one divide; identical groups computed once.

    For the sparse mixtures of bucketing and resampling this is a few memory passes where the
    dense ``W @ x`` is an (k, n) x (n, d) matrix product; and a non-finite row can only spoil the
    groups it belongs to (no 0 * inf). On CPU float32 one pass of the native kernel
    (:func:`common.native.group_means`, the same values).
    """
    core, parts = group_plan(groups)
    fast = native.group_means(x, core, parts, len(groups), out)
    if fast is not None:
        return fast
    if out is None:
        out = torch.empty(len(groups), x.shape[1], dtype=x.dtype, device=x.device)
    shared = None
    if core:
        shared = x[core[0]].clone()
        for j in core[1:]:
            shared.add_(x[j])
    for rest, rows in parts:
        row = out[rows[0]]
        row.copy_(x[rest[0]] if shared is None else shared)
        for j in rest[shared is None:]:
            row.add_(x[j])
        if len(core) + len(rest) > 1:
            row.div_(len(core) + len(rest))
        for r in rows[1:]:
            out[r] = row
    return out


def cpu_randperm(n: int, generator: torch.Generator | None) -> Tensor:
    """A permutation of range(n) drawn on the CPU (the same on every device for a seeded
    generator)."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("pre-aggregators draw their randomness on the CPU; "
                         "pass a CPU torch.Generator")
    return torch.randperm(n, generator=generator)
