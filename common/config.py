"""Run configuration and the command line shared by ``main.py`` and ``MPI_main.py``.

Two flag styles are accepted so the seed projects' commands work as written:

* election-coding style: ``--num_nodes 5 --num_Byz_nodes 1 --redundancy 3.8 --deterministic True
  --batch_size 120 --trial_idx 1``;
* bucketing style: ``-n 25 -f 5 --agg cclip --attack alie --noniid --bucketing 2 --momentum 0.9``.

Every value is validated in :func:`validate` before any data is loaded, so a typo or an unmet
precondition costs one clear line (exit code 2), never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Sequence

from common.errors import ConfigError, unknown_name

LR_SCHEDULES = ("constant", "sqrt", "step", "warmup")
BYZ_SCHEDULES = ("fixed", "random", "markov")
MOMENTUM_STYLES = ("heavyball", "ema")
GRAD_PATHS = ("auto", "linear", "vmap", "loop")
COMPILE_MODES = ("auto", "on", "off")
# --inject-fault: what a faulty MPI worker rank does to its messages (worker/mpi_worker.py).
# stallstate: from its 2nd STATE command on, the rank answers only once rank 0 has given up
# (after --state-timeout) and sent its next command; rounds are answered normally.
FAULT_KINDS = ("wrongsize", "wrongdtype", "nan", "inf", "huge", "randombytes", "stall", "flood",
               "stallstate")
# Rules whose messages are not gradients: they change what workers compute and send.
SIGN_RULES = ("signmv",)
MODEL_RULES = ("rsa",)
# Attacks a signSGD node can mount on its vote (reverse = bitflip = signflip: minus its own vote).
SIGN_ATTACKS = ("none", "reverse", "directional", "random", "bitflip", "signflip")


@dataclass
class Config:
    """Everything that defines a run; ``config.json`` in the run directory is this, serialised."""

    # workers and Byzantine set
    num_workers: int = 20
    num_byzantine: int = 4
    defense_f: int | None = None  # f the defense assumes; None = the true count
    byz_schedule: str = "fixed"
    markov_p: float = 0.5
    markov_k: int = 5
    # data and model
    dataset: str = "digits"
    data_dir: str | None = None
    partition: str = "noniid"
    model: str = "mlp"
    batch_size: int = 32
    # aggregation
    agg: str = "cclip"
    pre: str = "bucketing:2"
    krum_neighbours: int | None = None
    multikrum_m: int | None = None
    trmean_b: int | None = None
    trmean_beta: float | None = None
    rfa_iters: int = 8
    rfa_nu: float = 0.1
    cclip_tau: float = 10.0
    cclip_iters: int = 3
    nmedian_std: float = 0.01
    # attack
    attack: str = "alie"
    gaussian_std: float = 200.0
    alie_z: float | None = None
    ipm_eps: float = 0.1
    mimic_warmup: int = 1
    backdoor_scale: float = 4.0
    # election coding (signSGD)
    redundancy: float = 1.0
    deterministic: bool = False
    # DiverseFL and RSA
    share_frac: float = 0.01
    eps1: float = 0.5
    eps2: float = 2.0
    rsa_delta: float = 0.2635
    # optimisation
    rounds: int = 150
    lr: float = 0.1
    lr_schedule: str = "constant"
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.1
    warmup_rounds: int = 0
    warmup_start: float = 0.0
    momentum: float = 0.9
    momentum_style: str = "heavyball"
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

    @property
    def f(self) -> int:
        """The number of Byzantine workers the defense assumes."""
        return self.num_byzantine if self.defense_f is None else self.defense_f

    @property
    def run_seed(self) -> int:
        """The seed every random stream derives from (``--seed`` plus ``--trial_idx``)."""
        return self.seed + self.trial_idx

    @property
    def protocol(self) -> str:
        """What workers send: ``gradient`` (default), ``sign`` (signSGD votes) or ``model`` (RSA)."""
        if self.agg in SIGN_RULES:
            return "sign"
        if self.agg in MODEL_RULES:
            return "model"
        return "gradient"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_milestones"] = list(self.lr_milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        """Build from a dict (e.g. a JSON config); unknown keys or values of the wrong type
        raise ConfigError (a JSON file is input too: ``"num_workers": "abc"`` must not reach
        the comparisons in :func:`validate`)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object of flag values, got {type(d).__name__}")
        types = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(d) - set(types))
        if unknown:
            raise ConfigError(f"config has unknown keys: {', '.join(unknown)}")
        d = {k: _typed(k, types[k], v) for k, v in d.items()}
        return cls(**d)

    def run_name(self) -> str:
        pre = "" if not self.pre or self.pre == "none" else "+" + self.pre.replace(":", "").replace(",", "+")
        return (f"{self.dataset}_{self.model}_{self.partition.replace(':', '')}_{self.agg}{pre}_"
                f"{self.attack}_n{self.num_workers}_f{self.num_byzantine}_s{self.run_seed}")


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
    raise ConfigError(f"config key {key} must be of type {kind}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Parsing

def parse_bool(text: str) -> bool:
    """``True/False/1/0/yes/no`` (any case) to bool; argparse's ``type=bool`` treats 'False' as True."""
    t = str(text).strip().lower()
    if t in ("true", "1", "yes", "y", "on"):
        return True
    if t in ("false", "0", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{text}'")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401
        raise ConfigError(f"{message} (see --help)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help, and the epilog's list of choices kept one kind per line."""


def build_parser(prog: str = "main.py") -> argparse.ArgumentParser:
    d = Config()
    p = _Parser(
        prog=prog,
        description="Byzantine-robust distributed training: n workers, f Byzantine, a robust rule.",
        epilog="choices (also: --list):\n" + list_choices(),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--list", action="store_true", help="print every dataset, model, rule, "
                   "pre-aggregator, attack and schedule, then exit")
    p.add_argument("--config", help="read flags from a JSON file (e.g. a run's config.json); "
                   "flags on the command line override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its "
                   "checkpoint (with --rounds R: up to R rounds)")

    g = p.add_argument_group("workers and Byzantine set")
    g.add_argument("-n", "--num_nodes", "--num-workers", dest="num_workers", type=int,
                   default=d.num_workers, help="number of workers n")
    g.add_argument("-f", "--num_Byz_nodes", "--num-byzantine", dest="num_byzantine", type=int,
                   default=d.num_byzantine, help="number of Byzantine workers")
    g.add_argument("--defense-f", type=int, default=None,
                   help="f assumed by the defense (default: the true number of Byzantine workers)")
    g.add_argument("--byz-schedule", choices=BYZ_SCHEDULES, default=d.byz_schedule,
                   help="fixed: the last f workers; random: f redrawn every round; markov: an "
                   "honest worker turns Byzantine with prob --markov-p and stays so --markov-k rounds")
    g.add_argument("--markov-p", type=float, default=d.markov_p)
    g.add_argument("--markov-k", type=int, default=d.markov_k)

    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=d.dataset, help="see --list")
    g.add_argument("--data-dir", "--data_dir", dest="data_dir", default=None,
                   help="directory holding the dataset files (default: standard locations)")
    g.add_argument("--partition", default=d.partition,
                   help="iid | noniid | dirichlet:ALPHA | shards:K (K label-sorted shards per "
                   "worker, at least 2 classes each for K >= 2) | longtail")
    g.add_argument("--noniid", action="store_const", const="noniid", dest="partition",
                   help="same as --partition noniid")
    g.add_argument("--iid", action="store_const", const="iid", dest="partition",
                   help="same as --partition iid")
    g.add_argument("--model", default=d.model, help="see --list")
    g.add_argument("--batch_size", "--batch-size", "-b", dest="batch_size", type=int,
                   default=d.batch_size, help="per-worker batch (signSGD coding: global minibatch)")

    g = p.add_argument_group("aggregation")
    g.add_argument("--agg", "--rule", dest="agg", default=d.agg, help="robust rule, see --list")
    g.add_argument("--pre", default=d.pre,
                   help="pre-aggregator chain, e.g. 'bucketing:2', 'nnm', 'resampling:2,nnm' or 'none'")
    g.add_argument("--bucketing", type=int, default=None, metavar="S",
                   help="shorthand for --pre bucketing:S (0 disables)")
    g.add_argument("--krum-neighbours", type=int, default=None,
                   help="Krum/Multi-Krum neighbour count (default n-f-2; ByzFL uses n-f-1)")
    g.add_argument("--multikrum-m", type=int, default=None, help="Multi-Krum m (default n-f)")
    g.add_argument("--trmean-b", type=int, default=None,
                   help="values trimmed per side by trmean (default f)")
    g.add_argument("--trmean-beta", type=float, default=None,
                   help="trim a fraction beta per side instead (b = floor(beta n))")
    g.add_argument("--rfa-iters", type=int, default=d.rfa_iters, help="Weiszfeld iterations T")
    g.add_argument("--rfa-nu", type=float, default=d.rfa_nu, help="Weiszfeld smoothing nu")
    g.add_argument("--cclip-tau", type=float, default=d.cclip_tau, help="clipping radius tau")
    g.add_argument("--cclip-iters", type=int, default=d.cclip_iters, help="clipping iterations L")
    g.add_argument("--nmedian-std", type=float, default=d.nmedian_std,
                   help="std of the noise honest workers add under nmedian")

    g = p.add_argument_group("attack")
    g.add_argument("--attack", default=d.attack, help="see --list")
    g.add_argument("--gaussian-std", type=float, default=d.gaussian_std)
    g.add_argument("--alie-z", type=float, default=None,
                   help="ALIE z (default Phi^-1((n-f-s)/(n-f)), s = floor(n/2+1)-f)")
    g.add_argument("--ipm-eps", type=float, default=d.ipm_eps)
    g.add_argument("--mimic-warmup", type=int, default=d.mimic_warmup,
                   help="rounds mimic spends estimating the direction to copy")
    g.add_argument("--backdoor-scale", type=float, default=d.backdoor_scale)

    g = p.add_argument_group("election coding (signSGD majority vote, --agg signmv)")
    g.add_argument("--redundancy", type=float, default=d.redundancy,
                   help="r = ones in G / n; 1 is plain signSGD-MV")
    g.add_argument("--deterministic", type=parse_bool, default=d.deterministic,
                   help="True: a known deterministic code; False: a Bernoulli code")

    g = p.add_argument_group("DiverseFL and RSA")
    g.add_argument("--share-frac", type=float, default=d.share_frac,
                   help="fraction of its data each client shares with the server (DiverseFL)")
    g.add_argument("--eps1", type=float, default=d.eps1, help="DiverseFL lower length ratio")
    g.add_argument("--eps2", type=float, default=d.eps2, help="DiverseFL upper length ratio")
    g.add_argument("--rsa-delta", type=float, default=d.rsa_delta, help="RSA l1 penalty delta")

    g = p.add_argument_group("optimisation")
    g.add_argument("--rounds", "--iterations", dest="rounds", type=int, default=d.rounds)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="constant | sqrt (lr/sqrt(t)) | step (x gamma at --lr-milestones) | "
                   "warmup (linear from --warmup-start to lr over --warmup-rounds)")
    g.add_argument("--lr-milestones", type=_int_list, default=d.lr_milestones,
                   help="rounds where step decay multiplies lr by --lr-gamma, e.g. 500,950")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    g.add_argument("--warmup-rounds", type=int, default=d.warmup_rounds)
    g.add_argument("--warmup-start", type=float, default=d.warmup_start)
    g.add_argument("--momentum", type=float, default=d.momentum, help="worker momentum beta")
    g.add_argument("--momentum-style", choices=MOMENTUM_STYLES, default=d.momentum_style,
                   help="heavyball: m = beta m + g (bucketing paper); ema: m = beta m + (1-beta) g")
    g.add_argument("--server-momentum", type=float, default=d.server_momentum,
                   help="momentum of the server's step (0.9 for signSGD in the coding paper)")
    g.add_argument("--weight-decay", "--wd", dest="weight_decay", type=float,
                   default=d.weight_decay, help="lambda: the server steps with agg + lambda x")

    g = p.add_argument_group("run")
    g.add_argument("--eval-every", type=int, default=d.eval_every)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--trial_idx", "--trial-idx", dest="trial_idx", type=int, default=d.trial_idx,
                   help="repetition index; the run's seed is --seed + --trial_idx")
    g.add_argument("--output", "-o", default=None,
                   help="run directory (default outputs/<dataset>_<model>_..._s<seed>)")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="rounds between checkpoints (a checkpoint is also written at the end)")
    g.add_argument("--device", default=d.device,
                   help="cpu | cuda | cuda:N | auto; under MPI, cuda gives each rank GPU "
                   "(local rank mod GPUs on its node)")
    g.add_argument("--server-device", default=None,
                   help="MPI: rank 0's device (cpu | cuda | cuda:N | auto; default: as --device); "
                   "messages are staged through host memory either way")
    g.add_argument("--grad-path", choices=GRAD_PATHS, default=d.grad_path,
                   help="how a worker group computes its gradients: linear (one batched pass, "
                   "models made of Linear layers only), one vmap call, or a loop; auto picks "
                   "the fastest for the model")
    g.add_argument("--compile-rules", choices=COMPILE_MODES, default=d.compile_rules,
                   help="run the sorting network of cm/nmedian/trmean/bulyan (n <= 32, CPU) as "
                   "one torch.compile kernel (cm 5x faster at d = 1e6; compiling takes 1-10 s once "
                   "per process); auto: on when d x rounds >= 5e8")
    g.add_argument("--round-timeout", type=float, default=d.round_timeout,
                   help="MPI: seconds to wait for a worker each round before treating it as "
                   "absent (0: wait forever)")
    g.add_argument("--state-timeout", type=float, default=d.state_timeout,
                   help="MPI: seconds rank 0 waits for the worker ranks' state when it writes a "
                   "checkpoint; a rank that has not answered keeps its workers' state from the "
                   "previous checkpoint (unset: 10 x --round-timeout; 0: wait forever)")
    g.add_argument("--inject-fault", default=d.inject_fault, metavar="KIND[:RANKS]",
                   help="MPI fault injection for tests: worker ranks RANKS (comma-separated, "
                   "default 1) corrupt what they send; KIND is one of " + ", ".join(FAULT_KINDS)
                   + "; join several with '+', e.g. nan:1+wrongsize:2 (main.py ignores it)")
    g.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads per process (0: 1 for softmax/mlp, torch's default "
                   "otherwise)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None, prog: str = "main.py") -> tuple[Config, argparse.Namespace]:
    """Parse the command line into a validated :class:`Config` (raises ConfigError)."""
    parser = build_parser(prog)
    ns = parser.parse_args(argv)
    if ns.list:
        return Config(), ns
    base = Config()
    if ns.config:
        try:
            with open(ns.config) as fh:
                base = Config.from_dict(json.load(fh))
        except OSError as e:
            raise ConfigError(f"cannot read --config {ns.config}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {ns.config} is not valid JSON: {e}") from None
    values = base.to_dict()
    defaults = vars(parser.parse_args([]))
    explicit = {k: v for k, v in vars(ns).items() if k in values and (v != defaults.get(k) or not ns.config)}
    values.update(explicit)
    if ns.bucketing is not None and ns.bucketing < 0:
        raise ConfigError(f"--bucketing S needs a bucket size S >= 1 (0 disables), got {ns.bucketing}")
    if ns.bucketing is not None:
        values["pre"] = f"bucketing:{ns.bucketing}" if ns.bucketing > 0 else "none"
    if not ns.config:
        election_defaults(values, _given_dests(argv, prog))
    cfg = Config.from_dict(values)
    if ns.resume:
        return cfg, ns
    validate(cfg)
    return cfg, ns


def _given_dests(argv: Sequence[str] | None, prog: str) -> set[str]:
    """Config fields set on the command line (by any alias or abbreviation of their flags)."""
    p = build_parser(prog)
    for a in p._actions:
        a.default = argparse.SUPPRESS
    given = set(vars(p.parse_args(argv)))
    if "bucketing" in given:
        given.add("pre")
    return given


# The seed's election-coding commands (``--num_nodes 5 --num_Byz_nodes 1 --redundancy 3.8
# --deterministic True --batch_size 120 --trial_idx 1``) name no rule: --redundancy or
# --deterministic without --agg selects signSGD-MV, and --agg signmv takes the coding paper's
# setting for every flag not given. On the default data (digits, MLP) lr 1e-4 barely moves a
# sign update in 150 rounds, so it uses lr 1e-3 (with master momentum 0.9 every coordinate moves
# up to 1e-2 per round); CIFAR-10 gets the paper's ResNet-18 schedule.
SIGN_DEFAULTS: dict[str, Any] = dict(attack="reverse", pre="none", partition="iid", momentum=0.0,
                                     server_momentum=0.9, weight_decay=1e-4, lr=1e-3)


def election_defaults(values: dict[str, Any], given: set[str]) -> None:
    """Fill in the signSGD / election-coding defaults in ``values`` (fields not in ``given``)."""
    if "agg" not in given and given & {"redundancy", "deterministic"}:
        values["agg"] = "signmv"
    if values["agg"] not in SIGN_RULES:
        return
    d = dict(SIGN_DEFAULTS)
    if values["dataset"] == "cifar10":
        # Paper: ResNet-18, lr 1e-4, 100 epochs, x0.1 at epochs 40/80 (n = 15: 20/40/80).
        per_epoch = math.ceil(50000 / max(1, values["batch_size"]))
        epochs = (20, 40, 80) if values["num_workers"] >= 15 else (40, 80)
        d.update(model="resnet18", lr=1e-4, rounds=100 * per_epoch, lr_schedule="step",
                 lr_milestones=tuple(e * per_epoch for e in epochs), lr_gamma=0.1,
                 eval_every=per_epoch)
    for k, v in d.items():
        if k not in given:
            values[k] = v


# ----------------------------------------------------------------------------------------------
# Validation

def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def rule_params(cfg: Config, n_in: int) -> dict[str, Any]:
    """The registry parameters of ``cfg.agg`` (n_in: vectors the rule sees after pre-aggregation)."""
    if cfg.agg in ("krum",):
        return {"neighbours": cfg.krum_neighbours}
    if cfg.agg == "multikrum":
        return {"m": cfg.multikrum_m, "neighbours": cfg.krum_neighbours}
    if cfg.agg == "trmean":
        b = cfg.trmean_b
        if b is None and cfg.trmean_beta is not None:
            b = int(math.floor(cfg.trmean_beta * n_in))
        return {"b": b}
    if cfg.agg in ("rfa", "gm"):
        return {"iters": cfg.rfa_iters, "nu": cfg.rfa_nu}
    if cfg.agg == "cclip":
        return {"tau": cfg.cclip_tau, "iters": cfg.cclip_iters}
    return {}


def attack_params(cfg: Config) -> dict[str, Any]:
    """The registry parameters of ``cfg.attack``."""
    return {
        "gaussian": {"std": cfg.gaussian_std},
        "alie": {"z": cfg.alie_z},
        "ipm": {"eps": cfg.ipm_eps},
        "mimic": {"warmup": cfg.mimic_warmup},
        "backdoor": {"scale": cfg.backdoor_scale},
    }.get(cfg.attack, {})


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
            _need(r >= 1, f"--inject-fault {part}: rank {r} is not a worker rank (ranks >= 1)")
            out[r] = kind
    return out


def validate(cfg: Config) -> None:
    """Check every value and every precondition; raise ConfigError with an actionable message."""
    from common import attacks, data, models, partition, preagg, rules

    n, b = cfg.num_workers, cfg.num_byzantine
    for fld in fields(cfg):  # no NaN/Inf anywhere: config.json must stay standard JSON
        v = getattr(cfg, fld.name)
        _need(not isinstance(v, float) or math.isfinite(v),
              f"--{fld.name.replace('_', '-')} must be a finite number, got {v}")
    _need(n >= 1, f"--num_nodes/-n must be >= 1, got {n}")
    _need(0 <= b < n, f"-f/--num_Byz_nodes must satisfy 0 <= f < n, got f={b}, n={n}")
    _need(cfg.defense_f is None or 0 <= cfg.defense_f < n,
          f"--defense-f must satisfy 0 <= f < n, got {cfg.defense_f}")
    _need(cfg.batch_size >= 1, f"--batch_size must be >= 1, got {cfg.batch_size}")
    _need(cfg.rounds >= 1, f"--rounds must be >= 1, got {cfg.rounds}")
    _need(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be a positive number, got {cfg.lr}")
    _need(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}")
    _need(0 <= cfg.server_momentum < 1,
          f"--server-momentum must be in [0, 1), got {cfg.server_momentum}")
    _need(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    _need(cfg.eval_every >= 1, f"--eval-every must be >= 1, got {cfg.eval_every}")
    _need(cfg.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {cfg.checkpoint_every}")
    _need(cfg.threads >= 0, f"--threads must be >= 0, got {cfg.threads}")
    _need(cfg.round_timeout >= 0, f"--round-timeout must be >= 0 seconds, got {cfg.round_timeout}")
    _need(cfg.state_timeout is None or cfg.state_timeout >= 0,
          f"--state-timeout must be >= 0 seconds, got {cfg.state_timeout}")
    _need("stallstate" not in parse_faults(cfg.inject_fault).values()
          or (cfg.round_timeout if cfg.state_timeout is None else cfg.state_timeout) > 0,
          "--inject-fault stallstate needs rank 0 to stop waiting for the state: --state-timeout "
          "> 0, or --round-timeout > 0 without --state-timeout 0")
    _need(0 <= cfg.markov_p <= 1, f"--markov-p must be in [0, 1], got {cfg.markov_p}")
    _need(cfg.markov_k >= 1, f"--markov-k must be >= 1, got {cfg.markov_k}")
    # Flags of rules, codes and schedules not selected by this run are checked too: an
    # out-of-range value is a typo whichever run it sits in.
    _need(cfg.seed >= 0 and cfg.trial_idx >= 0,
          f"--seed and --trial_idx must be >= 0, got seed={cfg.seed}, trial_idx={cfg.trial_idx}")
    _need(cfg.rfa_iters >= 1, f"--rfa-iters must be >= 1, got {cfg.rfa_iters}")
    _need(cfg.rfa_nu > 0 and math.isfinite(cfg.rfa_nu), f"--rfa-nu must be > 0, got {cfg.rfa_nu}")
    _need(cfg.cclip_tau > 0 and math.isfinite(cfg.cclip_tau),
          f"--cclip-tau must be > 0, got {cfg.cclip_tau}")
    _need(cfg.cclip_iters >= 1, f"--cclip-iters must be >= 1, got {cfg.cclip_iters}")
    _need(cfg.nmedian_std >= 0 and math.isfinite(cfg.nmedian_std),
          f"--nmedian-std must be >= 0, got {cfg.nmedian_std}")
    _need(cfg.warmup_rounds >= 0, f"--warmup-rounds must be >= 0, got {cfg.warmup_rounds}")
    _need(cfg.warmup_start >= 0 and math.isfinite(cfg.warmup_start),
          f"--warmup-start must be >= 0, got {cfg.warmup_start}")
    _need(cfg.krum_neighbours is None or cfg.krum_neighbours >= 1,
          f"--krum-neighbours must be >= 1, got {cfg.krum_neighbours}")
    _need(cfg.multikrum_m is None or cfg.multikrum_m >= 1,
          f"--multikrum-m must be >= 1, got {cfg.multikrum_m}")
    _need(cfg.trmean_b is None or cfg.trmean_b >= 0, f"--trmean-b must be >= 0, got {cfg.trmean_b}")
    _need(cfg.trmean_beta is None or 0 <= cfg.trmean_beta < 0.5,
          f"--trmean-beta must be in [0, 0.5), got {cfg.trmean_beta}")
    _need(cfg.gaussian_std >= 0, f"--gaussian-std must be >= 0, got {cfg.gaussian_std}")
    _need(cfg.mimic_warmup >= 1, f"--mimic-warmup must be >= 1, got {cfg.mimic_warmup}")
    _need(1 <= cfg.redundancy <= n,
          f"--redundancy r (ones in the allocation matrix / n) must be in [1, n] = [1, {n}], "
          f"got {cfg.redundancy}")
    _need(cfg.data_dir is None or os.path.isdir(os.path.expanduser(cfg.data_dir)),
          f"--data-dir {cfg.data_dir} is not a directory; pass the directory holding the "
          f"{cfg.dataset} files (create it first to let torchvision download into it)")
    if cfg.byz_schedule not in BYZ_SCHEDULES:
        raise unknown_name("Byzantine schedule", cfg.byz_schedule, BYZ_SCHEDULES)
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise unknown_name("lr schedule", cfg.lr_schedule, LR_SCHEDULES)
    if cfg.lr_schedule == "step":
        _need(len(cfg.lr_milestones) > 0, "--lr-schedule step needs --lr-milestones, e.g. 500,950")
    if cfg.lr_schedule == "warmup":
        _need(cfg.warmup_rounds >= 1, "--lr-schedule warmup needs --warmup-rounds >= 1")
    _need(0 < cfg.lr_gamma <= 1, f"--lr-gamma must be in (0, 1], got {cfg.lr_gamma}")
    if cfg.momentum_style not in MOMENTUM_STYLES:
        raise unknown_name("momentum style", cfg.momentum_style, MOMENTUM_STYLES)
    if cfg.grad_path not in GRAD_PATHS:
        raise unknown_name("gradient path", cfg.grad_path, GRAD_PATHS)
    if cfg.compile_rules not in COMPILE_MODES:
        raise unknown_name("--compile-rules mode", cfg.compile_rules, COMPILE_MODES)
    _need(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
          f"--device must be cpu, cuda, cuda:N or auto, got '{cfg.device}'")
    _need(cfg.server_device in (None, "auto", "cpu") or cfg.server_device.startswith("cuda"),
          f"--server-device must be cpu, cuda, cuda:N or auto, got '{cfg.server_device}'")

    if cfg.dataset not in data.dataset_names():
        raise unknown_name("dataset", cfg.dataset, data.dataset_names())
    if cfg.model not in models.model_names():
        raise unknown_name("model", cfg.model, models.model_names())
    partition.parse_scheme(cfg.partition)
    if cfg.attack not in attacks.attack_names():
        raise unknown_name("attack", cfg.attack, attacks.attack_names())
    if cfg.agg not in rules.rule_names() and cfg.agg not in extra_rule_names():
        raise unknown_name("rule", cfg.agg, list(rules.rule_names()) + extra_rule_names())

    # The defense's precondition is checked on what the rule will see after pre-aggregation.
    chain = preagg.make_chain(cfg.pre, n, cfg.f)
    if cfg.protocol == "gradient" and cfg.agg in rules.rule_names():
        if cfg.agg == "oracle" and chain.out_count(n) != n:
            raise ConfigError("oracle averages the true honest workers; it cannot follow a "
                              "pre-aggregator (use --pre none)")
        n_in = chain.out_count(n)
        rules.make_rule(cfg.agg, n_in, cfg.f, **rule_params(cfg, n_in))
    attacks.make_attack(cfg.attack, n, b, 10, **attack_params(cfg))
    if cfg.attack == "mimic2":
        _need(cfg.byz_schedule == "fixed", "mimic2 changes the data layout; it needs --byz-schedule fixed")
    _need(0 < cfg.share_frac <= 1, f"--share-frac must be in (0, 1], got {cfg.share_frac}")
    _need(0 <= cfg.eps1 < cfg.eps2, f"DiverseFL needs 0 <= --eps1 < --eps2, got eps1={cfg.eps1}, "
          f"eps2={cfg.eps2}")
    _need(cfg.rsa_delta >= 0, f"--rsa-delta must be >= 0, got {cfg.rsa_delta}")
    if cfg.deterministic:
        from common.coding import deterministic_code

        deterministic_code(n, cfg.redundancy)  # ConfigError listing the known codes
    if cfg.protocol == "sign":
        _need(not chain.stages, f"--agg {cfg.agg} counts packed sign votes; pre-aggregation does "
              "not apply: use --pre none")
        _need(cfg.momentum == 0, f"--agg {cfg.agg}: nodes vote with fresh slice gradients and the "
              "momentum lives at the master: use --momentum 0 (and --server-momentum)")
        _need(cfg.attack in SIGN_ATTACKS, f"--agg {cfg.agg}: attack '{cfg.attack}' does not act "
              f"on sign votes; choose one of: {', '.join(SIGN_ATTACKS)}")
        _need(partition.parse_scheme(cfg.partition)[0] in ("iid", "longtail"),
              f"--agg {cfg.agg} draws each round's global minibatch from the whole training set "
              f"and G assigns its slices; --partition {cfg.partition} does not apply (use iid)")
        _need(cfg.batch_size >= n, f"--batch_size is the global minibatch cut into n slices; "
              f"it needs at least n = {n} samples, got {cfg.batch_size}")
    if cfg.agg in ("diversefl", "rsa"):
        # Both test or combine each client's own upload: pre-aggregation would mix clients, and
        # worker momentum would break DiverseFL's length test and is not part of RSA's update.
        fix = (["--pre none"] if chain.stages else []) + (["--momentum 0"] if cfg.momentum else [])
        _need(not fix, f"--agg {cfg.agg} works on each client's own plain gradient or model "
              f"(no pre-aggregation, no worker momentum); add {' '.join(fix)}")


def extra_rule_names() -> list[str]:
    """Protocol-level rules that live outside the tensor-rule registry (signSGD, DiverseFL, RSA)."""
    return ["diversefl", "rsa"]


def list_choices() -> str:
    """The text printed by ``--list``."""
    from common import attacks, data, models, preagg, rules

    lines = [
        "datasets:        " + ", ".join(data.dataset_names()),
        "models:          " + ", ".join(models.model_names()),
        "rules (--agg):   " + ", ".join(list(rules.rule_names()) + extra_rule_names()),
        "pre-aggregators: " + ", ".join(f"{p}:S" if p in ("bucketing", "resampling") else p
                                        for p in preagg.PREAGGREGATORS) + "  (chain with commas)",
        "attacks:         " + ", ".join(attacks.attack_names()),
        "partitions:      iid, noniid, dirichlet:ALPHA, shards:K, longtail",
        "byz schedules:   " + ", ".join(BYZ_SCHEDULES),
        "lr schedules:    " + ", ".join(LR_SCHEDULES),
        "momentum styles: " + ", ".join(MOMENTUM_STYLES) + "  (default heavyball)",
    ]
    return "\n".join(lines)
