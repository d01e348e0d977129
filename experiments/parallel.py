"""A grid's runs in N worker processes that a signal stops cleanly, each run checkpointed.

``multiprocessing.Pool`` cannot do this. Its ``terminate()`` sends each worker one SIGTERM, which
the training run inside takes as "finish the round, checkpoint, stop" (:mod:`master.trainer`);
the worker then waits for its next task, and ``terminate()`` waits for the worker: a hang (and a
SIGTERM to the parent alone killed it and left both workers training, unseen). Here a worker
leaves as soon as its run reports the interruption, and the parent passes a SIGTERM on.
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
import time
from typing import Any, Callable, Sequence

__all__ = ["run_parallel"]

#: How long the workers get to checkpoint and leave after a Ctrl-C (which reached them too)
#: before they are sent SIGTERM; and after that, how long before they are killed.
GRACE_SECONDS = 30.0
STOP_SECONDS = 120.0


def _serve(fn: Callable, tasks, results) -> None:
    """A worker's loop: ``fn`` on each task until the None sentinel, or until ``fn`` raises
    (an interrupted run): the exception goes back to the parent and the worker stops."""
    while (item := tasks.get()) is not None:
        try:
            value = fn(item)
        except BaseException as e:  # noqa: BLE001 -- reported to the parent, which re-raises it
            results.put((False, e))
            return
        results.put((True, value))


def run_parallel(fn: Callable[[Any], Any], items: Sequence, jobs: int,
                 on_result: Callable[[Any], None]) -> None:
    """``on_result(fn(item))`` for every item, ``fn`` run in ``jobs`` spawned processes, results
    in the order they finish. An exception raised by ``fn`` stops every worker and is raised
    here. SIGTERM to this process, or Ctrl-C, raises KeyboardInterrupt here once every worker
    has stopped: a SIGTERM is passed on to them, and after a Ctrl-C (which the terminal sent to
    them too) they get GRACE_SECONDS to leave by themselves first. ``fn`` and the items must
    be picklable (spawn: never fork a process that may hold torch's thread pools)."""
    ctx = mp.get_context("spawn")
    tasks, results = ctx.Queue(), ctx.Queue()
    tasks.cancel_join_thread()  # items nobody will read (a stopped grid) must not block exit
    for item in items:
        tasks.put(item)
    for _ in range(jobs):
        tasks.put(None)
    # daemon, as Pool's workers: they never outlive this process
    procs = [ctx.Process(target=_serve, args=(fn, tasks, results), daemon=True)
             for _ in range(jobs)]
    for p in procs:
        p.start()
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _raise_sigterm) if main_thread else None
    try:
        for _ in range(len(items)):
            ok, value = _next_result(results, procs)
            if not ok:
                raise value
            on_result(value)
    except _SigTerm:
        _stop(procs, grace=0.0)
        raise KeyboardInterrupt("SIGTERM") from None
    except KeyboardInterrupt:
        _stop(procs, grace=GRACE_SECONDS)
        raise
    except BaseException:
        _stop(procs, grace=0.0)
        raise
    finally:
        if main_thread:  # None: a handler not installed from Python, which cannot be put back
            signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)
        for p in procs:
            p.join()


class _SigTerm(BaseException):
    """SIGTERM to the parent (a BaseException, so that no ``except Exception`` swallows it)."""


def _raise_sigterm(signum, frame) -> None:
    raise _SigTerm()


def _next_result(results, procs: list) -> tuple[bool, Any]:
    """The next (ok, value) from the workers; RuntimeError once no worker is alive to send one
    (a worker killed by the OOM killer takes its run with it)."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                try:
                    return results.get(timeout=1.0)
                except queue.Empty:
                    codes = ", ".join(str(p.exitcode) for p in procs)
                    raise RuntimeError(f"every worker process has exited (exit codes {codes}) "
                                       "with runs unfinished") from None


def _stop(procs: list, grace: float) -> None:
    """Stop the workers: wait ``grace`` seconds for them to leave, SIGTERM the rest (a run
    checkpoints and stops), wait STOP_SECONDS, kill what is left."""
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(STOP_SECONDS)
        if p.is_alive():
            p.kill()
