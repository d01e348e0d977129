"""The command line shared by ``main.py`` and ``MPI_main.py``.

Two flag styles are accepted so the seed projects' commands work as written:

* election-coding style: ``--num_nodes 5 --num_Byz_nodes 1 --redundancy 3.8 --deterministic True
  --batch_size 120 --trial_idx 1``;
* bucketing style: ``-n 25 -f 5 --agg cclip --attack alie --noniid --bucketing 2 --momentum 0.9``.

The run-level flags are written out below; every rule's and attack's parameter flags
(``--cclip-tau``, ``--alie-z``, ...) are generated from their declarations
(:mod:`common.params`), with their ``--help`` text, and checked by them. ``--plugin MODULE`` is
read first, so a plugin's rules and attacks have their flags too.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from dataclasses import fields
from typing import Sequence

from common.aggregation.preagg import PREAGGREGATORS
from common.aggregation.rules import RULES
from common.attacks import ATTACKS
from common.compute.paths import GRAD_PATHS
from common.data import datasets, models
from common.errors import ConfigError, warn
from common.params import declared_params, parse_bool, registries
from common.protocols import PROTOCOLS
from common.run.catalog import HelpFormatter, Parser, int_list, save_catalog
from common.run.config import COMPILE_MODES, FAULT_KINDS, MOMENTUM_STYLES, Config, validate
from common.run.io import read_config_file
from common.run.plugins import load_plugins, loaded_plugins
from common.run.schedule import BYZ_SCHEDULES, LR_SCHEDULES

__all__ = ["build_parser", "parse_args", "list_choices", "parse_bool"]

_PARAM = "param:"  # argparse dest prefix of a declared parameter's flag


def build_parser(prog: str = "main.py") -> argparse.ArgumentParser:
    """The full parser: the run-level flags and every declared parameter's flag."""
    d = Config()
    p = Parser(
        prog=prog,
        description="Byzantine-robust distributed training: n workers, f Byzantine, a robust rule.",
        epilog="choices (details: --list):\n" + list_choices(detail=False),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--list", action="store_true", help="print every dataset, model, rule, "
                   "pre-aggregator, attack and schedule with their parameters, then exit")
    p.add_argument("--config", help="read flags from a JSON file (e.g. a run's config.json); "
                   "flags on the command line override it")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its "
                   "checkpoint (with --rounds R: up to R rounds; only --rounds, --eval-every, "
                   "--checkpoint-every, timeouts, threads, devices and --no-progress may change)")
    p.add_argument("--overwrite", action="store_true", help="a new run may replace the run "
                   "already in its directory (otherwise that is refused)")
    p.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="MODULE",
                   help="import MODULE first: its rules, attacks, datasets or models register "
                   "themselves and are usable by name (repeatable; recorded in config.json)")

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
                   "worker, at least 2 classes each for K >= 2) | longtail | longtail:noniid (class c keeps "
                   "0.5**c of its samples, then iid or sorted-label split)")
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
    g.add_argument("--attack", default=d.attack, help="see --list")

    g = p.add_argument_group("optimisation")
    g.add_argument("--rounds", "--iterations", dest="rounds", type=int, default=d.rounds)
    g.add_argument("--lr", type=float, default=d.lr,
                   help="learning rate (default: 0.1 for plain SGD and --momentum-style ema; "
                   "0.1 (1 - beta) with heavy-ball momentum beta, the same step as plain SGD at "
                   "0.1; signSGD 1e-3)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=d.lr_schedule,
                   help="constant | sqrt (lr/sqrt(t)) | step (x gamma at --lr-milestones) | "
                   "warmup (linear from --warmup-start to lr over --warmup-rounds)")
    g.add_argument("--lr-milestones", type=int_list, default=d.lr_milestones,
                   help="rounds where step decay multiplies lr by --lr-gamma, e.g. 500,950")
    g.add_argument("--lr-gamma", type=float, default=d.lr_gamma)
    g.add_argument("--warmup-rounds", type=int, default=d.warmup_rounds)
    g.add_argument("--warmup-start", type=float, default=d.warmup_start)
    g.add_argument("--momentum", type=float, default=d.momentum,
                   help="worker momentum beta (0: none)")
    g.add_argument("--momentum-style", choices=MOMENTUM_STYLES, default=d.momentum_style,
                   help="heavyball: m = beta m + g (bucketing paper); ema: m = beta m + (1-beta) g")
    g.add_argument("--byz-raw-gradients", type=parse_bool, default=d.byz_raw_gradients,
                   metavar="True|False",
                   help="the Byzantine workers' own messages (bit flip, label flip, ...) start "
                   "from their raw gradients, without worker momentum, as in the bucketing "
                   "paper's code (omniscient attacks see the honest momenta either way)")
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
                   help="run directory (default outputs/<dataset>_<model>_..._s<seed>_<6 hex digits "
                   "of the config's hash>)")
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
    _add_federated(p, d)
    _add_declared(p)
    return p


