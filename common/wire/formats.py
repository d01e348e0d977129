"""The message formats of the protocols: what a worker rank sends rank 0 each round, and how rank
0 receives it into buffers it allocated of the size it computed.

* :class:`FloatRows`: one float32 row of d numbers per worker (gradients, momenta, models).
* :class:`VoteWire`: election-coded sign votes, bit-packed (:mod:`common.coding.bitpack`): 1 bit
  per coordinate for a node whose row of G has an odd weight (its majority can only tie when a
  slice gradient coordinate is exactly 0; such ties are broken by a fair coin, so the 1-bit
  alphabet {-1, +1} is exact), else 2 bits (ternary, a tie sends 0). Both transports hand the
  master a (n, width) uint8 stack whose row j is node j's packed buffer, zero padded, with a
  last "present" byte (1 = received); a faulty row zeroed by the server's message policy thus
  counts as an abstention.

Both have the same interface for the transports: ``rank_nbytes(ids)``, ``payload(msgs, ids)``
(a worker rank's message), ``receiver(n, groups)`` (rank 0's buffers and the round's messages)
and ``round_info(messages)`` (what ``metrics.jsonl`` logs about the wire).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from common.coding.bitpack import pack_signs, pack_ternary, packed_nbytes, sum_votes

__all__ = ["FloatRows", "FloatReceiver", "VoteWire", "VoteReceiver"]


class FloatRows:
    """One float32 message of d numbers per worker."""

    floating = True  # rows can hold NaN, and omniscient attacks craft on them

    def __init__(self, d: int) -> None:
        self.d = int(d)

    def rank_nbytes(self, ids: range) -> int:
        """Bytes of the message of a rank hosting ``ids``."""
        return 4 * self.d * len(ids)

    def payload(self, msgs: Tensor, ids: range) -> np.ndarray:
        """A worker rank's message: its (k, d) rows as float32."""
        return msgs.detach().to("cpu", torch.float32).contiguous().numpy()

    def round_info(self, messages: Tensor) -> dict:
        return {}

    def receiver(self, n: int, groups: list[range]) -> "FloatReceiver":
        return FloatReceiver(n, self.d, groups)


class FloatReceiver:
    """Rank 0's (n, d) float32 message buffer; each rank's rows are received in place.

    ``rows[r - 1]``: the rows of rank r's workers, its group by default; :meth:`arrange` lays
    out a round that samples clients: their rows in client order, so each rank's are
    consecutive, in the first m rows."""

    def __init__(self, n: int, d: int, groups: list[range]) -> None:
        self.groups = groups
        self.msg = np.zeros((n, d), np.float32)
        self.msg_t = torch.from_numpy(self.msg)
        self.rows: list[range] = list(groups)
        self.m = n

    def arrange(self, clients: np.ndarray | None) -> list[range]:
        """The rows of every rank for a round of the sorted ``clients`` (None: every worker),
        which the next receives and :meth:`messages` use; returned."""
        if clients is None:
            self.rows, self.m = list(self.groups), len(self.msg)
        else:
            ends = np.searchsorted(clients, [g.stop for g in self.groups])
            starts = [0, *ends[:-1]]
            self.rows = [range(int(a), int(b)) for a, b in zip(starts, ends)]
            self.m = len(clients)
        return self.rows

    def buffer(self, r: int) -> np.ndarray:
        """Where rank r's message lands: its workers' rows of the buffer."""
        rr = self.rows[r - 1]
        return self.msg[rr.start:rr.stop]

    def messages(self, status: list[str], ok: str, device: torch.device) -> Tensor:
        """The round's (n, d) (or (m, d)) messages on ``device`` (no copy on the CPU)."""
        out = self.msg_t[:self.m]
        return out if device.type == "cpu" else out.to(device)


