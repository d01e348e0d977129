"""Rank 0's side of an MPI run: the :class:`~master.transport.Transport` that ``MPI_main.py``
gives the same :class:`~master.trainer.Trainer` that ``main.py`` drives in-process.

Each round: broadcast the header and the parameters, receive every worker rank's message
straight into the buffer the protocol's wire format gives it (``Irecv`` of raw bytes of the
exact expected size; float32 rows land in one preallocated (n, d) buffer), then, for omniscient
attacks, forward the usable honest rows (:func:`master.messages.usable_honest`) to the crafting
ranks and receive their Byzantine rows (the commands: :mod:`common.wire.commands`).

Workers are not trusted (hosts/README.md): nothing they send is unpickled; a message of the
wrong size (a wrong dtype shows up as a wrong size) gives its rank's workers status
``wrongsize``, a rank that has not answered by ``--round-timeout`` gives ``timeout``, and
:func:`master.messages.sanitize` zeroes those rows and the non-finite ones; all of it is logged
under ``faults`` in ``metrics.jsonl``. Late or extra messages never match a later round (tags
carry the command number) and are drained.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch
from mpi4py import MPI
from torch import Tensor

from common.attacks import run_attack
from common.protocols import protocol_of
from common.run.config import Config
from common.run.problem import Problem
from common.wire.codecs import decode_info, decode_state, encode_state
from common.wire.commands import (
    ABSENT,
    CMD_LOAD,
    CMD_ROUND,
    CMD_STARTUP,
    CMD_STATE,
    CMD_STOP,
    DRAIN_BYTES,
    HEADER,
    INFO_BYTES,
    KIND_ATTACK,
    KIND_ATTACK_LEN,
    KIND_CRAFT,
    KIND_HONEST,
    KIND_MSG,
    KIND_STARTUP,
    KIND_TENSOR,
    KIND_TRAILER,
    Backoff,
    attack_ranks,
    crafting_ranks,
    rank_groups,
    state_tensors,
    tag,
)
from master.messages import OK, usable_honest
from master.transport import RoundResult, Transport

WRONGSIZE = "wrongsize"
TIMEOUT = "timeout"
# Unless --state-timeout says otherwise, a checkpoint waits this many round timeouts for the
# workers' state: a slow rank that missed rounds is still worth waiting for when the
# alternative is its workers' older state from the previous checkpoint (or zeros).
STATE_PATIENCE = 10.0
DRAIN_PER_POLL = 64


class MPITransport(Transport):
    """Parameter-server side of the MPI protocol (rank 0 of ``comm``)."""

    def __init__(self, cfg: Config, problem: Problem, device: torch.device, comm) -> None:
        self.MPI, self.comm = MPI, comm
        self.cfg, self.device, self.problem = cfg, device, problem
        self.protocol = protocol_of(cfg)
        self.n, self.d = cfg.num_workers, problem.dim
        self.groups = rank_groups(self.n, comm.Get_size() - 1)
        #: Per rank: host, local rank and ranks on that host (set by MPI_main after start-up).
        self.layout: list[dict] = []
        self.timeout = cfg.round_timeout
        self.state_timeout = (STATE_PATIENCE * cfg.round_timeout if cfg.state_timeout is None
                              else cfg.state_timeout)
        self.wire = self.protocol.wire(cfg, self.d)
        self.receiver = self.wire.receiver(self.n, self.groups)
        self.trailers = [np.zeros(4 * len(g) + INFO_BYTES, np.uint8) for g in self.groups]
        self.header = np.zeros(HEADER + self.n, np.int64)
        self.scratch = np.empty(DRAIN_BYTES, np.uint8)
        # The schema of the workers' state (tensor names, per-worker shapes and dtypes, attack
        # state keys) comes from the protocol and a fresh attack, without asking any worker.
        self.attack = run_attack(cfg, problem.dataset.num_classes)
        self.omniscient = self.attack.omniscient and self.wire.floating
        self.stateful = self.attack.stateful
        schema = self.protocol.state_schema(cfg, self.d)
        self.keys = state_tensors(schema)
        self.shapes = {k: (shape, torch.empty(0, dtype=dt).numpy().dtype)
                       for k, (shape, dt) in schema.items()}
        self.fresh_attack_state = self.attack.state_dict()
        self.attack_keys = list(self.fresh_attack_state)
        self.attack_cap = 16 * self.d + 1024                    # float64 numbers, generous
        self.seq = 0
        self.pending: list[tuple[object, np.ndarray]] = []      # sends in flight + their buffers
        self.busy = False    # True while a command is in flight: an exception then breaks the protocol
        self.closed = False
        self.drained = 0     # stale or unexpected messages thrown away
        self.drained_from: dict[int, int] = {}   # ... per sending rank

    # -- plumbing ----------------------------------------------------------------------------
    def _poll(self, live: set[int], backoff: Backoff) -> None:
        """Between tests: drain messages no posted receive wants, finish sends, then pause."""
        self._drain(live)
        if self.pending:
            self.pending = [(r, b) for r, b in self.pending if not r.Test()]
        backoff.pause()

    def _drain(self, live: set[int]) -> None:
        MPI = self.MPI
        st = MPI.Status()
        # Bounded per call, so a rank flooding messages cannot keep rank 0 here.
        for _ in range(DRAIN_PER_POLL):
            if not self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=st):
                return
            if st.Get_tag() in live:
                return
            src = st.Get_source()
            try:
                self.comm.Recv([self.scratch, MPI.BYTE], source=src, tag=st.Get_tag())
            except MPI.Exception:
                pass     # longer than the scratch: truncated, which discards it just as well
            self.drained += 1
            self.drained_from[src] = self.drained_from.get(src, 0) + 1

    def _stray_since(self, before: dict[int, int]) -> dict:
        """``{"stray": {rank: messages dropped}}`` since ``before`` (a copy of drained_from), for
        the round's metrics record; {} when nothing was dropped."""
        new = {str(r): c - before.get(r, 0) for r, c in sorted(self.drained_from.items())
               if c > before.get(r, 0)}
        return {"stray": new} if new else {}

    def _wait(self, req, live: set[int] = frozenset()) -> None:
        b = Backoff()
        while not req.Test():
            self._poll(live, b)

    def _command(self, cmd: int, t: int = 0, byz: np.ndarray | None = None,
                 absent: np.ndarray | None = None) -> int:
        self.seq += 1
        h = self.header
        h[0], h[1], h[2] = cmd, t, self.seq
        h[HEADER:] = 0 if byz is None else byz
        if absent is not None:
            h[HEADER:] |= absent.astype(np.int64) * ABSENT
        self._wait(self.comm.Ibcast(h, root=0))
        return self.seq

    def _collect(self, expect: dict[int, list[tuple[object, int]]], live: set[int],
                 timeout: float | None = None) -> dict[int, str]:
        """Status per rank of receives ``expect[rank] = [(request, expected bytes), ...]``:
        ok, wrongsize (a count differs or the message was truncated) or timeout (not all
        complete within ``timeout`` seconds, default ``--round-timeout``, 0 waiting forever;
        the rest are cancelled)."""
        MPI = self.MPI
        timeout = self.timeout if timeout is None else timeout
        deadline = time.perf_counter() + timeout if timeout > 0 else None
        status = {r: OK for r in expect}
        open_ = {r: list(v) for r, v in expect.items()}
        b = Backoff()
        while open_:
            for r in list(open_):
                for item in list(open_[r]):
                    req, nbytes = item
                    st = MPI.Status()
                    try:
                        done = req.Test(st)
                        bad = done and st.Get_count(MPI.BYTE) != nbytes
                    except MPI.Exception:         # MPI_ERR_TRUNCATE: longer than expected
                        done = bad = True
                    if done:
                        open_[r].remove(item)
                        if bad:
                            status[r] = WRONGSIZE
                # A rank whose message was malformed still gets its other receives of the
                # round (within the deadline): cancelled, its late parts would be drained as
                # strays of a later round.
                if not open_[r]:
                    open_.pop(r)
            if open_ and deadline is not None and time.perf_counter() > deadline:
                for r in list(open_):
                    if not self._cancel(open_.pop(r)) and status[r] == OK:
                        status[r] = TIMEOUT
                break
            if open_:
                self._poll(live, b)
        return status

    def _cancel(self, items: list[tuple[object, int]]) -> bool:
        """Cancel receives; True if every one had in fact completed with the expected size."""
        MPI = self.MPI
        ok = True
        for req, nbytes in items:
            req.Cancel()
            st = MPI.Status()
            try:
                req.Wait(st)
                ok = ok and not st.Is_cancelled() and st.Get_count(MPI.BYTE) == nbytes
            except MPI.Exception:
                ok = False
        return ok

    def _irecv(self, buf: np.ndarray, source: int, tg: int) -> tuple[object, int]:
        return self.comm.Irecv([buf, self.MPI.BYTE], source=source, tag=tg), buf.nbytes

    def _isend(self, buf: np.ndarray, dest: int, tg: int) -> None:
        buf = np.ascontiguousarray(buf)
        self.pending.append((self.comm.Isend([buf, self.MPI.BYTE], dest=dest, tag=tg), buf))

    # -- one round -----------------------------------------------------------------------------
    def round(self, params: Tensor, t: int, byz: np.ndarray,
              clients: np.ndarray | None = None) -> RoundResult:
        """Round t; with ``clients`` (a sorted sample) only their ranks answer, with their
        rows, and a rank with none of them idles (the header marks the others absent)."""
        self.busy = True
        drained_before = dict(self.drained_from)
        seq = self.seq + 1
        live = {tag(seq, KIND_MSG), tag(seq, KIND_TRAILER)}
        rows = self.receiver.arrange(clients) if clients is not None else [
            range(g.start, g.stop) for g in self.groups]
        absent = None
        if clients is not None:
            absent = np.ones(self.n, bool)
            absent[clients] = False
        bad = byz if clients is None else byz[clients]   # per message row
        # Receives are posted before the broadcast so answers land directly in place.
        expect = {r: [self._irecv(self.receiver.buffer(r), r, tag(seq, KIND_MSG)),
                      self._irecv(self.trailers[r - 1][:4 * len(rr) + INFO_BYTES], r,
                                  tag(seq, KIND_TRAILER))]
                  for r, rr in enumerate(rows, 1) if len(rr)}
        self._command(CMD_ROUND, t, byz, absent)
        p = params.detach().to("cpu", torch.float32).contiguous().numpy()
        self._wait(self.comm.Ibcast([p, self.MPI.FLOAT], root=0), live)
        rank_status = self._collect(expect, live)

        status = [OK] * len(bad)
        losses = torch.full((len(bad),), float("nan"))
        info: dict = {}
        for r, rr in enumerate(rows, 1):
            if not len(rr):
                continue
            if rank_status[r] != OK:
                status[rr.start:rr.stop] = [rank_status[r]] * len(rr)
                continue
            tr = self.trailers[r - 1]
            losses[rr.start:rr.stop] = torch.from_numpy(tr[:4 * len(rr)].view(np.float32).copy())
            if not info and not self.omniscient and bad[rr.start:rr.stop].any():
                info = decode_info(tr[4 * len(rr):4 * len(rr) + INFO_BYTES]) or {}
        checked = finite = None
        if self.omniscient and bad.any():
            info, checked, finite = self._craft_round(seq, byz if absent is None else
                                                      byz & ~absent, bad, rows, status)
        self.busy = False
        messages = self.receiver.messages(status, OK, self.device)
        out = {**({"attack": info} if info else {}), **self.wire.round_info(messages),
               **self._stray_since(drained_before)}
        return RoundResult(messages=messages, status=status, losses=losses, info=out,
                           checked=checked, finite=finite)

    def _craft_round(self, seq: int, byz: np.ndarray, bad: np.ndarray, rows: list[range],
                     status: list[str]):
        """Omniscient attacks: send the usable honest rows to the crafting ranks, receive the
        Byzantine rows back (``byz``: the (n,) mask of the round's Byzantine participants,
        ``bad`` that of the message rows, ``rows`` each rank's rows). Returns the attack's
        info from the lowest replying rank and the finiteness
        :func:`master.messages.usable_honest` established."""
        msg = self.receiver.msg
        honest_rows, checked, finite = usable_honest(self.receiver.msg_t[:len(bad)], status, bad)
        honest = np.ascontiguousarray(honest_rows.numpy())
        live = {tag(seq, KIND_CRAFT)}
        replies, expect = {}, {}
        for r in crafting_ranks(self.cfg, self.groups, byz, self.stateful):
            # Sent even to a rank that timed out: it still crafts when it wakes, which keeps a
            # stateful attack's replicas in step.
            self._isend(honest, r, tag(seq, KIND_HONEST))
            rr = rows[r - 1]
            idx = np.nonzero(bad[rr.start:rr.stop])[0] + rr.start
            if len(idx) and status[rr.start] == OK:
                buf = np.empty(len(idx) * self.d * 4 + INFO_BYTES, np.uint8)
                replies[r] = (idx, buf)
                expect[r] = [self._irecv(buf, r, tag(seq, KIND_CRAFT))]
        info: dict | None = None
        for r, st in self._collect(expect, live).items():
            idx, buf = replies[r]
            if st != OK:
                for i in idx:
                    status[i] = st
                continue
            msg[idx] = buf[:-INFO_BYTES].view(np.float32).reshape(len(idx), self.d)
            if info is None:
                info = decode_info(buf[-INFO_BYTES:])
        return info or {}, checked, finite

    # -- the protocol's start-up exchange ------------------------------------------------------
    def startup(self) -> list:
        """What every worker sent at start-up, received from its rank into buffers of the exact
        expected size (the protocol computes them from the seeded partition) and decoded and
        checked per worker; a rank that sent a wrong size or timed out gives None for its
        workers, with a warning."""
        self.busy = True
        seq = self.seq + 1
        bufs = {r: self.protocol.startup_buffers(self.cfg, self.problem, g)
                for r, g in enumerate(self.groups, 1)}
        live = {tag(seq, KIND_STARTUP + i) for i in range(max(len(b) for b in bufs.values()))}
        expect = {r: [self._irecv(b, r, tag(seq, KIND_STARTUP + i)) for i, b in enumerate(bs)]
                  for r, bs in bufs.items()}
        self._command(CMD_STARTUP)
        status = self._collect(expect, live)
        out: list = []
        for r, g in enumerate(self.groups, 1):
            if status[r] != OK:
                self._warn(f"rank {r} sent no usable start-up data ({status[r]})")
            out.extend(self.protocol.startup_decode(self.cfg, self.problem, g,
                                                    bufs[r] if status[r] == OK else None,
                                                    self._warn))
        self.busy = False
        return out

    # -- worker state for checkpoints ----------------------------------------------------------
    def state_dict(self) -> dict:
        """Every worker's state, gathered as raw buffers: {tensor name: (n, ...), "attack": ...,
        "missing": [worker index, ...]}. The workers of a rank that does not answer within
        ``--state-timeout`` seconds (or whose answer is unusable) have zero rows and are listed
        under "missing" (the trainer fills them from the previous checkpoint); the attack state
        is then a fresh one if that rank held it."""
        self.busy = True
        seq = self.seq + 1
        out = {k: np.zeros((self.n, *shape), dtype) for k, (shape, dtype) in self.shapes.items()}
        holder = (attack_ranks(self.cfg, self.groups) or [1])[0]
        alen = np.zeros(1, np.int64)
        live = {tag(seq, KIND_TENSOR + i) for i in range(len(self.keys))}
        live |= {tag(seq, KIND_ATTACK_LEN), tag(seq, KIND_ATTACK)}
        expect = {r: [self._irecv(out[k][g.start:g.stop], r, tag(seq, KIND_TENSOR + i))
                      for i, k in enumerate(self.keys)] for r, g in enumerate(self.groups, 1)}
        expect[holder].append(self._irecv(alen, holder, tag(seq, KIND_ATTACK_LEN)))
        self._command(CMD_STATE)
        status = self._collect(expect, live, self.state_timeout)
        attack = self.fresh_attack_state
        if status[holder] == OK and 0 <= alen[0] <= self.attack_cap:
            enc = np.zeros(int(alen[0]), np.float64)
            got = self._collect({holder: [self._irecv(enc, holder, tag(seq, KIND_ATTACK))]}, live,
                                self.state_timeout)
            try:
                if got[holder] != OK:
                    raise ValueError(got[holder])
                attack = decode_state(enc, self.attack_keys)
            except ValueError as e:
                self._warn(f"rank {holder} sent an unusable attack state ({e}); "
                           "the checkpoint holds a fresh one")
        elif status[holder] != OK and self.attack_keys:
            self._warn(f"rank {holder} did not send the attack state ({status[holder]}); "
                       "the checkpoint holds a fresh one")
        missing = []
        for r, g in enumerate(self.groups, 1):
            if status[r] != OK:     # a short or partial answer must not leave bytes behind
                for v in out.values():
                    v[g.start:g.stop] = 0
                missing.extend(g)
        self.busy = False
        return {**{k: torch.from_numpy(v) for k, v in out.items()}, "attack": attack,
                "missing": missing}

    def load_state_dict(self, d: dict) -> None:
        self.busy = True
        seq = self._command(CMD_LOAD)
        enc = encode_state(d["attack"])
        for r, g in enumerate(self.groups, 1):
            for i, k in enumerate(self.keys):
                _, dtype = self.shapes[k]
                part = d[k][g.start:g.stop].detach().cpu().numpy().astype(dtype, copy=False)
                self._isend(part, r, tag(seq, KIND_TENSOR + i))
            self._isend(enc, r, tag(seq, KIND_ATTACK))
        self._finish_sends()
        self.busy = False

    def _finish_sends(self) -> None:
        b = Backoff()
        while self.pending:
            self._poll(set(), b)

    def describe(self) -> dict:
        hosts: dict[str, list[int]] = {}
        for r, rank in enumerate(self.layout):
            hosts.setdefault(rank["host"], []).append(r)
        return {"entry": "MPI_main.py", "processes": self.comm.Get_size(), "hosts": hosts,
                "ranks": self.layout}

    def close(self) -> None:
        """STOP every worker rank and wait until all have left (draining late messages).
        After an interrupted command the ranks are mid-protocol: abort the job instead."""
        if self.closed:
            return
        self.closed = True
        if self.busy:
            self._warn("interrupted in the middle of an exchange with the worker ranks; "
                       "aborting them (the last saved checkpoint is kept)")
            self.comm.Abort(130)
        self._command(CMD_STOP)
        self._finish_sends()
        self._wait(self.comm.Ibarrier())

    @staticmethod
    def _warn(text: str) -> None:
        print(f"MPI_main.py: {text}", file=sys.stderr, flush=True)
