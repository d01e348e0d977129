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

The samples are the protocol's start-up exchange: every worker group sends its clients'
samples as two numeric buffers (float32 inputs, int64 labels; :mod:`common.wire.samples`), in
one process and under MPI alike, and the server checks every one with
:func:`common.wire.samples.check_sample`. A client whose sample is missing or malformed has no
guiding gradient and is always rejected.

Diagnostics per round (``metrics.jsonl``, key ``rule``): ``flagged`` (rejected clients),
``accepted`` (their count), ``tp``/``fp``/``fn`` and ``precision``/``recall`` of the flags against
the true Byzantine set of the round (null when undefined), and ``c1``/``c2`` per client rounded to
4 significant digits, for the C1 x C2 scatter.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from common.aggregation.rules import RULES, Rule
from common.compute.paths import choose_path
from common.errors import require
from common.params import Param
from common.protocols.base import PROTOCOLS, plain_uploads
from common.protocols.gradient import Gradient
from common.rows import take_rows
from common.seeding import round_generator
from common.wire.samples import Sample, pack_samples, unpack_samples

if TYPE_CHECKING:  # annotations only: the config and problem modules import the protocols
    from common.run.config import Config
    from common.run.problem import Problem

__all__ = ["DiverseFL", "DiverseFLRule", "DiverseFLFilter", "GuidingGradients", "DIVERSEFL",
           "share_size", "share_indices", "client_samples", "expected_counts",
           "filter_decisions", "precision_recall"]

_SHARE_PURPOSE = "diversefl-share"


# ----------------------------------------------------------------------------------------------
# The shared samples

def share_size(shard_len: int, frac: float) -> int:
    """How many samples a client with ``shard_len`` samples shares: round(frac * len), >= 1."""
    return max(1, min(shard_len, int(round(frac * shard_len))))


def share_indices(cfg: Config, shard: Tensor, worker: int) -> Tensor:
    """Training-set indices client ``worker`` shares: a seeded draw without replacement."""
    g = round_generator(cfg.run_seed, 0, _SHARE_PURPOSE, worker)
    pick = torch.randperm(len(shard), generator=g)[:share_size(len(shard), cfg.rule_values["share_frac"])]
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
    return [share_size(len(s), cfg.rule_values["share_frac"]) for s in problem.shards]


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
    (:func:`common.compute.paths.choose_path`), in which case so does this.
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

class DiverseFLFilter:
    """The server's DiverseFL rule (``rule(x, honest)``).

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

    def __call__(self, x: Tensor, honest: Tensor | None = None, f: int | None = None,
                 workers: Tensor | None = None, generator=None) -> Tensor:
        """The filtered mean; ``workers``: the client of each row (None: row j is client j)."""
        if self.guides is None:
            raise RuntimeError("DiverseFL has no client samples; call set_samples() before round 0")
        g = self.guides(self.params)
        if workers is not None:
            g = take_rows(g, workers)
        accept, c1, c2 = filter_decisions(g, x, self.cfg.rule_values["eps1"],
                                          self.cfg.rule_values["eps2"])
        acc = accept.to(x.device)
        out = x[acc].mean(0) if bool(acc.any()) else torch.zeros_like(x[0])
        flagged = (~accept).nonzero().flatten()
        if workers is not None:
            flagged = workers[flagged]
        info: dict = {"flagged": flagged.tolist(),
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


@RULES.register
class DiverseFLRule(Rule):
    """DiverseFL: the mean of the uploads that agree with their client's guiding gradient.

    An upload is accepted iff its direction and length agree with the guiding gradient.
    """

    name = "diversefl"
    protocol = "diversefl"
    tensor_rule = False
    per_worker = True
    params = (Param("share_frac", float, 0.01, "fraction of its data each client shares with the "
                    "server", low=0, low_open=True, high=1, key="share_frac"),
              Param("eps1", float, 0.5, "lower length ratio", low=0, key="eps1"),
              Param("eps2", float, 2.0, "upper length ratio", low=0, key="eps2"))

    @classmethod
    def check_values(cls, values) -> None:
        require(values["eps1"] < values["eps2"], f"DiverseFL needs 0 <= --eps1 < --eps2, got "
             f"eps1={values['eps1']}, eps2={values['eps2']}")


class DiverseFL(Gradient):
    """Gradients filtered per client by a guiding gradient on the sample it shared at start-up."""

    name = "diversefl"
    has_startup = True

    def validate(self, cfg, chain) -> None:
        # The filter tests each client's own upload; momentum would break the length test.
        plain_uploads(cfg, chain)

    def startup_payload(self, cfg, problem, ids: range) -> list[np.ndarray]:
        x, y = pack_samples(client_samples(cfg, problem, ids))
        return [x, y]

    def startup_buffers(self, cfg, problem, ids: range) -> list[np.ndarray]:
        c = sum(expected_counts(cfg, problem)[ids.start:ids.stop])
        shape = tuple(problem.dataset.input_shape)
        return [np.zeros((c, *shape), np.float32), np.zeros(c, np.int64)]

    def startup_decode(self, cfg, problem, ids, bufs, warn) -> list:
        if bufs is None:
            warn(f"no usable DiverseFL samples arrived from workers {ids.start}..{ids.stop - 1}; "
                 "they will be rejected every round")
            return [None] * len(ids)
        ds = problem.dataset
        counts = expected_counts(cfg, problem)[ids.start:ids.stop]
        out = []
        for j, (sample, why) in zip(ids, unpack_samples(*bufs, counts, tuple(ds.input_shape),
                                                         ds.num_classes)):
            if why:
                warn(f"worker {j}'s DiverseFL sample is unusable ({why}); it will be rejected "
                     "every round")
            out.append(sample)
        return out

    def server_rule(self, cfg, problem, device, params, n_in) -> DiverseFLFilter:
        return DiverseFLFilter(cfg, problem, device, params)

    def start(self, rule: DiverseFLFilter, startup: list) -> None:
        rule.set_samples(startup)


DIVERSEFL = PROTOCOLS.register(DiverseFL())
