"""How a round's messages reach the server. ``InProcessTransport`` hosts every worker in this
process (``main.py``); ``master.mpi_transport.MPITransport`` talks to worker ranks
(``MPI_main.py``). The server and the round loop are the same for both."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from common.attacks import make_attack
from common.config import Config, attack_params
from common.problem import Problem
from common.rows import take_rows
from master.messages import OK
from worker.group import make_worker_group


@dataclass
class RoundResult:
    messages: Tensor                 # (n, d) on the server's device
    status: list[str]                # per worker: "ok" or why the message is unusable
    losses: Tensor                   # (n,) training loss of each worker's batch (nan if unknown)
    info: dict = field(default_factory=dict)


class Transport:
    """Interface: one call per round, plus the worker-side state for checkpoints."""

    def round(self, params: Tensor, t: int, byz: np.ndarray) -> RoundResult:
        raise NotImplementedError

    def shared_samples(self) -> list:
        """DiverseFL start-up: every client's data sample, (float32 inputs, int64 labels) or None
        for a client whose sample is missing or malformed (see master/diversefl.py)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The workers' state for a checkpoint: {tensor name: (n, ...) tensor, "attack": dict},
        plus optionally "missing": the indices of workers whose state could not be collected
        (MPI only). Their rows are zeros in tensors the transport does not use any more, which
        the caller fills in. ``load_state_dict`` takes the same dict, without "missing"."""
        raise NotImplementedError

    def load_state_dict(self, d: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcessTransport(Transport):
    """All n workers as one vectorised group in this process."""

    def __init__(self, cfg: Config, problem: Problem, device: torch.device) -> None:
        n = cfg.num_workers
        attack = make_attack(cfg.attack, n, cfg.num_byzantine, problem.dataset.num_classes,
                             **attack_params(cfg))
        self.group = make_worker_group(cfg, problem, range(n), attack, device)
        self.cfg = cfg

    def round(self, params: Tensor, t: int, byz: np.ndarray) -> RoundResult:
        group = self.group
        mask = torch.from_numpy(byz).to(group.device)
        msgs = group.compute(params, t, mask)
        info = {}
        if group.attack.omniscient and byz.any():
            rows = mask.nonzero().flatten()
            h = int((~mask).sum())
            # The fixed schedule's honest rows are the first n - f: pass a view, not a copy.
            honest = (msgs[:h] if not bool(mask[:h].any())
                      else take_rows(msgs, (~mask).nonzero().flatten()))
            group.attack_rows(msgs, rows, honest, t)
        if byz.any() and group.attack.info:
            info["attack"] = group.attack.info
        if self.cfg.protocol == "sign":  # bytes each node put on the wire (packed votes)
            info["wire"] = {"vote_bytes": group.sent_bytes,
                            "float32_bytes": group.wire.float32_bytes}
        return RoundResult(messages=msgs, status=[OK] * len(byz), losses=group.losses, info=info)

    def shared_samples(self) -> list:
        from master.diversefl import client_samples

        g = self.group
        return client_samples(g.cfg, g.problem, g.ids)

    def state_dict(self) -> dict:
        return self.group.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.group.load_state_dict(d)
