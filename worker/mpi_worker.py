"""Worker ranks of ``MPI_main.py``, and the wire protocol rank 0 (:mod:`master.mpi_transport`)
shares with them.

Rank r >= 1 hosts the contiguous group ``rank_groups(n, R - 1)[r - 1]`` of workers as one
:class:`~worker.group.WorkerGroup` and serves commands from rank 0 until STOP:

* every command starts with a broadcast of an int64 header ``[cmd, t, seq, byz_0 .. byz_{n-1}]``;
* ROUND: broadcast of the float32 parameters; the rank sends its (k, d) float32 messages and a
  trailer (k float32 batch losses + :data:`INFO_BYTES` of attack info). For an omniscient attack
  the crafting ranks (:func:`crafting_ranks`) then receive the round's honest messages, craft,
  and send back the rows of their Byzantine workers (+ info);
* STATE / LOAD: the group's per-worker tensors (momenta, ...) as raw buffers, and the attack's
  state as float64 numbers (:func:`encode_state`), to or from rank 0 (rank 0 waits
  ``--state-timeout`` seconds for a STATE answer); STOP: leave.

Everything is a raw numeric buffer sent with ``Isend``/``Irecv``/``Ibcast``: nothing is pickled.
Tags are ``(seq mod 2000) * 16 + kind``, so a message that arrives after its round was given up
never matches a later round. Waits poll with a backoff (:class:`Backoff`) instead of blocking:
MPICH's blocking calls spin, which starves the computing ranks when ranks outnumber cores.
"""
from __future__ import annotations

import math
import re
import signal
import time
from typing import Any

import numpy as np
import torch

from common.attacks import Attack, make_attack
from common.config import Config, attack_params, parse_faults
from common.problem import Problem
from common.rows import take_rows

# -- commands, header, tags ------------------------------------------------------------------
CMD_ROUND, CMD_STATE, CMD_LOAD, CMD_STOP = 1, 2, 3, 4
CMD_SAMPLES = 5            # DiverseFL start-up: each rank sends its clients' data samples
HEADER = 3                 # cmd, t, seq; then the n-entry Byzantine mask
KIND_MSG, KIND_TRAILER, KIND_HONEST, KIND_CRAFT = 0, 1, 2, 3
KIND_ATTACK_LEN, KIND_ATTACK = 4, 5
KIND_SAMPLE_X, KIND_SAMPLE_Y = 6, 7   # DiverseFL samples: float32 inputs, int64 labels
KIND_TENSOR = 8            # + index of the group's per-worker state tensor (at most 8)
NUM_KINDS = 16
TAG_PERIOD = 2000          # 2000 * 16 < 32767, the smallest MPI_TAG_UB the standard allows
INFO_BYTES = 256           # attack info: "key=i:3;key=f:0.5" ASCII, NUL-padded


def tag(seq: int, kind: int) -> int:
    """The MPI tag of message ``kind`` of command number ``seq``."""
    return (seq % TAG_PERIOD) * NUM_KINDS + kind


def rank_groups(n: int, worker_ranks: int) -> list[range]:
    """Contiguous worker ranges of ranks 1..worker_ranks (numpy.array_split sizes)."""
    parts = np.array_split(np.arange(n), worker_ranks)
    return [range(int(p[0]), int(p[-1]) + 1) for p in parts]


def is_stateful(attack: Attack) -> bool:
    """Whether the attack keeps state across rounds (mimic): every replica must see every round."""
    return type(attack).state_dict is not Attack.state_dict


def attack_ranks(cfg: Config, groups: list[range]) -> list[int]:
    """Ranks that may ever host a Byzantine worker (fixed schedule: the last f workers)."""
    if cfg.num_byzantine == 0:
        return []
    if cfg.byz_schedule == "fixed":
        first = cfg.num_workers - cfg.num_byzantine
        return [r for r, g in enumerate(groups, 1) if g.stop > first]
    return list(range(1, len(groups) + 1))


def crafting_ranks(cfg: Config, groups: list[range], byz: np.ndarray, stateful: bool) -> list[int]:
    """Ranks that receive the honest messages of an omniscient round (``byz.any()``).

    A stateful attack's replicas all update their state each round, as the single in-process
    replica does, so later rounds agree whichever rank hosts the Byzantine workers then."""
    if stateful:
        return attack_ranks(cfg, groups)
    return [r for r, g in enumerate(groups, 1) if byz[g.start:g.stop].any()]


# -- waiting -------------------------------------------------------------------------------------
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
    b = Backoff()
    from mpi4py import MPI

    while not MPI.Request.Testall(reqs):
        b.pause()


