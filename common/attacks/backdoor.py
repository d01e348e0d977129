"""``backdoor``: model replacement (Bagdasaryan et al., AISTATS 2020, as used by DiverseFL).

A Byzantine worker trains on a batch of which roughly half (ceil(b/2) samples) are examples of
the source class (4): drawn from its own source-class samples when its shard has any, otherwise
from the source-class samples of the whole training set (the attacker brings its backdoor data;
with the sorted non-iid split most clients hold no 4s). The rest of the batch is its usual draw
from its own shard, which keeps the main task in its update. The labels are then relabelled
source -> target (4 -> 9) and the update scaled by ``scale`` (4). Every evaluation reports
``backdoor_accuracy``: the percentage of test samples of the source class classified as target.

The batch draws are keyed by (seed, round, "backdoor-batch") and sliced by global worker index,
so a worker's batch does not depend on which group or rank hosts it.
"""
from __future__ import annotations

import torch
from torch import Tensor

from common.attacks.base import ATTACKS, Attack, AttackInput
from common.data.partition import group_batches, pad_shards
from common.errors import ConfigError
from common.params import Param
from common.seeding import round_generator

__all__ = ["backdoor_labels", "BackdoorSampler", "Backdoor"]


def backdoor_labels(y: Tensor, source: int = 4, target: int = 9) -> Tensor:
    """Backdoor relabelling: every label equal to ``source`` becomes ``target`` (new tensor)."""
    return torch.where(y == source, torch.full_like(y, target), y)


class BackdoorSampler:
    """Source-class sample tables for workers ``ids``; :meth:`compose` rewrites Byzantine rows."""

    def __init__(self, problem, ids: range, source: int, num_workers: int, seed: int,
                 device: torch.device) -> None:
        self.ids, self.num_workers, self.seed = ids, num_workers, seed
        y = problem.dataset.y_train
        everywhere = (y == source).nonzero().flatten()
        if len(everywhere) == 0:
            raise ConfigError(f"backdoor: the training set has no samples of class {source}")
        tables = []
        for i in ids:
            shard = torch.as_tensor(problem.shards[i]).long()
            own = shard[y[shard] == source]
            tables.append(own if len(own) else everywhere)
        table, lengths = pad_shards(tables)
        self.table, self.lengths = table.to(device), lengths.to(device)

    def compose(self, x_all: Tensor, y_all: Tensor, x: Tensor, y: Tensor, byz: Tensor,
                t: int, step: int = 0, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(x, y) with the first ceil(b/2) entries of every Byzantine row replaced by source
        samples. ``rows``: the group-local worker of each row of x (None: all, in order);
        ``step``: the local step of the round (federated mode), each drawing afresh."""
        b = y.shape[1]
        h = (b + 1) // 2
        idx = group_batches(self.table, self.lengths, h, self.num_workers, self.ids,
                            round_generator(self.seed, t, "backdoor-batch", step), rows)
        bad = byz.nonzero().flatten()
        x, y = x.clone(), y.clone()
        x[bad, :h] = x_all[idx[bad]]
        y[bad, :h] = y_all[idx[bad]]
        return x, y


@ATTACKS.register
class Backdoor(Attack):
    """Train on source examples relabelled as target, send the update scaled (model replacement).

    ``poison_labels``: every label ``source`` becomes ``target``; :meth:`batch_sampler`
    composes the batch; ``craft``: each row = ``scale * own`` (per worker).
    """

    name = "backdoor"
    params = (Param("source", int, 4, "class whose examples carry the backdoor", low=0),
              Param("target", int, 9, "class the backdoor maps them to", low=0),
              Param("scale", float, 4.0, "factor of the update (model replacement)"))

    def _setup(self, source: int, target: int, scale: float) -> None:
        for key, v in (("source", source), ("target", target)):
            if v >= self.num_classes:
                raise ConfigError(f"attack 'backdoor': parameter {key}={v} is not a class of this "
                                  f"dataset (valid 0..{self.num_classes - 1}); set "
                                  f"--backdoor-source/--backdoor-target")
        self.source, self.target, self.scale = source, target, scale

    def poison_labels(self, y: Tensor) -> Tensor:
        return backdoor_labels(y, self.source, self.target)

    def _craft(self, inp: AttackInput, own: Tensor, out: Tensor | None) -> Tensor:
        return own * self.scale

    def batch_sampler(self, problem, ids, num_workers, seed, device):
        return BackdoorSampler(problem, ids, self.source, num_workers, seed, device)

    def test_metric(self):
        return ("backdoor_accuracy", self.source, self.target)