def _add_federated(p: argparse.ArgumentParser, d: Config) -> None:
    """The federated mode's flags (common/protocols/federated.py); any of them given turns it on."""
    g = p.add_argument_group("federated mode (any of these turns it on; the rule aggregates the "
                             "clients' updates x - x_local)")
    g.add_argument("--local-steps", type=int, default=d.local_steps, metavar="K",
                   help="local SGD steps per client and round, each on a fresh minibatch")
    g.add_argument("--local-lr", type=float, default=d.local_lr,
                   help="the clients' step size; unset: --lr (--lr-schedule scales it)")
    g.add_argument("--local-momentum", type=float, default=d.local_momentum,
                   help="the clients' momentum, kept across their rounds; unset: --momentum")
    g.add_argument("--server-lr", type=float, default=d.server_lr,
                   help="the server's step on the aggregated update; unset: 1 (FedAvg)")
    g.add_argument("--clients-per-round", type=int, default=d.clients_per_round, metavar="M",
                   help="clients drawn at random (seeded) each round; the others sit it out "
                   "(0: all); --defense-f is then f among the M (unset: ceil(M f / n))")
    g.add_argument("--participation", type=float, default=None, metavar="P",
                   help="the fraction of the clients drawn each round: --clients-per-round "
                   "round(P n), at least 1; unset: --clients-per-round")


def _add_declared(p: argparse.ArgumentParser) -> None:
    """One flag per declared parameter key, grouped by registry, help from the declaration."""
    for reg in registries():
        owners: dict[str, list[str]] = {}
        for cls in reg.values():
            for prm in cls.params:
                owners.setdefault(prm.key, []).append(cls.name)
        if not owners:
            continue
        g = p.add_argument_group(f"{reg.kind} parameters (see --list)")
        done = set()
        for cls in reg.values():
            for prm in cls.params:
                if prm.key in done or not prm.flags:
                    continue
                done.add(prm.key)
                g.add_argument(*prm.flags, dest=_PARAM + prm.key, default=argparse.SUPPRESS,
                               metavar=prm.type.__name__.upper(),
                               help=f"{'/'.join(owners[prm.key])}: {prm.help}{prm.bounds()}")


def given_dests(argv: Sequence[str], prog: str) -> set[str]:
    """Config fields set on the command line (by any alias or abbreviation of their flags)."""
    p = build_parser(prog)
    for a in p._actions:
        a.default = argparse.SUPPRESS
    given = set(vars(p.parse_args(argv)))
    if "bucketing" in given:
        given.add("pre")
    return given


def flag_names(dests, prog: str = "main.py") -> list[str]:
    """The long flag of each parser destination (``num_workers`` -> ``--num_nodes``)."""
    by_dest = {a.dest: a.option_strings for a in build_parser(prog)._actions}
    out = []
    for dest in dests:
        opts = by_dest.get(dest) or [f"--{dest}"]
        out.append(next((o for o in opts if o.startswith("--")), opts[0]))
    return out


def _plugins_first(argv: Sequence[str]) -> list[str]:
    """The ``--plugin`` modules of the command line and of its ``--config`` file, read before
    the full parser exists (their declarations add flags to it)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugin", dest="plugins", action="append", default=[])
    pre.add_argument("--config")
    ns, _ = pre.parse_known_args(argv)
    mods = list(ns.plugins)
    if ns.config:
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # parse_args warns, once
                data = read_config_file(ns.config, f"--config {ns.config}")
            if isinstance(data, dict) and isinstance(data.get("plugins"), list):
                mods = [m for m in data["plugins"] if isinstance(m, str)] + mods
        except ConfigError:
            pass  # reported by parse_args
    return mods


def parse_args(argv: Sequence[str] | None = None,
               prog: str = "main.py") -> tuple[Config, argparse.Namespace]:
    """Parse the command line into a validated :class:`Config` (raises ConfigError)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    load_plugins(_plugins_first(argv))
    parser = build_parser(prog)
    _save_catalog(parser)
    ns = parser.parse_args(argv)
    if ns.list:
        return Config(), ns
    base = Config()
    if ns.config:
        base = Config.from_dict(read_config_file(ns.config, f"--config {ns.config}"))
    given = given_dests(argv, prog)
    values = base.to_dict()
    fixed = {f.name for f in fields(Config)} - {"agg_params", "attack_params", "plugins"}
    values.update({k: getattr(ns, k) for k in fixed if k in given})
    values["plugins"] = list(dict.fromkeys([*base.plugins, *ns.plugins]))
    if ns.bucketing is not None and ns.bucketing < 0:
        raise ConfigError(f"--bucketing S needs a bucket size S >= 1 (0 disables), got {ns.bucketing}")
    if ns.bucketing is not None:
        values["pre"] = f"bucketing:{ns.bucketing}" if ns.bucketing > 0 else "none"
    if ns.participation is not None:
        values["clients_per_round"] = _participation(ns.participation, values, given)
    params = _given_params(ns)
    if not ns.config:
        _protocol_defaults(values, given | set(params))
    if values["agg"] != base.agg:
        values["agg_params"] = {}   # the config file's parameters belong to another rule
    if values["attack"] != base.attack:
        values["attack_params"] = {}
    cfg = Config.from_dict(values)
    for section, registry, name in (("agg_params", RULES, cfg.agg),
                                    ("attack_params", ATTACKS, cfg.attack)):
        if name in registry:
            own = {prm.key: prm.name for prm in registry.get(name).params}
            getattr(cfg, section).update({own[k]: v for k, v in params.items() if k in own})
    if ns.resume:
        return cfg, ns
    validate(cfg)
    _warn_idle_flags(cfg, given)
    return cfg, ns