# -- attack info and attack state as numbers -----------------------------------------------------
_KEY = r"[A-Za-z_][A-Za-z0-9_]{0,31}"
_INFO_ITEM = re.compile(rf"({_KEY})=(?:i:(-?\d{{1,19}})|b:([01])|"
                        r"f:([-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|inf|nan)))")


def encode_info(info: dict) -> np.ndarray:
    """The attack's per-round info (scalars only) as INFO_BYTES of ASCII; other values are dropped."""
    items = []
    for k, v in info.items():
        if not re.fullmatch(_KEY, str(k)):
            continue
        if isinstance(v, bool):
            items.append(f"{k}=b:{int(v)}")
        elif isinstance(v, (int, np.integer)):
            items.append(f"{k}=i:{int(v)}")
        elif isinstance(v, (float, np.floating)):
            items.append(f"{k}=f:{float(v)!r}")
    out = np.zeros(INFO_BYTES, np.uint8)
    text = b""
    for item in items:
        if len(text) + len(item) + 1 > INFO_BYTES:
            break
        text += (b";" if text else b"") + item.encode()
    out[:len(text)] = np.frombuffer(text, np.uint8)
    return out


def decode_info(buf: np.ndarray) -> dict | None:
    """Inverse of :func:`encode_info`; None if the bytes are not a well-formed info string."""
    raw = bytes(buf).split(b"\0", 1)[0]
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    out: dict[str, Any] = {}
    for item in filter(None, text.split(";")):
        m = _INFO_ITEM.fullmatch(item)
        if m is None:
            return None
        key, i, b, f = m.groups()
        out[key] = int(i) if i is not None else bool(int(b)) if b is not None else float(f)
    return out


# Value tags of the state encoding.
_NONE, _INT, _FLOAT, _BOOL, _FTENSOR, _ITENSOR = range(6)
MAX_NDIM = 4


def encode_state(state: dict) -> np.ndarray:
    """A flat attack state {key: None | bool | int | float | tensor} as float64 numbers, keys in
    sorted order: per key ``tag [value | ndim shape... values...]``. Integers and float32 tensors
    are exact in float64."""
    out: list[np.ndarray] = []
    for key in sorted(state):
        v = state[key]
        if v is None:
            out.append(np.array([_NONE], np.float64))
        elif isinstance(v, bool):
            out.append(np.array([_BOOL, float(v)]))
        elif isinstance(v, (int, np.integer)):
            out.append(np.array([_INT, float(v)]))
        elif isinstance(v, (float, np.floating)):
            out.append(np.array([_FLOAT, float(v)]))
        elif isinstance(v, torch.Tensor):
            if v.dim() > MAX_NDIM:
                raise ValueError(f"attack state '{key}': at most {MAX_NDIM} dimensions")
            kind = _FTENSOR if v.is_floating_point() else _ITENSOR
            arr = v.detach().cpu().to(torch.float64).reshape(-1).numpy()
            out.append(np.concatenate([[kind, v.dim()], list(v.shape), arr]).astype(np.float64))
        else:
            raise ValueError(f"attack state '{key}' of type {type(v).__name__} cannot be sent")
    return np.concatenate(out) if out else np.zeros(0)


def decode_state(arr: np.ndarray, keys: list[str]) -> dict:
    """Inverse of :func:`encode_state` for the known ``keys``; ValueError on anything malformed
    (wrong tag, non-integral count, lengths that overrun the buffer, trailing numbers)."""
    arr = np.asarray(arr, np.float64)
    pos = 0

    def take(m: int) -> np.ndarray:
        nonlocal pos
        if m < 0 or pos + m > len(arr):
            raise ValueError("attack state overruns its buffer")
        pos += m
        return arr[pos - m:pos]

    def integer(x: float) -> int:
        if not math.isfinite(x) or x != int(x) or abs(x) > 2**53:
            raise ValueError(f"attack state holds {x} where an integer belongs")
        return int(x)

    out: dict[str, Any] = {}
    for key in sorted(keys):
        kind = integer(take(1)[0])
        if kind == _NONE:
            out[key] = None
        elif kind == _INT:
            out[key] = integer(take(1)[0])
        elif kind == _BOOL:
            out[key] = bool(integer(take(1)[0]))
        elif kind == _FLOAT:
            out[key] = float(take(1)[0])
        elif kind in (_FTENSOR, _ITENSOR):
            ndim = integer(take(1)[0])
            if not 0 <= ndim <= MAX_NDIM:
                raise ValueError(f"attack state '{key}': {ndim} dimensions")
            shape = [integer(s) for s in take(ndim)]
            # Every dimension fits in the buffer, and the count is an exact Python integer: an
            # int64 product of hostile dimensions can wrap around and pass the length check.
            if any(s < 0 or s > len(arr) for s in shape):
                raise ValueError(f"attack state '{key}': shape {shape} does not fit its buffer")
            vals = take(math.prod(shape))
            t = torch.from_numpy(vals.copy()).reshape(shape)
            out[key] = t.to(torch.float32) if kind == _FTENSOR else t.to(torch.int64)
        else:
            raise ValueError(f"attack state '{key}': unknown value tag {kind}")
    if pos != len(arr):
        raise ValueError(f"attack state has {len(arr) - pos} trailing numbers")
    return out


