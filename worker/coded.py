"""Election-coded signSGD workers (Sohn, Han, Choi, Moon, NeurIPS 2020) and their wire format.

Each round the master's global minibatch of B = ``--batch_size`` samples is cut into n slices of
``s = B // n`` samples (the remainder ``B mod n`` is not used; e.g. B = 120, n = 5: 24 per slice).
Node j computes the gradient of every slice k with ``G[j, k] = 1`` (the allocation matrix of
:func:`common.coding.make_code`), takes its sign and sends the local majority
``sign(sum_k sign(g_k))`` (:func:`common.coding.node_votes`). Byzantine nodes send the attack
applied to their own vote (``reverse``: minus it, ``directional``: all -1, ``random``: uniform
+-1).

Sampling. The paper draws the global minibatch iid from the whole training set (a shuffled
data loader; the master assigns slices to nodes per G), so the batch of round t is samples
``t*B .. t*B + B-1`` of an endless sequence of epochs, each a fresh permutation of the training
set keyed by (run seed, epoch); ``--partition`` does not apply. Every group draws the same
sequence, so a node's vote does not depend on which process hosts it.

Wire format (:class:`VoteWire`). Node j's vote travels bit-packed (:mod:`common.bitpack`):
1 bit per coordinate when its row of G has an odd weight (its majority can only tie when a slice
gradient coordinate is exactly 0; such ties are broken by a fair coin keyed by (seed, round,
node), so the 1-bit alphabet {-1, +1} is exact), else 2 bits (ternary, a tie sends 0). The
in-process and MPI transports both hand the master a (n, width) uint8 stack whose row j is node
j's packed buffer, zero padded, with a last "present" byte (1 = received); a faulty row zeroed by
the server's sanitize policy thus counts as an abstention. The master tallies with
:func:`common.bitpack.sum_votes` (master/signsgd.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from common.attacks import Attack
from common.bitpack import pack_signs, pack_ternary, packed_nbytes, sum_votes
from common.coding import make_code, node_votes
from common.config import Config
from common.problem import Problem
from common.seeding import round_generator
from worker.group import WorkerGroup


def code_for(cfg: Config) -> np.ndarray:
    """The run's (n, n) allocation matrix: the same on every rank (Bernoulli: seeded by run seed)."""
    return make_code(cfg.num_workers, cfg.redundancy, cfg.deterministic, cfg.run_seed)


class VoteWire:
    """How the n nodes' votes are packed, and how the master counts them.

    ``bits[j]`` is 1 when row j of G has an odd weight, else 2; ``nbytes[j]`` is the size of
    node j's packed buffer; a stacked row is ``width = max(nbytes) + 1`` bytes (last: present).
    """

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


class CodedGroup(WorkerGroup):
    """Nodes ``ids`` of an election-coded signSGD run, hosted by one process.

    The group computes each slice gradient its nodes need once (one batched call over the slices,
    or a loop for convolutional models: :meth:`WorkerGroup.gradients`), and
    :meth:`compute` returns the nodes' packed votes as a (k, width) uint8 stack.
    """

    def __init__(self, cfg: Config, problem: Problem, ids: range, attack: Attack,
                 device: torch.device) -> None:
        super().__init__(cfg, problem, ids, attack, device)
        self.momenta = torch.zeros(self.k, 0, device=device)  # no worker momentum: the master's
        self.G = code_for(cfg)
        self.wire = VoteWire(self.G, problem.dim)
        rows = self.G[ids.start:ids.stop]
        self.slices = np.flatnonzero(rows.any(axis=0))          # slices this group computes
        self.local_G = torch.as_tensor(rows[:, self.slices], dtype=torch.float32, device=device)
        self.slice_size = cfg.batch_size // cfg.num_workers
        self._perm: tuple[int, Tensor] | None = None
        self.sent_bytes = [int(self.wire.nbytes[j]) for j in ids]

    # -- data ----------------------------------------------------------------------------------
    def _epoch_perm(self, epoch: int) -> Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = round_generator(self.cfg.run_seed, epoch, "coded_epoch")
            self._perm = (epoch, torch.randperm(len(self.y), generator=g).to(self.device))
        return self._perm[1]

    def slice_indices(self, t: int) -> Tensor:
        """(n, s) training-set indices of the n slices of round t's global minibatch."""
        n, B, s = self.cfg.num_workers, self.cfg.batch_size, self.slice_size
        N = len(self.y)
        pos = torch.arange(t * B, t * B + n * s)
        epochs, within = pos // N, pos % N
        idx = torch.empty(n * s, dtype=torch.long, device=self.device)
        for e in epochs.unique().tolist():
            sel = epochs == e
            idx[sel.to(self.device)] = self._epoch_perm(e)[within[sel].to(self.device)]
        return idx.view(n, s)

    # -- votes ---------------------------------------------------------------------------------
    def votes(self, params: Tensor, t: int, byz: Tensor) -> Tensor:
        """(k, d) float votes of the group's nodes in round t (Byzantine rows attacked)."""
        idx = self.slice_indices(t)[torch.as_tensor(self.slices, device=self.device)]
        grads = self.gradients(params, self.x[idx], self.y[idx])       # (m, d), m slices
        slice_losses = self.losses.to(self.local_G.device)
        self.losses = ((self.local_G @ slice_losses) / self.local_G.sum(1)).cpu()
        v = node_votes(torch.sign(grads), self.local_G)                 # ties give 0
        for j, node in enumerate(self.ids):
            if self.wire.bits[node] == 1:
                zero = v[j] == 0
                if zero.any():  # an exactly-zero slice gradient coordinate: a fair coin
                    g = round_generator(self.cfg.run_seed, t, "vote_tiebreak", node)
                    coin = torch.randint(0, 2, (v.shape[1],), generator=g).to(v) * 2 - 1
                    v[j] = torch.where(zero, coin, v[j])
        if byz.any():
            rows = byz.nonzero().flatten()
            self.attack_rows(v, rows, None, t)
        return v

    def compute(self, params: Tensor, t: int, byz: Tensor) -> Tensor:
        """The group's (k, width) uint8 stack of packed votes for round t (see :class:`VoteWire`)."""
        buffers = self.pack_all(self.votes(params, t, byz).cpu())
        self.sent_bytes = [int(b.nbytes) for b in buffers]  # measured, for metrics.jsonl
        return self.wire.stack(buffers)

    def pack_all(self, votes: Tensor) -> list[np.ndarray]:
        """Each node's packed buffer (what an MPI rank sends, one buffer per node)."""
        return [self.wire.pack(votes[j], node) for j, node in enumerate(self.ids)]
