"""The learning problem every process builds identically from the config: the data, who holds
which samples, and the model's initial parameters.

The server and every worker rank call :func:`build_problem` with the same config; all of it is
deterministic in ``cfg.run_seed``, so no data or initial weights cross the wire.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.attacks import ATTACKS
from common.data.datasets import Dataset, load_dataset
from common.data.flat import FlatParams
from common.data.models import make_model
from common.data.partition import longtail_indices, parse_scheme, partition
from common.errors import ConfigError, require
from common.protocols import protocol_of
from common.run.config import Config


@dataclass
class Problem:
    """The data, the model template, its initial parameters and every worker's shard."""

    dataset: Dataset
    model: nn.Module          # a template module: workers and the server load flat vectors into it
    flat: FlatParams
    init_params: Tensor       # (d,) initial parameters
    shards: list[Tensor]      # one index tensor into dataset.x_train per worker (n of them)

    @property
    def dim(self) -> int:
        return self.flat.dim


def worker_shards(cfg: Config, labels: Tensor, num_classes: int) -> list[Tensor]:
    """Training-set indices of every worker.

    With a fixed Byzantine set (the last f workers) only the n - f honest workers split the
    data; the Byzantine workers draw from the whole training set (ALGORITHMS.md), or from
    the attack's own layout (:meth:`common.attacks.Attack.data_layout`, e.g. ``mimic2``). With
    a schedule that changes who is Byzantine, all n split it. Samples the run's protocol
    reserves for the server (:meth:`common.protocols.Protocol.reserved_samples`, FLTrust's root
    set) are left out of every worker's shard.
    """
    reserved = protocol_of(cfg).reserved_samples(cfg, len(labels))
    if reserved is None:
        return _split(cfg, labels, num_classes)
    pool = torch.ones(len(labels), dtype=torch.bool)
    pool[reserved] = False
    pool = torch.nonzero(pool).flatten()
    return [pool[s] for s in _split(cfg, labels[pool], num_classes)]


def _split(cfg: Config, labels: Tensor, num_classes: int) -> list[Tensor]:
    n, f = cfg.num_workers, cfg.num_byzantine
    g = torch.Generator().manual_seed(cfg.run_seed)
    everything = torch.arange(len(labels))
    layout = ATTACKS.get(cfg.attack).data_layout(labels, n - f, f, num_classes, g)
    if layout is not None:
        return layout
    scheme = cfg.partition
    if cfg.byz_schedule == "fixed":
        return partition(labels, n - f, scheme, g) + [everything] * f
    return partition(labels, n, scheme, g)


def build_problem(cfg: Config, device: torch.device | str = "cpu") -> Problem:
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    if parse_scheme(cfg.partition)[0] == "longtail":
        g = torch.Generator().manual_seed(cfg.run_seed)
        keep_train = longtail_indices(ds.y_train, g)
        keep_test = longtail_indices(ds.y_test, g)
        ds = Dataset(name=ds.name, x_train=ds.x_train[keep_train], y_train=ds.y_train[keep_train],
                     x_test=ds.x_test[keep_test], y_test=ds.y_test[keep_test],
                     num_classes=ds.num_classes, input_shape=ds.input_shape)
    n_train = len(ds.y_train)
    require(cfg.batch_size <= n_train,
            f"--batch_size {cfg.batch_size} exceeds the {n_train} training samples of "
            f"{cfg.dataset} (each worker draws its batch from its own shard of about "
            f"{n_train // cfg.num_workers}); use at most {n_train}")
    torch.manual_seed(cfg.run_seed)
    model = make_model(cfg.model, ds.input_shape, ds.num_classes).to(device)
    flat = FlatParams(model)
    shards = worker_shards(cfg, ds.y_train, ds.num_classes)
    return Problem(dataset=ds, model=model, flat=flat, init_params=flat.flatten(model).clone(),
                   shards=shards)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; ``cuda`` picks local_rank mod the GPU count."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine "
                          "(use --device cpu)")
    if name == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: cannot parse '{name}' (cpu, cuda, cuda:N, auto)") from None
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) present")
    return dev


SMALL_MODELS = ("softmax", "mlp")


def configure_threads(cfg: Config) -> None:
    """Set torch's CPU threads: ``--threads N`` if given, else 1 for the small models (their
    kernels are too short to gain from a second thread and lose badly to oversubscription),
    else torch's default."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif cfg.model in SMALL_MODELS:
        torch.set_num_threads(1)