def state_tensors(state: dict) -> list[str]:
    """The group's per-worker state tensors (all but the attack's state), in wire order."""
    return sorted(k for k in state if k != "attack")


# -- fault injection (tests) -------------------------------------------------------------------
def corrupt(kind: str | None, payload: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a faulty rank sends instead of the float32 ``payload`` (``--inject-fault``)."""
    if kind == "wrongsize":
        return payload.reshape(-1)[:-1]          # one float short
    if kind == "wrongdtype":
        return payload.astype(np.float64)        # twice the bytes: a truncation at rank 0
    if kind in ("nan", "inf", "huge"):
        return np.full_like(payload, {"nan": np.nan, "inf": np.inf, "huge": 1e30}[kind])
    if kind == "randombytes":
        return rng.integers(0, 256, payload.nbytes, dtype=np.uint8)
    return payload


# ``flood``: besides its real message, every round the rank sends one message larger than rank
# 0's 1 MiB drain scratch (master.mpi_transport.DRAIN_BYTES), then FLOOD_MESSAGES small ones of
# 0..FLOOD_SMALL_BYTES random bytes, all with tags no receive of rank 0 wants.
FLOOD_MESSAGES = 500
FLOOD_SMALL_BYTES = 64
FLOOD_BIG_BYTES = (1 << 20) + 4096
TAG_MAX = 32767            # the smallest MPI_TAG_UB the standard allows


def flood(seq: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """The stray messages of a ``flood`` rank in command ``seq``: (buffer, tag) pairs. Tags
    alternate between the previous command's (stale: already received or given up) and tags
    above the protocol's range (``tag`` never exceeds TAG_PERIOD * NUM_KINDS - 1)."""
    out = [(np.zeros(FLOOD_BIG_BYTES, np.uint8), TAG_MAX)]
    unused = TAG_MAX - TAG_PERIOD * NUM_KINDS + 1
    for i in range(FLOOD_MESSAGES):
        tg = (tag(seq - 1, i % NUM_KINDS) if i % 2 and seq > 1
              else TAG_PERIOD * NUM_KINDS + i % unused)
        out.append((rng.integers(0, 256, int(rng.integers(0, FLOOD_SMALL_BYTES + 1)),
                                 dtype=np.uint8), tg))
    return out


def stall_seconds(cfg: Config) -> float:
    """How long a ``stall`` rank sleeps before answering: twice the timeout, and at least 1.5 s
    past it, so a rank 0 starved of CPU for a moment still cannot mistake it for punctual
    (1 s without a timeout)."""
    t = cfg.round_timeout
    return t + max(t, 1.5) if t > 0 else 1.0


# -- the worker rank ---------------------------------------------------------------------------
def make_group(cfg: Config, problem: Problem, ids: range, device: torch.device):
    """The worker group of ``ids`` with a fresh attack object (as InProcessTransport builds it)."""
    from worker.group import make_worker_group

    attack = make_attack(cfg.attack, cfg.num_workers, cfg.num_byzantine,
                         problem.dataset.num_classes, **attack_params(cfg))
    return make_worker_group(cfg, problem, ids, attack, device)


class WorkerRank:
    """Serves rank 0's commands for this rank's group of workers until STOP."""

    def __init__(self, cfg: Config, problem: Problem, device: torch.device, comm) -> None:
        self.cfg, self.comm, self.device = cfg, comm, device
        self.rank = comm.Get_rank()
        self.groups = rank_groups(cfg.num_workers, comm.Get_size() - 1)
        self.ids = self.groups[self.rank - 1]
        self.group = make_group(cfg, problem, self.ids, device)
        self.k, self.d = self.group.k, problem.dim
        self.stateful = is_stateful(self.group.attack)
        self.fault = parse_faults(cfg.inject_fault).get(self.rank)
        self.rng = np.random.default_rng([cfg.run_seed, self.rank])
        self.header = np.zeros(HEADER + cfg.num_workers, np.int64)
        self.params = np.zeros(self.d, np.float32)
        self.keys = state_tensors(self.group.state_dict())

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
                self.round(t, seq, self.header[HEADER:].astype(bool))
            elif cmd == CMD_STATE:
                states += 1
                if self.fault == "stallstate" and states >= 2:
                    late = seq
                else:
                    self.send_state(seq)
            elif cmd == CMD_LOAD:
                self.load_state(seq)
            elif cmd == CMD_SAMPLES:
                self.send_samples(seq)
            elif cmd == CMD_STOP:
                wait(comm.Ibarrier())
                return
            else:
                raise RuntimeError(f"rank {self.rank}: unknown command {cmd} from rank 0")

    def _send(self, bufs: list[tuple[np.ndarray, int]]) -> None:
        from mpi4py import MPI

        wait_all([self.comm.Isend([np.ascontiguousarray(b), MPI.BYTE], dest=0, tag=tg)
                  for b, tg in bufs])

    def round(self, t: int, seq: int, byz: np.ndarray) -> None:
        from mpi4py import MPI

        comm, g = self.comm, self.group
        wait(comm.Ibcast([self.params, MPI.FLOAT], root=0))
        local = torch.from_numpy(byz[self.ids.start:self.ids.stop].copy()).to(self.device)
        msgs = g.compute(torch.from_numpy(self.params).to(self.device), t, local)
        if self.cfg.protocol == "sign":  # election-coded signSGD: packed votes (worker/coded.py)
            out = g.wire.payload(msgs, self.ids)
        else:
            out = msgs.detach().to("cpu", torch.float32).contiguous().numpy()
        trailer = np.zeros(4 * self.k + INFO_BYTES, np.uint8)
        trailer[:4 * self.k] = g.losses.to(torch.float32).numpy().view(np.uint8)
        if local.any() and not g.attack.omniscient:
            trailer[4 * self.k:] = encode_info(g.attack.info)
        if self.fault == "stall":
            time.sleep(stall_seconds(self.cfg))
        if self.fault == "randombytes":
            trailer = self.rng.integers(0, 256, trailer.size, dtype=np.uint8)
        strays = flood(seq, self.rng) if self.fault == "flood" else []
        self._send(strays + [(corrupt(self.fault, out, self.rng), tag(seq, KIND_MSG)),
                             (trailer, tag(seq, KIND_TRAILER))])
        if not (g.attack.omniscient and byz.any()):
            return
        if self.rank not in crafting_ranks(self.cfg, self.groups, byz, self.stateful):
            return
        honest = self._recv_from_root(tag(seq, KIND_HONEST), np.float32).reshape(-1, self.d)
        rows = local.nonzero().flatten()
        own = take_rows(msgs, rows)
        if len(honest):
            crafted = g.craft(own, torch.from_numpy(honest).to(self.device), t, rows)
        else:  # every honest message was unusable: nothing to copy, send own rows
            crafted = own
        if len(rows) == 0:
            return
        reply = crafted.detach().to("cpu", torch.float32).contiguous().numpy()
        reply = corrupt(self.fault, reply, self.rng)
        self._send([(np.concatenate([reply.reshape(-1).view(np.uint8),
                                     encode_info(g.attack.info)]), tag(seq, KIND_CRAFT))])

    def _recv_from_root(self, tg: int, dtype) -> np.ndarray:
        """A message of rank 0 whose length this rank does not know in advance (rank 0 is trusted)."""
        from mpi4py import MPI

        st = MPI.Status()
        b = Backoff()
        while not self.comm.Iprobe(source=0, tag=tg, status=st):
            b.pause()
        buf = np.empty(st.Get_count(MPI.BYTE) // np.dtype(dtype).itemsize, dtype)
        wait(self.comm.Irecv([buf, MPI.BYTE], source=0, tag=tg))
        return buf

    def send_samples(self, seq: int) -> None:
        """DiverseFL: this rank's clients' data samples (master/diversefl.py) as two buffers."""
        from master.diversefl import client_samples, pack_samples

        x, y = pack_samples(client_samples(self.cfg, self.group.problem, self.ids))
        self._send([(x.reshape(-1).view(np.uint8), tag(seq, KIND_SAMPLE_X)),
                    (y.view(np.uint8), tag(seq, KIND_SAMPLE_Y))])

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
        from mpi4py import MPI

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