class VoteWire:
    """Bit-packed sign votes (the sign protocol): how the n nodes' votes are packed, and how
    the master counts them.

    ``bits[j]`` is 1 when row j of G has an odd weight, else 2; ``nbytes[j]`` is the size of
    node j's packed buffer; a stacked row is ``width = max(nbytes) + 1`` bytes (last: present).
    """

    floating = False

    def __init__(self, G: np.ndarray, d: int) -> None:
        weights = np.asarray(G).sum(axis=1)
        self.d = int(d)
        self.bits = np.where(weights % 2 == 1, 1, 2).astype(np.int64)
        self.nbytes = np.array([packed_nbytes(d, int(b)) for b in self.bits], dtype=np.int64)
        self.width = int(self.nbytes.max()) + 1
        self.float32_bytes = 4 * self.d

    def pack(self, votes: Tensor, node: int) -> np.ndarray:
        """Node ``node``'s (d,) vote as its packed uint8 buffer of ``nbytes[node]`` bytes.

        A 1-bit node's alphabet is {-1, +1}: a value <= 0 is sent as -1 (only reachable by an
        attack that emits 0; honest votes of odd-weight rows are tie-broken before packing).
        """
        if self.bits[node] == 1:
            return pack_signs(votes, check=False)
        return pack_ternary(torch.sign(votes))

    def stack(self, buffers: Sequence[np.ndarray | None]) -> Tensor:
        """The (len(buffers), width) uint8 stack the master reads; None marks a missing buffer."""
        out = np.zeros((len(buffers), self.width), dtype=np.uint8)
        for i, buf in enumerate(buffers):
            if buf is not None:
                out[i, :len(buf)] = buf
                out[i, -1] = 1
        return torch.from_numpy(out)

    def payload_nbytes(self, nodes: range) -> int:
        """Bytes of the message of a rank hosting ``nodes``: their packed buffers back to back."""
        return int(self.nbytes[nodes.start:nodes.stop].sum())

    def payload(self, stack: Tensor, nodes: range) -> np.ndarray:
        """The MPI message of a rank hosting ``nodes``, from its (k, width) stack."""
        arr = stack.cpu().numpy()
        return np.concatenate([arr[i, :self.nbytes[j]] for i, j in enumerate(nodes)])

    def split(self, payload: np.ndarray, nodes: range) -> list[np.ndarray]:
        """Inverse of :meth:`payload` (rank 0, after checking ``len == payload_nbytes``)."""
        ends = np.cumsum(self.nbytes[nodes.start:nodes.stop])
        return np.split(payload, ends[:-1])

    def tally(self, rows: Tensor) -> tuple[Tensor, dict]:
        """``sum_j vote_j`` over the present, well-formed rows of an (n, width) stack.

        Returns the (d,) float32 sum and diagnostics: ``abstained`` (rows not present: missing or
        zeroed as faulty) and ``invalid`` (ternary buffers with a sign bit on a zero coordinate,
        which count as abstentions too).
        """
        arr = rows.cpu().numpy()
        if arr.dtype != np.uint8 or arr.shape != (len(self.bits), self.width):
            raise ValueError(f"vote stack must be uint8 of shape ({len(self.bits)}, {self.width}), "
                             f"got {arr.dtype} {arr.shape}")
        present = arr[:, -1] == 1
        total = torch.zeros(self.d)
        info: dict = {}
        nb = packed_nbytes(self.d, 1)
        ones = np.flatnonzero(present & (self.bits == 1))
        if len(ones):
            total += sum_votes(arr[ones, :nb], self.d, 1)
        twos = np.flatnonzero(present & (self.bits == 2))
        if len(twos):
            buf = arr[twos, :2 * nb]
            nz = np.unpackbits(buf[:, :nb], axis=1, count=self.d)
            pos = np.unpackbits(buf[:, nb:], axis=1, count=self.d)
            bad = (pos > nz).any(axis=1)
            if bad.any():
                info["invalid"] = twos[bad].tolist()
            if (~bad).any():
                total += sum_votes(buf[~bad], self.d, 2)
        if not present.all():
            info["abstained"] = np.flatnonzero(~present).tolist()
        return total, info

    # -- the transports' interface (as FloatRows) -------------------------------------------------
    def rank_nbytes(self, ids: range) -> int:
        """Bytes of the message of a rank hosting ``ids``."""
        return self.payload_nbytes(ids)

    def round_info(self, stack: Tensor) -> dict:
        """``{"wire": {"vote_bytes": [...], "float32_bytes": 4d}}``: the bytes each node put on
        the wire this round (0 for a node whose vote did not arrive) against a float32 message."""
        present = stack[:, -1].cpu().numpy() == 1
        return {"wire": {"vote_bytes": [int(b) if p else 0 for b, p in zip(self.nbytes, present)],
                         "float32_bytes": self.float32_bytes}}

    def receiver(self, n: int, groups: list[range]) -> "VoteReceiver":
        return VoteReceiver(self, groups)


class VoteReceiver:
    """Rank 0's receive buffers for packed votes, one per worker rank."""

    def __init__(self, wire: VoteWire, groups: list[range]) -> None:
        self.wire, self.groups = wire, groups
        self.bufs = [np.zeros(wire.payload_nbytes(g), np.uint8) for g in groups]

    def buffer(self, r: int) -> np.ndarray:
        """Where rank r's message lands."""
        return self.bufs[r - 1]

    def messages(self, status: list[str], ok: str, device: torch.device) -> Tensor:
        """The (n, width) stack of the received votes; a rank whose message was unusable leaves
        its nodes absent (they abstain)."""
        bufs: list = [None] * sum(len(g) for g in self.groups)
        for r, g in enumerate(self.groups, 1):
            if status[g.start] == ok:
                bufs[g.start:g.stop] = self.wire.split(self.bufs[r - 1], g)
        return self.wire.stack(bufs).to(device)

