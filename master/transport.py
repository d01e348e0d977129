"""How a round's messages reach the server. ``InProcessTransport`` hosts the workers' group in
this process (``main.py``); ``master.mpi_transport.MPITransport`` talks to worker ranks
(``MPI_main.py``). The server and the round loop are the same for both."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from master.messages import OK, usable_honest


@dataclass
class RoundResult:
    """One round's messages as the server receives them.

    ``checked``/``finite``: rows whose finiteness the transport already knows (the omniscient
    attack's honest rows), so the message policy does not read them again."""

    messages: Tensor                 # (n, d) on the server's device (sign votes: (n, width));
                                     # (m, d) when the round samples m clients, in their order
    status: list[str]                # per row: "ok" or why the message is unusable
    losses: Tensor                   # per row: training loss of the worker's batch (nan if unknown)
    info: dict = field(default_factory=dict)
    checked: Tensor | None = None
    finite: Tensor | None = None


class Transport:
    """Interface: one call per round, the protocol's start-up exchange, and the worker-side
    state for checkpoints."""

    def round(self, params: Tensor, t: int, byz: np.ndarray,
              clients: np.ndarray | None = None) -> RoundResult:
        """Round t's messages: one row per worker, or per client of the sorted sample
        ``clients`` (the others compute and send nothing); ``byz``: the (n,) Byzantine mask."""
        raise NotImplementedError

    def startup(self) -> list:
        """The protocol's start-up exchange: what every worker sent, decoded and checked (None
        for a worker whose part is missing or malformed)."""
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

    def describe(self) -> dict:
        """How the run was executed, for ``summary.json`` (entry point, ranks, hosts)."""
        return {"entry": "main.py", "processes": 1}


class InProcessTransport(Transport):
    """All n workers as one worker group in this process (``group``: a
    :class:`worker.group.WorkerGroup` of range(n), built by the caller)."""

    def __init__(self, group, protocol) -> None:
        self.group, self.protocol = group, protocol

    def round(self, params: Tensor, t: int, byz: np.ndarray,
              clients: np.ndarray | None = None) -> RoundResult:
        group = self.group
        mask = torch.from_numpy(byz).to(group.device)
        active, bad = None, byz               # bad: the Byzantine mask of the message rows
        if clients is not None:
            active = torch.zeros(len(byz), dtype=torch.bool, device=group.device)
            active[torch.from_numpy(clients).to(group.device)] = True
            bad = byz[clients]
        msgs = group.compute(params, t, mask, active)
        status = [OK] * len(bad)
        info, checked, finite = {}, None, None
        if group.attack.omniscient and bad.any():
            honest, checked, finite = usable_honest(msgs, status, bad)
            if len(honest):
                group.attack_rows(msgs, torch.from_numpy(bad).nonzero().flatten().to(group.device),
                                  honest, t)
        if bad.any() and group.attack.info:
            info["attack"] = group.attack.info
        info.update(group.wire.round_info(msgs))
        return RoundResult(messages=msgs, status=status, losses=group.losses, info=info,
                           checked=checked, finite=finite)

    def startup(self) -> list:
        g, p = self.group, self.protocol
        ids = range(g.cfg.num_workers)
        payload = [np.ascontiguousarray(b) for b in p.startup_payload(g.cfg, g.problem, ids)]
        return p.startup_decode(g.cfg, g.problem, ids, payload, _warn)

    def state_dict(self) -> dict:
        return self.group.state_dict()

    def load_state_dict(self, d: dict) -> None:
        self.group.load_state_dict(d)


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)
