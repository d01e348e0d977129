"""What a resume may change, and the fingerprint that keeps it from mixing two runs.

A checkpoint carries the fingerprint of the run that wrote it: every configuration field that
defines the run's state and trajectory, and the shape of every tensor it holds. ``--resume``
compares the fingerprint with the run directory's ``config.json`` before any data is loaded, and
the shapes with what the rebuilt run needs before any state is loaded; a difference is one line
naming it (exit code 2).

Flags given with ``--resume`` are applied when they are in :data:`RESUMABLE` (they change when
or where the run computes, not what it computes) and refused by name otherwise.
"""
from __future__ import annotations

from typing import Any

import torch

from common.errors import ConfigError

__all__ = ["RESUMABLE", "fingerprint", "config_differences", "tensor_shapes",
           "shape_differences"]

#: Config fields a resume may change: the target round count (never below the checkpoint's
#: round), the evaluation and checkpoint cadence, MPI timeouts, the progress bar, threads, the
#: devices and whether the sorting network is compiled.
RESUMABLE = ("rounds", "eval_every", "checkpoint_every", "round_timeout", "state_timeout",
             "progress", "threads", "device", "server_device", "compile_rules")
# Not part of the fingerprint either: where the run directory was when the run started.
_UNCHECKED = RESUMABLE + ("output",)


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``config.json``-style dict that a resume must find unchanged."""
    return {k: v for k, v in sorted(config.items()) if k not in _UNCHECKED}


def config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: now (checkpoint: saved)`` for each fingerprinted field that differs."""
    a, b = fingerprint(saved), fingerprint(now)
    return [f"{k} {b.get(k)!r} (checkpoint: {a.get(k)!r})"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def tensor_shapes(state: Any, prefix: str = "") -> dict[str, list[int]]:
    """``{"server.params": [d], "workers.momentum": [n, d], ...}`` of a nested state dict."""
    out: dict[str, list[int]] = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = list(state.shape)
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(tensor_shapes(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def shape_differences(saved: dict[str, list[int]], needed: dict[str, list[int]]) -> list[str]:
    """``name: checkpoint [..], this run needs [..]`` for each tensor both name differently."""
    return [f"{k} has shape {saved[k]}, this run needs {needed[k]}"
            for k in sorted(set(saved) & set(needed)) if list(saved[k]) != list(needed[k])]


def refuse(run_dir: str, what: str, items: list[str]) -> ConfigError:
    shown = "; ".join(items[:4]) + (f"; and {len(items) - 4} more" if len(items) > 4 else "")
    return ConfigError(f"--resume {run_dir}: {what}: {shown}")