def _warn_idle_flags(cfg: Config, given: set[str]) -> None:
    """Warn about an attack without attackers, and attackers without an attack: each is
    almost always a forgotten flag."""
    if "attack" in given and cfg.attack != "none" and cfg.num_byzantine == 0:
        warn(f"--attack {cfg.attack} with -f 0: no worker is Byzantine, so nothing attacks; "
             "give -f F, the number of Byzantine workers")
    if "num_byzantine" in given and "attack" not in given and cfg.attack == "none" \
            and cfg.num_byzantine > 0:
        warn(f"-f {cfg.num_byzantine} without --attack: the Byzantine workers send honest "
             "messages; give --attack NAME (see --list), or -f 0 --defense-f "
             f"{cfg.num_byzantine} to only make the defense assume {cfg.num_byzantine}")


def _save_catalog(parser: argparse.ArgumentParser) -> None:
    """The catalog of the built-in command line (:mod:`common.run.catalog`), once per process;
    never with a plugin's names or flags in it."""
    if parser.prog in _CATALOG_SAVED or loaded_plugins():
        return
    named = [cls for reg in registries() for cls in reg.values()]
    named += list(datasets.DATASETS.values()) + list(models.MODELS.values())
    if any(not getattr(x, "__module__", "").startswith("common.") for x in named):
        return
    save_catalog(parser, list_choices(), {"rule": RULES.names(), "attack": ATTACKS.names()})
    _CATALOG_SAVED.append(parser.prog)


_CATALOG_SAVED: list[str] = []


def _participation(p: float, values: dict, given: set[str]) -> int:
    """``--participation P`` as the clients per round: round(P n), at least 1."""
    if "clients_per_round" in given:
        raise ConfigError("give --clients-per-round or --participation, not both")
    if not 0 < p <= 1:
        raise ConfigError(f"--participation must be in (0, 1], got {p}")
    n = values["num_workers"]
    return max(1, round(p * n)) if isinstance(n, int) else 0


def _given_params(ns: argparse.Namespace) -> dict:
    """The declared parameters given as flags, by key, each checked by its declaration (also
    those of rules and attacks this run does not use: an out-of-range value is a typo whichever
    run it sits in)."""
    declared = declared_params()
    out = {}
    for dest, text in vars(ns).items():
        if dest.startswith(_PARAM):
            prm = declared[dest[len(_PARAM):]]
            out[prm.key] = prm.check(text, "", where=prm.flag)
    for reg in registries():  # constraints between a class's parameters (check_values)
        for cls in reg.values():
            mine = {prm.name: out[prm.key] for prm in cls.params if prm.key in out}
            if mine:
                reg.resolve(cls.name, mine)
    return out


def _protocol_defaults(values: dict, given: set[str]) -> None:
    """The settings the run's protocol implies for the flags not given; a protocol's
    ``selected_by`` flags given without ``--agg`` select its default rule."""
    if "agg" not in given:
        for proto in PROTOCOLS.values():
            if given & set(proto.selected_by):
                values["agg"] = proto.default_rule
    if values["agg"] in RULES:
        PROTOCOLS.get(RULES.get(values["agg"]).protocol).defaults(values, given)


def list_choices(detail: bool = True) -> str:
    """The text printed by ``--list`` (``detail``: every class's summary and parameters)."""
    lines = [
        "datasets:        " + ", ".join(datasets.dataset_names()),
        "models:          " + ", ".join(models.model_names()),
        "partitions:      iid, noniid, dirichlet:ALPHA, shards:K, longtail, longtail:noniid",
        "byz schedules:   " + ", ".join(BYZ_SCHEDULES),
        "lr schedules:    " + ", ".join(LR_SCHEDULES),
        "momentum styles: " + ", ".join(MOMENTUM_STYLES) + "  (default heavyball)",
    ]
    titles = {"rule": "rules (--agg)", "pre-aggregator": "pre-aggregators (--pre, chain with "
              "commas; NAME:VALUE sets the first parameter)", "attack": "attacks (--attack)",
              "protocol": "protocols (chosen by the rule; federated by its flags)"}
    for reg in (RULES, PREAGGREGATORS, ATTACKS, PROTOCOLS):
        title = titles.get(reg.kind, reg.kind)
        if detail:
            lines += ["", title + ":", *reg.listing()]
        else:
            lines.append(f"{title.split(' (')[0] + ':':<17}" + ", ".join(reg.names()))
    return "\n".join(lines)
