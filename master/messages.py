"""The server's policy for worker messages it cannot use, and what omniscient attacks see.

A message that is missing (timeout), of the wrong size or dtype, or that holds NaN/Inf is
*dropped* for that round and the worker is reported in ``metrics.jsonl`` (``faults``): the
chain and the rule run on the other rows with f lowered by the number dropped
(:func:`master.server.aggregate_usable`; docs/SECURITY.md). It is never replaced by a vector the
rule could pick: a zero row is exactly what distance-based rules prefer once the honest messages
are far from zero (Krum then selects it every round and training stops). :func:`sanitize` still
zeroes the rows it reports, so nothing non-finite stays in the round's buffer (a vote stack reads
a zeroed row as an abstention, which is what dropping it means in a majority vote).

Omniscient attacks (ALIE, IPM, mimic, ...) see the round's *usable* honest messages: those of
honest workers that arrived well-formed and are finite, exactly what the server itself will
aggregate. Both transports take them from :func:`usable_honest`; when there is none, the
Byzantine workers send their own messages unchanged.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from common.finite import all_finite, finite_rows
from common.rows import take_rows

__all__ = ["OK", "sanitize", "usable_honest"]

OK = "ok"


def _prefix(mask: Tensor) -> int | None:
    """h if ``mask`` is True exactly on its first h entries, else None."""
    h = int(mask.sum())
    return h if bool(mask[:h].all()) else None


def usable_honest(messages: Tensor, status: list[str], byz: np.ndarray
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The usable honest rows of the round, for an omniscient attack.

    Returns ``(rows, checked, finite)``: the (h, d) usable honest messages (a view when they
    are the first h rows, as under the fixed schedule), and the (n,) masks of the rows whose
    finiteness was checked here and of those found finite, which :func:`sanitize` reuses
    instead of reading those rows again."""
    n = messages.shape[0]
    candidates = torch.from_numpy(~byz & np.array([s == OK for s in status]))
    h = _prefix(candidates)
    honest = messages[:h] if h is not None else take_rows(messages, candidates.nonzero().flatten())
    ok = finite_rows(honest) if len(honest) else torch.zeros(0, dtype=torch.bool)
    finite = torch.zeros(n, dtype=torch.bool)
    finite[candidates] = ok.to(finite.device)
    if not bool(ok.all()):
        honest = honest[ok.to(honest.device)]
    return honest, candidates, finite


def sanitize(messages: Tensor, status: list[str], checked: Tensor | None = None,
             finite: Tensor | None = None) -> dict[int, str]:
    """Find the rows that are not usable: zero them in place, return {worker: reason}.

    ``checked``/``finite`` (from :func:`usable_honest`): rows whose finiteness is already known;
    only the others are read."""
    n = messages.shape[0]
    if checked is None or not bool(checked.any()):
        if all(st == OK for st in status) and all_finite(messages):
            return {}
        is_finite = finite_rows(messages).tolist()
    else:
        rest = (~checked).nonzero().flatten()
        is_finite = finite.clone()
        if len(rest):
            start = int(rest[0])
            block = (messages[start:start + len(rest)] if int(rest[-1]) - start + 1 == len(rest)
                     else take_rows(messages, rest))
            is_finite[rest] = finite_rows(block).to(is_finite.device)
        if all(st == OK for st in status) and bool(is_finite.all()):
            return {}
        is_finite = is_finite.tolist()
    faults = {}
    for i in range(n):
        reason = status[i] if status[i] != OK else (None if is_finite[i] else "nonfinite")
        if reason is not None:
            faults[i] = reason
    if faults:
        messages[list(faults)] = 0
    return faults
