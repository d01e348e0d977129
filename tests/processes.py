"""Helpers for the tests that start real processes: mpiexec runs of MPI_main.py and main.py
subprocesses.

Only the standard library is imported here (``final_params`` imports torch when called), so a
test module can take ``ROOT`` from it without loading torch.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def process_env(**extra: str) -> dict[str, str]:
    """The environment for a started process: this one's, with one OpenMP thread per process
    (the ranks share the machine's cores), and ``extra``."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def mpi_cmd(ranks: int, *flags: str) -> list[str]:
    """``mpiexec -n RANKS python MPI_main.py FLAGS``; ``--no-progress`` is put first unless
    ``flags`` already hold it."""
    quiet = [] if "--no-progress" in flags else ["--no-progress"]
    return ["mpiexec", "-n", str(ranks), sys.executable, "MPI_main.py", *quiet, *flags]


def run_mpi(ranks: int, *flags: str, timeout: float = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``mpi_cmd(ranks, *flags)`` in ROOT to the end, output captured as text. ``env`` is
    added to ``process_env()``. The caller checks the returncode."""
    return subprocess.run(mpi_cmd(ranks, *flags), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=process_env(**(env or {})))


def run_python(*args: str, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (a script such as ``main.py``, ``-m MODULE`` or ``-c CODE``) in ROOT to
    the end, output captured as text. ``env`` is added to ``process_env()``. The caller checks
    the returncode."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=process_env(**(env or {})))


def final_params(run_dir) -> torch.Tensor:
    """The server's parameters in ``run_dir/checkpoint.pt``."""
    from common.run.io import load_torch

    return load_torch(os.path.join(run_dir, "checkpoint.pt"))["server"]["params"]


def timeless_metrics(path) -> list[dict]:
    """``metrics.jsonl``'s records without their wall-clock ``seconds`` (what two runs of the
    same configuration must agree on)."""
    import json

    with open(path) as fh:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in fh if line.strip()]


def _records_written(path: str) -> int:
    """Complete (newline-terminated) records in ``metrics.jsonl`` so far; 0 if it is missing."""
    try:
        with open(path) as fh:
            return sum(1 for line in fh if line.endswith("\n") and line.strip())
    except FileNotFoundError:
        return 0


@contextlib.contextmanager
def running(cmd: list[str], run_dir, rounds: int = 2, timeout: float = 600,
            **popen) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in ROOT (stdout and stderr piped as text, environment ``process_env()``
    unless ``popen`` has ``env``; ``popen`` goes to Popen, e.g. ``start_new_session=True``), wait
    while it runs until ``run_dir/metrics.jsonl`` holds ``rounds`` records (at most ``timeout``
    seconds), assert it is still running and yield it: the body signals it and reads its
    output. On leaving, a process still alive is killed and waited for."""
    popen.setdefault("env", process_env())
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)
    try:
        metrics = os.path.join(run_dir, "metrics.jsonl")
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if _records_written(metrics) >= rounds:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
