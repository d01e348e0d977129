"""The explicit command line of a run: what ``main.py`` / ``MPI_main.py`` print before they
start and ``summary.json`` records, so every run says exactly what it ran."""
from __future__ import annotations

import shlex
from dataclasses import fields
from typing import Any

from common.aggregation.rules import RULES
from common.attacks import ATTACKS
from common.run.config import Config

__all__ = ["explicit_command"]

# The fields every explicit command spells out, in this order (with their short flags): what a
# reader needs to see to know the run. The others appear when they differ from their default.
_ALWAYS = {"dataset": "--dataset", "model": "--model", "num_workers": "-n",
           "num_byzantine": "-f", "partition": "--partition", "batch_size": "--batch-size",
           "agg": "--agg", "pre": "--pre", "attack": "--attack", "rounds": "--rounds",
           "lr": "--lr", "momentum": "--momentum", "seed": "--seed"}
# Bookkeeping that does not change the run (the output directory is printed beside).
_NEVER = {"output", "progress", "plugins", "agg_params", "attack_params"}


def _flag_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def explicit_command(cfg: Config, prog: str = "main.py", launcher: str = "") -> str:
    """The command line that runs ``cfg`` with every setting spelled out (``cfg`` validated, so
    its defaults are resolved): the run-defining flags always, any other field and any rule or
    attack parameter that differs from its default; ``launcher`` (e.g. ``mpiexec -n 5``) in
    front. Parsing it gives ``cfg`` back (tested)."""
    d, default = cfg.to_dict(), Config().to_dict()
    args = ([launcher] if launcher else []) + [f"python {prog}"]
    args += [f"--plugin {shlex.quote(m)}" for m in cfg.plugins]
    args += [f"{flag} {shlex.quote(_flag_value(d[k]))}" for k, flag in _ALWAYS.items()]
    for f in fields(Config):
        k = f.name
        if k in _ALWAYS or k in _NEVER or d[k] == default[k] or d[k] is None:
            continue
        args.append(f"--{k.replace('_', '-')} {shlex.quote(_flag_value(d[k]))}")
    for registry, name, values in ((RULES, cfg.agg, cfg.agg_params),
                                   (ATTACKS, cfg.attack, cfg.attack_params)):
        for prm in registry.get(name).params:
            v = values.get(prm.name, prm.default)
            if v != prm.default and v is not None and prm.flags:
                args.append(f"{prm.flag} {shlex.quote(_flag_value(v))}")
    return " ".join(args)
