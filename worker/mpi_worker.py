"""Worker ranks of ``MPI_main.py`` (imported by MPI_main.py only: importing mpi4py initialises
MPI): rank r >= 1 hosts the contiguous group
``rank_groups(n, R - 1)[r - 1]`` of workers as one :class:`~worker.group.WorkerGroup` and serves
rank 0's commands until STOP (the protocol: :mod:`common.wire.commands`).

Everything is a raw numeric buffer sent with ``Isend``/``Irecv``/``Ibcast``: nothing is pickled.
What a round's message holds is the run's protocol's wire format (:mod:`common.wire.formats`).
"""
from __future__ import annotations

import signal
import time

import numpy as np
import torch
from mpi4py import MPI

from common.protocols import protocol_of
from common.rows import take_rows
from common.run.config import Config, parse_faults
from common.run.problem import Problem
from common.wire.codecs import decode_state, encode_info, encode_state
from common.wire.commands import (
    ABSENT,
    CMD_LOAD,
    CMD_ROUND,
    CMD_STARTUP,
    CMD_STATE,
    CMD_STOP,
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
    wait,
    wait_all,
)
from worker.faults import WRONGSIZE_TRAILER_DELAY, corrupt, flood, stall_seconds
from worker.group import make_worker_group

__all__ = ["WorkerRank"]


