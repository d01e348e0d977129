"""The server's policy for worker messages it cannot use.

A message that is missing (timeout), of the wrong size or dtype, or that holds NaN/Inf is
replaced by the zero vector for that round and the worker is reported in ``metrics.jsonl``
(``faults``). A zero row is just one more outlier to a robust rule, so n stays fixed and every
rule's n/f precondition still holds; with ``mean`` it shrinks the step instead of poisoning it.
"""
from __future__ import annotations

from torch import Tensor

from common.finite import all_finite, finite_rows

OK = "ok"


def sanitize(messages: Tensor, status: list[str]) -> dict[int, str]:
    """Zero every row that is not usable, in place; return {worker: reason} for those rows."""
    if all(st == OK for st in status) and all_finite(messages):
        return {}
    finite = finite_rows(messages).tolist()
    faults = {}
    for i, (ok, st) in enumerate(zip(finite, status)):
        reason = st if st != OK else (None if ok else "nonfinite")
        if reason is not None:
            faults[i] = reason
    if faults:
        messages[list(faults)] = 0
    return faults
