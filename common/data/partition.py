"""Splitting the training set across workers, and vectorised minibatch sampling.

Every function is deterministic given its ``torch.Generator`` and returns LongTensor index arrays
into the (possibly long-tail-subsampled) training set.

Schemes (``--partition``):

- ``iid``: a random permutation cut into ``num_shards`` pieces whose sizes differ by at most 1.
- ``noniid``: the papers' "non-iid": samples are sorted by label (shuffled within each class with
  the generator), then cut into ``num_shards`` contiguous blocks of (almost) equal size, so each
  shard holds 1-2 classes when ``num_shards >= num_classes`` and classes are balanced.
- ``dirichlet:ALPHA`` (ALPHA > 0): for every class, its samples are split across the shards in
  proportions drawn from Dirichlet(ALPHA, ..., ALPHA). Small ALPHA gives very skewed shards, large
  ALPHA approaches iid. The draws use ``numpy.random.default_rng`` seeded from the generator
  (torch distributions take no generator). If a shard ends up empty, one sample is moved to it
  from the currently largest shard (repeated until no shard is empty), so every worker can sample.
- ``shards:K`` (integer K >= 1): McMahan et al. (2017)'s pathological non-iid split. Samples
  are sorted by label (shuffled within each class), cut into ``num_shards * K`` contiguous shards
  of (almost) equal size, and every worker gets K of them drawn at random without replacement
  (``torch.randperm`` on the generator), so with balanced classes a worker holds at most K
  classes (one more if a shard straddles a class boundary). Guarantee for K >= 2: every worker
  holds at least two distinct classes whenever any assignment of the shards allows it, which is
  exactly when, for every class c, at most ``(K - 1) * num_shards`` shards hold class c alone
  (balanced classes: about ``num_shards * K / C`` each, so always when C >= 2 and K = 2; the
  10 classes of Fashion-MNIST at n = 20, K = 2 give 4 single-class shards per class). After the
  draw, each worker whose shards hold one class only swaps one of them with a shard of another
  worker (searched in a random order from the generator) such that both then hold two or more
  classes; under the condition above such a swap always exists and never breaks another worker.
  Otherwise the workers no swap can fix keep their draw (no split avoids them). K = 1: one random
  shard per worker (1-2 classes, like ``noniid`` with the blocks dealt at random).
- ``longtail`` / ``longtail:noniid``: the caller first keeps only :func:`longtail_indices` of the
  train and test sets (class c keeps a 0.5**c fraction); the remaining training samples are then
  split iid, or sorted by label as ``noniid`` (the bucketing paper's Table 1 runs both).

:func:`mimic2_layout` builds the two-dataset layout of the ``mimic2`` attack.

Sampling: :func:`pad_shards` turns k shards into one padded table and :func:`sample_batches` draws
a minibatch for every row at once from uniforms ``u`` of shape (k, batch_size)
(:func:`group_batches`: those of a group's workers, from one seeded draw for all n). Each worker's batch
depends only on its own row of ``u`` and its own shard, so splitting the workers into groups
differently (one process or many MPI ranks) yields identical batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from common.errors import ConfigError

SCHEME_HELP = ("iid, noniid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5), "
               "shards:K (integer K >= 1, e.g. shards:2), longtail, longtail:noniid")


def parse_scheme(scheme: str) -> tuple[str, float | int | None]:
    """``'dirichlet:0.5'`` -> ``('dirichlet', 0.5)``; ``'shards:2'`` -> ``('shards', 2)``;
    ``'iid'`` -> ``('iid', None)``; ``'longtail:noniid'`` -> ``('longtail', 'noniid')``.

    Accepts the aliases ``non-iid``/``non_iid`` and ``dir:ALPHA``. Raises ConfigError otherwise.
    """
    text = str(scheme).strip().lower()
    kind, sep, arg = text.partition(":")
    kind = {"non-iid": "noniid", "non_iid": "noniid", "dir": "dirichlet"}.get(kind, kind)
    if kind in ("iid", "noniid", "longtail") and not sep:
        return kind, None
    if kind == "longtail" and arg in ("iid", "noniid", "non-iid", "non_iid"):
        return "longtail", ("iid" if arg == "iid" else "noniid")
    if kind == "dirichlet" and sep:
        try:
            alpha = float(arg)
        except ValueError:
            alpha = float("nan")
        if math.isfinite(alpha) and alpha > 0:
            return "dirichlet", alpha
        raise ConfigError(f"bad partition '{scheme}': ALPHA must be a positive number; "
                          f"valid forms: {SCHEME_HELP}")
    if kind == "shards" and sep:
        try:
            k = int(arg)
        except ValueError:
            k = 0
        if k >= 1:
            return "shards", k
        raise ConfigError(f"bad partition '{scheme}': K must be an integer >= 1; "
                          f"valid forms: {SCHEME_HELP}")
    raise ConfigError(f"unknown partition '{scheme}'; valid forms: {SCHEME_HELP}")


def _check(labels: torch.Tensor, num_shards: int) -> None:
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if int(num_shards) < 1:
        raise ConfigError(f"need at least one data shard, got {num_shards}")
    if len(labels) < num_shards:
        raise ConfigError(f"cannot split {len(labels)} training samples into {num_shards} "
                          f"non-empty shards; use fewer workers or a larger dataset")


def _even_split(indices: torch.Tensor, num_shards: int) -> list[torch.Tensor]:
    return [part.clone() for part in torch.tensor_split(indices, num_shards)]


def iid_split(num_samples: int, num_shards: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Random permutation of ``range(num_samples)`` cut into near-equal pieces."""
    perm = torch.randperm(num_samples, generator=generator)
    return _even_split(perm, num_shards)


