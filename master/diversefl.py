"""DiverseFL (A. Prakash, S. Avestimehr, "Mitigating Byzantine Attacks in Federated Learning"):
per-client guiding gradients filter each client's upload.

At start-up every client j sends the server a small sample of its own data (``--share-frac`` of
its shard, at least one sample, chosen deterministically from the run seed: see
:func:`share_indices`). Each round the server computes, at the current model, the guiding
gradient g~_j of client j on that sample and accepts client j's message z_j iff

    C1_j = g~_j . z_j > 0          (direction test)   and
    eps1 < C2_j = ||z_j|| / ||g~_j|| < eps2   (length test).

The update is the mean of the accepted messages (zero if none is accepted); the server's step
adds the weight decay lambda (``--weight-decay``): theta <- theta - lr (mean + lambda theta).

Transfer of the samples: in one process the server reads them from ``problem.shards``
(:func:`client_samples`); under MPI the worker ranks send them as numeric buffers (float32
inputs, int64 labels) and the server checks every one with :func:`check_sample`. A client whose
sample is missing or malformed has no guiding gradient and is always rejected.

Diagnostics per round (``metrics.jsonl``, key ``rule``): ``flagged`` (rejected clients),
``accepted`` (their count), ``tp``/``fp``/``fn`` and ``precision``/``recall`` of the flags against
the true Byzantine set of the round (null when undefined), and ``c1``/``c2`` per client rounded to
4 significant digits, for the C1 x C2 scatter.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from common.config import Config
from common.finite import all_finite
from common.problem import Problem
from common.seeding import round_generator
from worker.group import choose_path

Sample = tuple[Tensor, Tensor]  # (s, *input_shape) float32 inputs, (s,) int64 labels

_SHARE_PURPOSE = "diversefl-share"


# ----------------------------------------------------------------------------------------------
# The shared samples

def share_size(shard_len: int, frac: float) -> int:
    """How many samples a client with ``shard_len`` samples shares: round(frac * len), >= 1."""
    return max(1, min(shard_len, int(round(frac * shard_len))))


def share_indices(cfg: Config, shard: Tensor, worker: int) -> Tensor:
    """Training-set indices client ``worker`` shares: a seeded draw without replacement."""
    g = round_generator(cfg.run_seed, 0, _SHARE_PURPOSE, worker)
    pick = torch.randperm(len(shard), generator=g)[:share_size(len(shard), cfg.share_frac)]
    return torch.as_tensor(shard).long()[pick]


def client_samples(cfg: Config, problem: Problem, ids: Sequence[int]) -> list[Sample]:
    """The samples clients ``ids`` send the server: contiguous float32 inputs and int64 labels."""
    ds = problem.dataset
    out = []
    for i in ids:
        idx = share_indices(cfg, problem.shards[i], i)
        out.append((ds.x_train[idx].to(torch.float32).contiguous(),
                    ds.y_train[idx].to(torch.int64).contiguous()))
    return out


def expected_counts(cfg: Config, problem: Problem) -> list[int]:
    """Sample size of every client: the server knows it from the (shared, seeded) partition."""
    return [share_size(len(s), cfg.share_frac) for s in problem.shards]


def check_sample(x: Tensor, y: Tensor, count: int, input_shape: Sequence[int],
                 num_classes: int) -> str | None:
    """Why a received sample is unusable (wrong size, dtype, non-finite input, bad label), or None."""
    if x.dtype != torch.float32 or y.dtype != torch.int64:
        return f"dtypes {x.dtype}/{y.dtype}, expected float32/int64"
    if tuple(x.shape) != (count, *input_shape) or tuple(y.shape) != (count,):
        return f"shapes {tuple(x.shape)}/{tuple(y.shape)}, expected {(count, *input_shape)}/({count},)"
    if not all_finite(x):
        return "non-finite inputs"
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        return f"labels outside [0, {num_classes})"
    return None


def pack_samples(samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """A worker rank's samples as the two numeric buffers it sends rank 0 (clients in order):
    float32 inputs (sum s_j, *input_shape) and int64 labels (sum s_j,)."""
    x = torch.cat([s[0] for s in samples]).to(torch.float32).contiguous().numpy()
    y = torch.cat([s[1] for s in samples]).to(torch.int64).contiguous().numpy()
    return x, y


def unpack_samples(x: np.ndarray, y: np.ndarray, counts: Sequence[int],
                   input_shape: Sequence[int], num_classes: int) -> list[tuple[Sample | None, str | None]]:
    """Split one rank's received buffers into its clients' samples, each checked with
    :func:`check_sample`: ``(sample, None)`` or ``(None, reason)``."""
    out: list[tuple[Sample | None, str | None]] = []
    start = 0
    for c in counts:
        xs = torch.from_numpy(np.array(x[start:start + c], dtype=np.float32, copy=True))
        ys = torch.from_numpy(np.array(y[start:start + c], dtype=np.int64, copy=True))
        start += c
        why = check_sample(xs, ys, c, input_shape, num_classes)
        out.append((None, why) if why else ((xs, ys), None))
    return out


# ----------------------------------------------------------------------------------------------
# The filter (pure functions)

def filter_decisions(guides: Tensor, msgs: Tensor, eps1: float, eps2: float
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """(accept (n,) bool, C1 (n,), C2 (n,)) for guiding gradients and messages, both (n, d).

    C1_j = g~_j . z_j and C2_j = ||z_j|| / ||g~_j||, computed row by row in float64 (so huge
    finite messages cannot overflow, and no (n, d) float64 copy is made). A zero guiding gradient
    gives C1 = 0 and is rejected.
    """
    n = msgs.shape[0]
    c1 = torch.empty(n, dtype=torch.float64)
    c2 = torch.empty(n, dtype=torch.float64)
    for j in range(n):
        g, z = guides[j].double(), msgs[j].double()
        c1[j] = torch.dot(g, z)
        gn, zn = torch.linalg.vector_norm(g), torch.linalg.vector_norm(z)
        c2[j] = zn / gn if gn > 0 else (math.inf if zn > 0 else math.nan)
    accept = (c1 > 0) & (c2 > eps1) & (c2 < eps2)
    return accept, c1, c2


def precision_recall(flagged: Tensor, byzantine: Tensor) -> dict:
    """Counts and precision/recall of ``flagged`` against the true ``byzantine`` mask (both (n,) bool).

    precision = tp / (tp + fp) (None if nothing was flagged); recall = tp / (tp + fn) (None if
    nobody was Byzantine).
    """
    flagged, byzantine = flagged.bool().cpu(), byzantine.bool().cpu()
    tp = int((flagged & byzantine).sum())
    fp = int((flagged & ~byzantine).sum())
    fn = int((~flagged & byzantine).sum())
    return {"tp": tp, "fp": fp, "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None}


def _sig4(v: float) -> float | None:
    """``v`` rounded to 4 significant digits (None for NaN/Inf: JSON has no such numbers)."""
    return float(f"{v:.4g}") if math.isfinite(v) else None


# ----------------------------------------------------------------------------------------------
# Guiding gradients

class GuidingGradients:
    """Every client's gradient of the mean cross-entropy on its shared sample, at given params.

    Vectorised over clients (``torch.func.vmap`` of a masked loss over samples padded to the
    longest one) unless the worker group would use a per-client loop for the model
    (:func:`worker.group.choose_path`), in which case so does this.
    Clients with no usable sample (None) get the zero vector.
    """

    def __init__(self, problem: Problem, samples: Sequence[Sample | None], path: str,
                 device: torch.device) -> None:
        self.model, self.flat, self.device, self.path = problem.model, problem.flat, device, path
        self.n = len(samples)
        shape = tuple(problem.dataset.input_shape)
        self.samples = [None if s is None else (s[0].to(device), s[1].to(device)) for s in samples]
        s_max = max([len(s[1]) for s in samples if s is not None], default=1)
        self.x = torch.zeros(self.n, s_max, *shape, device=device)
        self.y = torch.zeros(self.n, s_max, dtype=torch.long, device=device)
        self.w = torch.zeros(self.n, s_max, device=device)  # 1/s_j on real samples, 0 on padding
        for j, s in enumerate(self.samples):
            if s is not None and len(s[1]):
                k = len(s[1])
                self.x[j, :k], self.y[j, :k], self.w[j, :k] = s[0], s[1], 1.0 / k
        self._vgrad = vmap(grad(self._loss), in_dims=(None, 0, 0, 0))

    def _loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor, w: Tensor) -> Tensor:
        out = functional_call(self.model, params, (x,))
        return (F.cross_entropy(out, y, reduction="none") * w).sum()

    def __call__(self, params: Tensor) -> Tensor:
        """(n, d) guiding gradients at ``params`` (d,)."""
        params = params.to(self.device)
        if self.path != "loop":  # vmap also for "linear": the padded samples need their weights
            grads = self._vgrad(self.flat.views(params), self.x, self.y, self.w)
            return self.flat.flatten_dict(grads, self.n).detach()
        out = torch.zeros(self.n, self.flat.dim, device=self.device)
        self.flat.load_into(self.model, params)
        for j, s in enumerate(self.samples):
            if s is None or not len(s[1]):
                continue
            self.model.zero_grad(set_to_none=True)
            F.cross_entropy(self.model(s[0]), s[1]).backward()
            self.flat.flatten_grads(self.model, out[j])
        return out


# ----------------------------------------------------------------------------------------------
# The server-side rule

class DiverseFL:
    """The server's DiverseFL rule: same call interface as a registry rule (``rule(x, honest)``).

    ``params`` is the server's live parameter vector (updated in place by the server's step), so
    guiding gradients are always taken at the current model. :meth:`set_samples` must be called
    once before the first round with what the clients sent.
    """

    name = "diversefl"
    stateful = False

    def __init__(self, cfg: Config, problem: Problem, device: torch.device, params: Tensor) -> None:
        self.cfg, self.problem, self.device, self.params = cfg, problem, device, params
        self.path = choose_path(cfg, problem.model)
        self.guides: GuidingGradients | None = None
        self.missing: list[int] = []
        self.info: dict = {}

    def set_samples(self, samples: Sequence[Sample | None]) -> None:
        """Install the clients' samples (None for a client whose sample never arrived or was bad)."""
        if len(samples) != self.cfg.num_workers:
            raise ValueError(f"DiverseFL expected {self.cfg.num_workers} samples, got {len(samples)}")
        self.missing = [j for j, s in enumerate(samples) if s is None]
        self.guides = GuidingGradients(self.problem, samples, self.path, self.device)

    def __call__(self, x: Tensor, honest: Tensor | None = None) -> Tensor:
        if self.guides is None:
            raise RuntimeError("DiverseFL has no client samples; call set_samples() before round 0")
        g = self.guides(self.params)
        accept, c1, c2 = filter_decisions(g, x, self.cfg.eps1, self.cfg.eps2)
        acc = accept.to(x.device)
        out = x[acc].mean(0) if bool(acc.any()) else torch.zeros_like(x[0])
        info: dict = {"flagged": (~accept).nonzero().flatten().tolist(),
                      "accepted": int(accept.sum())}
        if honest is not None:
            info.update(precision_recall(~accept, ~honest.bool().cpu()))
        if self.missing:
            info["no_sample"] = list(self.missing)
        info["c1"] = [_sig4(v) for v in c1.tolist()]
        info["c2"] = [_sig4(v) for v in c2.tolist()]
        self.info = info
        return out

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        """Stateless: the samples are re-sent at start-up, the model is the server's."""
