"""The run configuration: one :class:`Config` shared by ``main.py``, ``MPI_main.py`` and the
Python API, serialised as the run directory's ``config.json``.

The run-level fields (workers, data, optimisation, bookkeeping) are dataclass fields. The rule's
and the attack's parameters live in their own sections, ``agg_params`` and ``attack_params``,
whose keys and checks come from the classes' declarations (:mod:`common.params`); the
pre-aggregators' parameters are written in the ``pre`` spec. :func:`validate` checks every value
and every precondition before any data is loaded, so a typo costs one clear line (exit code 2),
never a traceback. The command line is :mod:`common.run.flags`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Any

from common.aggregation.preagg import make_chain
from common.aggregation.rules import RULES
from common.attacks import ATTACKS, run_attack
from common.compute.paths import GRAD_PATHS
from common.data import datasets, models, partition
from common.errors import ConfigError, require, unknown_name, warn
from common.params import declared_params
from common.protocols import protocol_of
from common.protocols.federated import check_federated
from common.run.plugins import load_plugins
from common.run.schedule import BYZ_SCHEDULES, LR_SCHEDULES

__all__ = ["Config", "validate", "parse_faults", "default_lr", "BASE_LR", "MOMENTUM_STYLES",
           "COMPILE_MODES", "FAULT_KINDS"]

MOMENTUM_STYLES = ("heavyball", "ema")
COMPILE_MODES = ("auto", "on", "off")
# --inject-fault: what a faulty MPI worker rank does to its messages (worker/faults.py).
# stallstate: from its 2nd STATE command on, the rank answers only once rank 0 has given up
# (after --state-timeout) and sent its next command; rounds are answered normally.
# torch's thread pool crashes (SIGSEGV) when asked for 100000 threads; far more than any node's
# cores, which is where more threads stop helping.
MAX_THREADS = 1024
FAULT_KINDS = ("wrongsize", "wrongdtype", "nan", "inf", "huge", "randombytes", "stall", "flood",
               "stallstate")


@dataclass
class Config:
    """Everything that defines a run; ``config.json`` in the run directory is this, serialised.

    ``agg_params`` / ``attack_params``: the rule's / attack's declared parameters by name (an
    omitted one takes its default; :func:`validate` fills every one in). ``plugins``: modules
    imported before anything is looked up by name (``--plugin``).
    """

    # workers and Byzantine set (omitted options are off: no Byzantine worker, iid data, the
    # plain mean, no pre-aggregator, no attack, no momentum)
    num_workers: int = 20
    num_byzantine: int = 0
    defense_f: int | None = None  # f the defense assumes; None = the true count
    byz_schedule: str = "fixed"
    markov_p: float = 0.5
    markov_k: int = 5
    # data and model
    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "iid"
    model: str = "mlp"
    batch_size: int = 32
    # aggregation
    agg: str = "mean"
    agg_params: dict[str, Any] = field(default_factory=dict)
    pre: str = "none"
    # attack
    attack: str = "none"
    attack_params: dict[str, Any] = field(default_factory=dict)
    # optimisation
    rounds: int = 150
    lr: float | None = None  # None: resolved by validate() from the momentum (default_lr)
    lr_schedule: str = "constant"
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_rounds: int = 0
    warmup_start: float = 0.0
    momentum: float = 0.0
    momentum_style: str = "heavyball"
    byz_raw_gradients: bool = False  # Byzantine workers attack raw gradients, not momenta
    server_momentum: float = 0.0
    weight_decay: float = 0.0
    # bookkeeping
    eval_every: int = 10
    seed: int = 0
    trial_idx: int = 0
    output: str | None = None
    checkpoint_every: int = 50
    device: str = "cpu"
    server_device: str | None = None  # MPI rank 0; None = as --device
    grad_path: str = "auto"
    compile_rules: str = "auto"
    round_timeout: float = 0.0
    state_timeout: float | None = None  # MPI checkpoints; None: 10 x round_timeout
    inject_fault: str = ""  # MPI tests: KIND:RANKS[+KIND:RANKS] (see FAULT_KINDS)
    threads: int = 0
    progress: bool = True
    plugins: tuple[str, ...] = ()
    # federated mode (common/protocols/federated.py): on when any of these differs from its
    # default; --participation P on the command line sets clients_per_round
    local_steps: int = 1
    local_lr: float | None = None  # None: --lr (and its schedule)
    local_momentum: float | None = None  # None: --momentum
    server_lr: float | None = None  # None: 1 (FedAvg)
    clients_per_round: int = 0  # 0: every client, every round

    @property
    def f(self) -> int:
        """The number of Byzantine rows the defense assumes among a round's
        :attr:`participants`: ``--defense-f``, else :attr:`sampled_byzantine`."""
        return self.sampled_byzantine if self.defense_f is None else self.defense_f

    @property
    def participants(self) -> int:
        """m, the clients whose messages the server aggregates each round (n unless
        ``--clients-per-round``)."""
        return self.clients_per_round or self.num_workers

    @property
    def sampled_byzantine(self) -> int:
        """The Byzantine workers' share of a round's m participants, rounded up:
        ceil(m f / n) (f itself when every worker takes part)."""
        return -(-self.participants * self.num_byzantine // self.num_workers)

    @property
    def run_seed(self) -> int:
        """The seed every random stream derives from (``--seed`` plus ``--trial_idx``)."""
        return self.seed + self.trial_idx

    @property
    def rule_values(self) -> dict[str, Any]:
        """Every declared parameter of the rule: ``agg_params`` with the defaults filled in."""
        return RULES.resolve(self.agg, self.agg_params)

    @property
    def attack_values(self) -> dict[str, Any]:
        """Every declared parameter of the attack: ``attack_params`` with the defaults filled in."""
        return ATTACKS.resolve(self.attack, self.attack_params)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict of ``config.json``."""
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        d["plugins"] = list(self.plugins)
        return d

    def flat_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the rule's and the attack's parameters (defaults filled in)
        under their flat keys (``cclip_tau``, ``alie_z``) instead of the sections: the form the
        experiment grids and reports use."""
        d = self.to_dict()
        for section, registry, name in (("agg_params", RULES, self.agg),
                                        ("attack_params", ATTACKS, self.attack)):
            values = registry.resolve(name, d.pop(section))
            d.update({p.key: values[p.name] for p in registry.get(name).params})
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Build from a dict (e.g. a JSON config); unknown keys or values of the wrong type
        raise ConfigError (a JSON file is input too: ``"num_workers": "abc"`` must not reach
        the comparisons in :func:`validate`).

        Files written before the parameters moved into sections hold them as top-level keys
        (``"cclip_tau": 10.0``): those of the run's rule and attack are moved into
        ``agg_params`` / ``attack_params``, those of other rules and attacks are dropped."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object of flag values, got {type(d).__name__}")
        types = {f.name: f.type for f in fields(cls)}
        d = dict(d)
        if "plugins" in d:
            load_plugins(_typed("plugins", types["plugins"], d["plugins"]))
        legacy = {k: d.pop(k) for k in list(d) if k not in types and k in declared_params()}
        unknown = sorted(set(d) - set(types))
        if unknown:
            raise ConfigError(f"config has unknown keys: {', '.join(unknown)}")
        d = {k: _typed(k, types[k], v) for k, v in d.items()}
        cfg = cls(**d)
        for section, registry, name in (("agg_params", RULES, cfg.agg),
                                        ("attack_params", ATTACKS, cfg.attack)):
            if legacy and name in registry:
                own = {p.key: p.name for p in registry.get(name).params}
                moved = {own[k]: v for k, v in legacy.items() if k in own}
                setattr(cfg, section, {**moved, **getattr(cfg, section)})
        return cfg

    def run_name(self) -> str:
        """The default run directory name (under ``outputs/``)."""
        pre = "" if not self.pre or self.pre == "none" else "+" + self.pre.replace(":", "").replace(",", "+")
        fed = (f"_K{self.local_steps}" if self.local_steps != 1 else "") + (
            f"_m{self.clients_per_round}" if self.clients_per_round else "")
        return (f"{self.dataset}_{self.model}_{self.partition.replace(':', '')}_{self.agg}{pre}_"
                f"{self.attack}_n{self.num_workers}_f{self.num_byzantine}{fed}_s{self.run_seed}")


#: The learning rate of plain SGD when --lr is not given (it trains the MLP and softmax models
#: on digits and Fashion-MNIST stably; heavy ball scales it down, see :func:`default_lr`).
BASE_LR = 0.1


def default_lr(momentum: float, momentum_style: str) -> float:
    """The learning rate a run gets without ``--lr``: :data:`BASE_LR` for plain SGD and for
    ``ema`` momentum (m = beta m + (1 - beta) g keeps the gradient's scale), ``BASE_LR (1 - beta)``
    for heavy ball (m = beta m + g sums to g / (1 - beta), so the step stays that of plain SGD at
    BASE_LR: the bucketing paper's lr 0.01 at beta = 0.9)."""
    if momentum_style == "heavyball":
        return BASE_LR * (1.0 - momentum)
    return BASE_LR


def _typed(key: str, kind: str, value: Any) -> Any:
    """``value`` checked against the field annotation ``kind`` (ints are accepted as floats)."""
    if kind.endswith(" | None"):
        if value is None:
            return None
        kind = kind[:-len(" | None")]
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if (kind == "tuple[int, ...]" and isinstance(value, (list, tuple))
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return tuple(value)
    if (kind == "tuple[str, ...]" and isinstance(value, (list, tuple))
            and all(isinstance(v, str) for v in value)):
        return tuple(value)
    if kind == "dict[str, Any]" and isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise ConfigError(f"config key {key} must be of type {kind}, got {value!r}")


def parse_faults(spec: str) -> dict[int, str]:
    """``--inject-fault`` as {worker rank: kind}: ``nan:1,3+stall:2`` -> {1: nan, 3: nan, 2: stall}."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in spec.split("+"))):
        kind, _, ranks = part.partition(":")
        if kind not in FAULT_KINDS:
            raise unknown_name("--inject-fault kind", kind, FAULT_KINDS)
        try:
            rs = [int(r) for r in ranks.split(",")] if ranks else [1]
        except ValueError:
            raise ConfigError(f"--inject-fault {part}: ranks must be comma-separated integers "
                              "(e.g. nan:1,2)") from None
        for r in rs:
            require(r >= 1, f"--inject-fault {part}: rank {r} is not a worker rank (ranks >= 1)")
            out[r] = kind
    return out


def _check_fields(cfg: Config) -> None:
    """The run-level fields, one by one."""
    n, b = cfg.num_workers, cfg.num_byzantine
    for fld in fields(cfg):  # no NaN/Inf anywhere: config.json must stay standard JSON
        v = getattr(cfg, fld.name)
        require(not isinstance(v, float) or math.isfinite(v),
              f"--{fld.name.replace('_', '-')} must be a finite number, got {v}")
    require(n >= 1, f"--num_nodes/-n must be >= 1, got {n}")
    require(0 <= b < n, f"-f/--num_Byz_nodes must satisfy 0 <= f < n, got f={b}, n={n}")
    require(cfg.defense_f is None or 0 <= cfg.defense_f < n,
          f"--defense-f must satisfy 0 <= f < n, got {cfg.defense_f}")
    require(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    require(cfg.rounds >= 1, f"--rounds must be >= 1, got {cfg.rounds}")
    require(cfg.lr is None or (cfg.lr > 0 and math.isfinite(cfg.lr)),
            f"--lr must be a positive number, got {cfg.lr}")
    require(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}")
    require(0 <= cfg.server_momentum < 1,
          f"--server-momentum must be in [0, 1), got {cfg.server_momentum}")
    require(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    require(cfg.eval_every >= 1, f"--eval-every must be >= 1, got {cfg.eval_every}")
    require(cfg.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {cfg.checkpoint_every}")
    require(0 <= cfg.threads <= MAX_THREADS,
            f"--threads must be in [0, {MAX_THREADS}] (0: automatic), got {cfg.threads}")
    require(cfg.round_timeout >= 0, f"--round-timeout must be >= 0 seconds, got {cfg.round_timeout}")
    require(cfg.state_timeout is None or cfg.state_timeout >= 0,
          f"--state-timeout must be >= 0 seconds, got {cfg.state_timeout}")
    require("stallstate" not in parse_faults(cfg.inject_fault).values()
          or (cfg.round_timeout if cfg.state_timeout is None else cfg.state_timeout) > 0,
          "--inject-fault stallstate needs rank 0 to stop waiting for the state: --state-timeout "
          "> 0, or --round-timeout > 0 without --state-timeout 0")
    require(0 <= cfg.markov_p <= 1, f"--markov-p must be in [0, 1], got {cfg.markov_p}")
    require(cfg.markov_k >= 1, f"--markov-k must be >= 1, got {cfg.markov_k}")
    require(cfg.seed >= 0 and cfg.trial_idx >= 0,
          f"--seed and --trial_idx must be >= 0, got seed={cfg.seed}, trial_idx={cfg.trial_idx}")
    require(cfg.seed + cfg.trial_idx < 2**32,
            f"--seed + --trial_idx must be below 2**32 = {2**32} (the random streams are keyed "
            f"by 32 bits), got {cfg.seed + cfg.trial_idx}")
    require(cfg.warmup_rounds >= 0, f"--warmup-rounds must be >= 0, got {cfg.warmup_rounds}")
    require(cfg.warmup_start >= 0 and math.isfinite(cfg.warmup_start),
          f"--warmup-start must be >= 0, got {cfg.warmup_start}")
    require(cfg.data_dir is None or os.path.isdir(os.path.expanduser(cfg.data_dir)),
          f"--data-dir {cfg.data_dir} is not a directory; pass the directory holding the "
          f"{cfg.dataset} files (create it first to let torchvision download into it)")
    if cfg.byz_schedule not in BYZ_SCHEDULES:
        raise unknown_name("Byzantine schedule", cfg.byz_schedule, BYZ_SCHEDULES)
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise unknown_name("lr schedule", cfg.lr_schedule, LR_SCHEDULES)
    if cfg.lr_schedule == "step":
        require(len(cfg.lr_milestones) > 0, "--lr-schedule step needs --lr-milestones, e.g. 500,950")
    if cfg.lr_schedule == "warmup":
        require(cfg.warmup_rounds >= 1, "--lr-schedule warmup needs --warmup-rounds >= 1")
    require(0 < cfg.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {cfg.lr_gamma}")
    require(not cfg.byz_raw_gradients or cfg.byz_schedule == "fixed",
            "--byz-raw-gradients applies to a fixed Byzantine set (--byz-schedule fixed): a "
            "worker that is honest in other rounds keeps its momentum")
    if cfg.momentum_style not in MOMENTUM_STYLES:
        raise unknown_name("momentum style", cfg.momentum_style, MOMENTUM_STYLES)
    if cfg.grad_path not in GRAD_PATHS:
        raise unknown_name("gradient path", cfg.grad_path, GRAD_PATHS)
    if cfg.compile_rules not in COMPILE_MODES:
        raise unknown_name("--compile-rules mode", cfg.compile_rules, COMPILE_MODES)
    require(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
          f"--device must be cpu, cuda, cuda:N or auto, got '{cfg.device}'")
    require(cfg.server_device in (None, "auto", "cpu") or cfg.server_device.startswith("cuda"),
          f"--server-device must be cpu, cuda, cuda:N or auto, got '{cfg.server_device}'")
    if cfg.dataset not in datasets.dataset_names():
        raise unknown_name("dataset", cfg.dataset, datasets.dataset_names())
    if cfg.model not in models.model_names():
        raise unknown_name("model", cfg.model, models.model_names())
    partition.parse_scheme(cfg.partition)


def validate(cfg: Config) -> None:
    """Check every value and every precondition; raise ConfigError with an actionable message.

    Also resolves ``agg_params`` and ``attack_params`` in place: every declared parameter of the
    rule and the attack, checked, with the defaults filled in."""
    load_plugins(cfg.plugins)
    _check_fields(cfg)
    if cfg.lr is None:
        cfg.lr = default_lr(cfg.momentum, cfg.momentum_style)
    check_federated(cfg)
    cfg.agg, cfg.attack = RULES.get(cfg.agg).name, ATTACKS.get(cfg.attack).name
    cfg.agg_params = RULES.resolve(cfg.agg, cfg.agg_params)
    cfg.attack_params = ATTACKS.resolve(cfg.attack, cfg.attack_params)
    chain = make_chain(cfg.pre, cfg.participants, cfg.f)
    protocol_of(cfg).validate(cfg, chain)
    for text in chain.warnings(cfg.participants):
        warn(text)
    if 2 * cfg.num_byzantine >= cfg.num_workers and cfg.num_byzantine:
        warn(f"f={cfg.num_byzantine} of n={cfg.num_workers} workers are Byzantine: no rule can "
             "tell them from the honest ones once f >= n/2 (the robust rules need n > 2f, "
             "Krum n >= 2f+3, Bulyan n >= 4f+3), so the attack decides the result")
    ms = list(cfg.lr_milestones)
    if ms != sorted(set(ms)):
        warn(f"--lr-milestones {','.join(map(str, ms))} are not strictly increasing; the lr "
             "is multiplied by --lr-gamma once per milestone reached, whatever the order (a "
             "repeated one twice)")
    attack = ATTACKS.get(cfg.attack)
    attack.check_config(cfg)
    run_attack(cfg, 10)