def partition(labels: torch.Tensor, num_shards: int, scheme: str,
              generator: torch.Generator) -> list[torch.Tensor]:
    """Split ``range(len(labels))`` into ``num_shards`` index arrays by ``scheme`` (see module doc)."""
    kind, arg = parse_scheme(scheme)
    labels = torch.as_tensor(labels).long()
    _check(labels, num_shards)
    if kind == "longtail":
        kind = arg or "iid"
    if kind == "iid":
        return iid_split(len(labels), num_shards, generator)
    if kind == "noniid":
        return _even_split(_label_order(labels, generator), num_shards)
    if kind == "shards":
        return _shards_split(labels, num_shards, int(arg), generator)
    return _dirichlet_split(labels, num_shards, arg, generator)


def _label_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices sorted by label, in a random order within each class."""
    perm = torch.randperm(len(labels), generator=generator)
    return perm[torch.sort(labels[perm], stable=True).indices]


def _shards_split(labels, num_shards, k, generator):
    """``shards:K``: K random label-sorted shards per worker, repaired so that with K >= 2 no
    worker holds a single class when that can be avoided (see the module doc)."""
    total = num_shards * k
    if len(labels) < total:
        raise ConfigError(f"partition shards:{k}: cannot cut {len(labels)} training samples into "
                          f"{num_shards} x {k} = {total} non-empty shards; use a smaller K, fewer "
                          f"workers or a larger dataset")
    pieces = _even_split(_label_order(labels, generator), total)
    classes = [frozenset(torch.unique(labels[p]).tolist()) for p in pieces]
    draw = torch.randperm(total, generator=generator).tolist()
    owned = [draw[i * k:(i + 1) * k] for i in range(num_shards)]
    if k >= 2:
        _repair_single_class(owned, classes, generator)
    return [torch.cat([pieces[j] for j in sorted(own)]) for own in owned]


def _single_class(shards: list[int], classes) -> int | None:
    """The one class the given shards hold, or None if they hold two or more."""
    held = frozenset().union(*(classes[j] for j in shards))
    return next(iter(held)) if len(held) == 1 else None


def _repair_single_class(owned: list[list[int]], classes, generator) -> None:
    """Swap shards (in place) until no worker holds a single class, where a swap can fix it.

    A worker i holding only class c gives one of its (pure-c) shards to a worker j and takes a
    shard t of j that holds another class, provided j's remaining shards hold a class other than
    c (so j keeps two or more classes; j may itself have been a single-class worker of another
    class). Worker i then holds c and the other class. Such a swap exists unless every other worker
    holds at least K - 1 pure-c shards, i.e. unless pure-c shards number more than (K - 1) n, and
    then no assignment avoids a single-class worker (pigeonhole)."""
    n = len(owned)
    order = torch.randperm(n, generator=generator).tolist()  # random candidate order
    for i in range(n):
        c = _single_class(owned[i], classes)
        if c is None:
            continue
        done = False
        for j in order:
            if j == i:
                continue
            for pos, t in enumerate(owned[j]):
                rest = owned[j][:pos] + owned[j][pos + 1:]
                if classes[t] <= {c} or not any(classes[r] - {c} for r in rest):
                    continue
                owned[i][0], owned[j][pos] = t, owned[i][0]
                done = True
                break
            if done:
                break


def _dirichlet_split(labels, num_shards, alpha, generator):
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    y = labels.numpy()
    parts: list[list[np.ndarray]] = [[] for _ in range(num_shards)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        p = rng.dirichlet(np.full(num_shards, alpha))
        if not np.all(np.isfinite(p)) or p.sum() <= 0:  # tiny alpha can underflow
            p = np.zeros(num_shards)
            p[rng.integers(num_shards)] = 1.0
        cuts = np.floor(np.cumsum(p) * len(idx)).astype(np.int64)[:-1]
        cuts = np.clip(cuts, 0, len(idx))
        for shard, piece in enumerate(np.split(idx, cuts)):
            parts[shard].append(piece)
    shards = [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]
    # no empty shard: move one sample from the largest shard (its last index) to each empty one
    for i in range(num_shards):
        if len(shards[i]) == 0:
            j = int(np.argmax([len(s) for s in shards]))
            shards[i], shards[j] = shards[j][-1:], shards[j][:-1]
    return [torch.from_numpy(s.astype(np.int64)) for s in shards]


def longtail_indices(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices keeping a random ``0.5**c`` fraction of class ``c`` (rounded, at least 1 sample).

    Apply it to the training and the test set (each with its own call) before partitioning.
    The result is sorted.
    """
    labels = torch.as_tensor(labels).long()
    keep = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c, as_tuple=True)[0]
        n_keep = max(1, int(round(len(idx) * 0.5 ** c)))
        perm = torch.randperm(len(idx), generator=generator)
        keep.append(idx[perm[:n_keep]])
    if not keep:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.cat(keep)).values


