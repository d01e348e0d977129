"""The MPI protocol's commands, tags and rank layout, and polling waits.

Every command starts with a broadcast of an int64 header ``[cmd, t, seq, w_0 .. w_{n-1}]``,
``w_i`` = 1 if worker i is Byzantine this round, plus :data:`ABSENT` if it sits the round out
(a protocol that samples its clients):

* ROUND: broadcast of the float32 parameters; each worker rank sends its group's messages (in
  its protocol's wire format) and a trailer (k float32 batch losses + :data:`INFO_BYTES` of
  attack info), k its workers taking part (a rank with none sends nothing). For an omniscient
  attack the crafting ranks (:func:`crafting_ranks`) then receive the round's usable honest
  messages, craft, and send back the rows of their Byzantine workers (+ info);
* STATE / LOAD: the group's per-worker tensors as raw buffers, and the attack's state as
  float64 numbers (:mod:`common.wire.codecs`), to or from rank 0;
* STARTUP: each rank sends its clients' start-up buffers (the protocol's start-up exchange,
  e.g. DiverseFL's samples); STOP: leave.

Tags are ``(seq mod 2000) * 16 + kind``, so a message that arrives after its round was given up
never matches a later round. Waits poll with a backoff (:class:`Backoff`) instead of blocking:
MPICH's blocking calls spin, which starves the computing ranks when ranks outnumber cores.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["ABSENT", "CMD_ROUND", "CMD_STATE", "CMD_LOAD", "CMD_STOP", "CMD_STARTUP", "HEADER",
           "KIND_MSG", "KIND_TRAILER", "KIND_HONEST", "KIND_CRAFT", "KIND_ATTACK_LEN",
           "KIND_ATTACK", "KIND_STARTUP", "KIND_TENSOR", "NUM_KINDS", "TAG_PERIOD", "TAG_MAX",
           "INFO_BYTES", "DRAIN_BYTES", "tag", "rank_groups", "attack_ranks",
           "crafting_ranks", "state_tensors", "Backoff", "wait", "wait_all"]

CMD_ROUND, CMD_STATE, CMD_LOAD, CMD_STOP = 1, 2, 3, 4
CMD_STARTUP = 5            # the protocol's start-up exchange (DiverseFL: the clients' samples)
HEADER = 3                 # cmd, t, seq; then the n-entry Byzantine mask
ABSENT = 2                 # header bit of a worker that sits the round out
KIND_MSG, KIND_TRAILER, KIND_HONEST, KIND_CRAFT = 0, 1, 2, 3
KIND_ATTACK_LEN, KIND_ATTACK = 4, 5
KIND_STARTUP = 6           # + index of the start-up buffer (at most 2)
KIND_TENSOR = 8            # + index of the group's per-worker state tensor (at most 8)
NUM_KINDS = 16
TAG_PERIOD = 2000          # 2000 * 16 < 32767, the smallest MPI_TAG_UB the standard allows
TAG_MAX = 32767
INFO_BYTES = 256           # attack info: "key=i:3;key=f:0.5" ASCII, NUL-padded
DRAIN_BYTES = 1 << 20      # rank 0 receives stale messages into (at most) this much scratch


def tag(seq: int, kind: int) -> int:
    """The MPI tag of message ``kind`` of command number ``seq``."""
    return (seq % TAG_PERIOD) * NUM_KINDS + kind


def rank_groups(n: int, worker_ranks: int) -> list[range]:
    """Contiguous worker ranges of ranks 1..worker_ranks (numpy.array_split sizes)."""
    parts = np.array_split(np.arange(n), worker_ranks)
    return [range(int(p[0]), int(p[-1]) + 1) for p in parts]


def attack_ranks(cfg, groups: list[range]) -> list[int]:
    """Ranks that may ever host a Byzantine worker (fixed schedule: the last f workers)."""
    if cfg.num_byzantine == 0:
        return []
    if cfg.byz_schedule == "fixed":
        first = cfg.num_workers - cfg.num_byzantine
        return [r for r, g in enumerate(groups, 1) if g.stop > first]
    return list(range(1, len(groups) + 1))


def crafting_ranks(cfg, groups: list[range], byz: np.ndarray, stateful: bool) -> list[int]:
    """Ranks that receive the honest messages of an omniscient round (``byz.any()``).

    A stateful attack's replicas all update their state each round, as the single in-process
    replica does, so later rounds agree whichever rank hosts the Byzantine workers then."""
    if stateful:
        return attack_ranks(cfg, groups)
    return [r for r, g in enumerate(groups, 1) if byz[g.start:g.stop].any()]


def state_tensors(schema: dict) -> list[str]:
    """The names of a group's per-worker state tensors, in wire order."""
    return sorted(schema)


class Backoff:
    """Pause between polls: spin for the first ``spin`` seconds (latency), then sleep 5% of the
    time waited so far, at most ``max_sleep`` (so an idle rank leaves the CPU to busy ones)."""

    def __init__(self, spin: float = 0.002, max_sleep: float = 0.002) -> None:
        self.start = time.perf_counter()
        self.spin, self.max_sleep = spin, max_sleep

    def pause(self) -> None:
        waited = time.perf_counter() - self.start
        time.sleep(0 if waited < self.spin else min(self.max_sleep, 0.05 * waited))


def wait(req) -> None:
    """Wait for one request by polling (see :class:`Backoff`)."""
    b = Backoff()
    while not req.Test():
        b.pause()


def wait_all(reqs: list) -> None:
    """Wait for every request by polling (a completed request tests true from then on)."""
    b = Backoff()
    while not all([r.Test() for r in reqs]):
        b.pause()