class WorkerRank:
    """Serves rank 0's commands for this rank's group of workers until STOP."""

    def __init__(self, cfg: Config, problem: Problem, device: torch.device, comm) -> None:
        self.cfg, self.comm, self.device, self.problem = cfg, comm, device, problem
        self.protocol = protocol_of(cfg)
        self.rank = comm.Get_rank()
        self.groups = rank_groups(cfg.num_workers, comm.Get_size() - 1)
        self.ids = self.groups[self.rank - 1]
        self.group = make_worker_group(cfg, problem, self.ids, device)
        self.k, self.d = self.group.k, problem.dim
        self.fault = parse_faults(cfg.inject_fault).get(self.rank)
        self.rng = np.random.default_rng([cfg.run_seed, self.rank])
        self.header = np.zeros(HEADER + cfg.num_workers, np.int64)
        self.params = np.zeros(self.d, np.float32)
        self.msgs = torch.zeros(0, self.d)   # this round's messages, for crafting
        self.keys = state_tensors(self.group.state)

    def serve(self) -> None:
        """The command loop. SIGINT/SIGTERM are ignored here: rank 0 decides when the job ends
        (it checkpoints first, which needs this rank's state)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        comm = self.comm
        states = 0          # STATE commands served
        late = None         # ``stallstate``: the command whose state is sent after the next one
        while True:
            wait(comm.Ibcast(self.header, root=0))
            cmd, t, seq = (int(v) for v in self.header[:HEADER])
            if late is not None:
                # Rank 0 has sent a new command, so it gave up on that state (--state-timeout):
                # the answer is stale, rank 0 drains it. Nothing changed the state in between.
                self.send_state(late)
                late = None
            if cmd == CMD_ROUND:
                w = self.header[HEADER:]
                self.round(t, seq, (w & 1).astype(bool), (w & ABSENT) == 0)
            elif cmd == CMD_STATE:
                states += 1
                if self.fault == "stallstate" and states >= 2:
                    late = seq
                else:
                    self.send_state(seq)
            elif cmd == CMD_LOAD:
                self.load_state(seq)
            elif cmd == CMD_STARTUP:
                self.send_startup(seq)
            elif cmd == CMD_STOP:
                wait(comm.Ibarrier())
                return
            else:
                raise RuntimeError(f"rank {self.rank}: unknown command {cmd} from rank 0")

    def _send(self, bufs: list[tuple[np.ndarray, int]]) -> None:
        wait_all([self.comm.Isend([np.ascontiguousarray(b), MPI.BYTE], dest=0, tag=tg)
                  for b, tg in bufs])

    def round(self, t: int, seq: int, byz: np.ndarray, present: np.ndarray) -> None:
        """Round t for this rank's workers that take part (``present``; ``byz``: the Byzantine
        mask): compute and send their messages and trailer, then craft if asked. With none of
        them taking part the rank only follows the broadcasts (and a stateful attack's
        crafting)."""
        comm, g = self.comm, self.group
        wait(comm.Ibcast([self.params, MPI.FLOAT], root=0))
        ids = slice(self.ids.start, self.ids.stop)
        mine = present[ids]
        local = torch.from_numpy(byz[ids] & mine).to(self.device)
        active = None if mine.all() else torch.from_numpy(mine).to(self.device)
        bad = local if active is None else local[active]   # per message row
        k = int(mine.sum())
        byz = byz & present
        if k:
            self._send_round(t, seq, local, active, bad, k)
        else:   # idle: nothing to send, no rows to craft
            self.msgs = torch.zeros(0, self.d, device=self.device)
        if not (g.attack.omniscient and byz.any()):
            return
        if self.rank not in crafting_ranks(self.cfg, self.groups, byz, g.attack.stateful):
            return
        honest = self._recv_from_root(tag(seq, KIND_HONEST), np.float32).reshape(-1, self.d)
        rows = bad.nonzero().flatten()
        own = take_rows(self.msgs, rows)
        if len(honest):
            crafted = g.craft(own, torch.from_numpy(honest).to(self.device), t, rows)
        else:  # no usable honest message: the Byzantine workers send their own
            crafted = own
        if len(rows) == 0:
            return
        reply = crafted.detach().to("cpu", torch.float32).contiguous().numpy()
        reply = corrupt(self.fault, reply, self.rng)
        self._send([(np.concatenate([reply.reshape(-1).view(np.uint8),
                                     encode_info(g.attack.info)]), tag(seq, KIND_CRAFT))])

    def _send_round(self, t: int, seq: int, local: torch.Tensor, active: torch.Tensor | None,
                    bad: torch.Tensor, k: int) -> None:
        """Compute the k taking part's messages (kept in ``self.msgs`` for crafting) and send
        them with the trailer (their losses and the attack's info), faults injected."""
        g = self.group
        msgs = self.msgs = g.compute(torch.from_numpy(self.params).to(self.device), t, local,
                                     active)
        out = g.wire.payload(msgs, self.ids)
        trailer = np.zeros(4 * k + INFO_BYTES, np.uint8)
        trailer[:4 * k] = g.losses.to(torch.float32).numpy().view(np.uint8)
        if bad.any() and not g.attack.omniscient:
            trailer[4 * k:] = encode_info(g.attack.info)
        if self.fault == "stall":
            time.sleep(stall_seconds(self.cfg))
        if self.fault == "randombytes":
            trailer = self.rng.integers(0, 256, trailer.size, dtype=np.uint8)
        strays = flood(seq, self.rng) if self.fault == "flood" else []
        if self.fault == "wrongsize":
            # its parts arrive apart, as a loaded or hostile rank's may: the short message,
            # then the trailer, which rank 0 must still take as this round's
            self._send([(corrupt(self.fault, out, self.rng), tag(seq, KIND_MSG))])
            time.sleep(WRONGSIZE_TRAILER_DELAY)
            self._send([(trailer, tag(seq, KIND_TRAILER))])
        else:
            self._send(strays + [(corrupt(self.fault, out, self.rng), tag(seq, KIND_MSG)),
                                 (trailer, tag(seq, KIND_TRAILER))])

    def _recv_from_root(self, tg: int, dtype) -> np.ndarray:
        """A message of rank 0 whose length this rank does not know in advance (rank 0 is trusted)."""
        st = MPI.Status()
        b = Backoff()
        while not self.comm.Iprobe(source=0, tag=tg, status=st):
            b.pause()
        buf = np.empty(st.Get_count(MPI.BYTE) // np.dtype(dtype).itemsize, dtype)
        wait(self.comm.Irecv([buf, MPI.BYTE], source=0, tag=tg))
        return buf

    def send_startup(self, seq: int) -> None:
        """The protocol's start-up buffers of this rank's workers (DiverseFL: their samples)."""
        bufs = self.protocol.startup_payload(self.cfg, self.problem, self.ids)
        self._send([(np.ascontiguousarray(b).reshape(-1).view(np.uint8), tag(seq, KIND_STARTUP + i))
                    for i, b in enumerate(bufs)])

    def send_state(self, seq: int) -> None:
        state = self.group.state_dict()
        bufs = [(state[key].detach().cpu().contiguous().numpy(), tag(seq, KIND_TENSOR + i))
                for i, key in enumerate(self.keys)]
        holders = attack_ranks(self.cfg, self.groups) or [1]
        if self.rank == holders[0]:
            enc = encode_state(state["attack"])
            bufs += [(np.array([len(enc)], np.int64), tag(seq, KIND_ATTACK_LEN)),
                     (enc, tag(seq, KIND_ATTACK))]
        self._send(bufs)

    def load_state(self, seq: int) -> None:
        cur = self.group.state_dict()
        state = {}
        for i, key in enumerate(self.keys):
            ref = cur[key]
            buf = np.empty(tuple(ref.shape), ref.numpy().dtype)
            wait(self.comm.Irecv([buf, MPI.BYTE], source=0, tag=tag(seq, KIND_TENSOR + i)))
            state[key] = torch.from_numpy(buf)
        enc = self._recv_from_root(tag(seq, KIND_ATTACK), np.float64)
        state["attack"] = decode_state(enc, list(cur["attack"]))
        self.group.load_state_dict(state)