def mimic2_layout(labels: torch.Tensor, num_honest: int, num_classes: int,
                  generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Data layout of the ``mimic2`` attack.

    Dataset A = samples of classes ``[0, C//2)``, dataset B = classes ``[C//2, C)``. The first
    ``ceil(h/2)`` honest workers split A iid, the remaining ``floor(h/2)`` split B iid. Returns
    ``(honest_shards, a_indices)``: ``h`` shards, and the (sorted) indices of A, from which the
    Byzantine workers compute the gradient they all send, so the median sits on A.
    """
    labels = torch.as_tensor(labels).long()
    h = int(num_honest)
    if h < 1:
        raise ConfigError(f"mimic2 needs at least one honest worker, got {num_honest}")
    if num_classes < 2:
        raise ConfigError(f"mimic2 needs at least 2 classes, got {num_classes}")
    half = num_classes // 2
    a_idx = torch.nonzero(labels < half, as_tuple=True)[0]
    b_idx = torch.nonzero(labels >= half, as_tuple=True)[0]
    h_a = (h + 1) // 2
    h_b = h - h_a
    if len(a_idx) < h_a or len(b_idx) < h_b:
        raise ConfigError(f"mimic2: too few samples to give {h_a} workers classes < {half} and "
                          f"{h_b} workers the rest")
    shards = [a_idx[p] for p in iid_split(len(a_idx), h_a, generator)]
    if h_b:
        shards += [b_idx[p] for p in iid_split(len(b_idx), h_b, generator)]
    return shards, a_idx.clone()


def label_counts(labels: torch.Tensor, shards, num_classes: int) -> torch.Tensor:
    """(num_shards, num_classes) int64 table of how many samples of each class every shard holds."""
    labels = torch.as_tensor(labels).long()
    if len(shards) == 0:
        return torch.zeros(0, num_classes, dtype=torch.long)
    return torch.stack([torch.bincount(labels[s], minlength=num_classes)[:num_classes]
                        for s in shards])


def pad_shards(shards) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack shards into ``table`` (k, max_len) plus ``lengths`` (k,).

    Row i holds shard i's indices, padded by cycling through its own indices (so even an
    out-of-range position would still be one of the worker's own samples).
    """
    if len(shards) == 0:
        return torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in shards], dtype=torch.long)
    if int(lengths.min()) < 1:
        raise ConfigError("every worker needs at least one training sample (a data shard is empty)")
    max_len = int(lengths.max())
    pos = torch.arange(max_len)
    table = torch.stack([torch.as_tensor(s).long()[pos % len(s)] for s in shards])
    return table, lengths


def sample_batches(table: torch.Tensor, lengths: torch.Tensor, batch_size: int,
                   u: torch.Tensor) -> torch.Tensor:
    """Minibatch indices ``out[i, j] = table[i, floor(u[i, j] * lengths[i])]`` (with replacement).

    ``u`` holds uniforms in [0, 1) with shape (k, batch_size). Vectorised over workers.
    """
    k = table.shape[0]
    if tuple(u.shape) != (k, batch_size):
        raise ValueError(f"u must have shape ({k}, {batch_size}), got {tuple(u.shape)}")
    lens = lengths.to(torch.float64).unsqueeze(1)
    pos = torch.floor(u.to(torch.float64) * lens).long()
    pos = torch.minimum(pos.clamp_min(0), (lengths - 1).unsqueeze(1))
    return torch.gather(table, 1, pos)


def group_batches(table: torch.Tensor, lengths: torch.Tensor, batch_size: int, n: int,
                  ids: range, generator: torch.Generator,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """Minibatch indices of the workers ``ids`` of a group (``table``/``lengths``: their
    :func:`pad_shards`), or of its group-local rows ``rows`` only: uniforms are drawn for all n
    workers from ``generator`` and sliced, so a worker's batch depends on the generator and its
    own index alone, whichever group hosts it and whichever others are drawn with it."""
    u = torch.rand(n, batch_size, generator=generator)[ids.start:ids.stop]
    if rows is not None:
        u, table, lengths = u[rows.cpu()], table[rows], lengths[rows]
    return sample_batches(table, lengths, batch_size, u.to(table.device))
