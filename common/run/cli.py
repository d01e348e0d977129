"""What both entry points do before training: parse, list, resolve the run directory, resume.

A :class:`ConfigError` anywhere in here (or in building the problem) is printed as one line and
exits with code 2: see :func:`exit_on_config_error`.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Sequence

from common.errors import ConfigError, one_line
from common.run.config import Config, validate
from common.run.flags import list_choices, parse_args
from common.run.io import UnsafeCheckpointError, load_torch, read_json, write_json


def resolve_run(argv: Sequence[str] | None, prog: str) -> tuple[Config, str, bool] | None:
    """(config, run directory, resume?) or None when the command was ``--list``."""
    cfg, ns = parse_args(argv, prog)
    if ns.list:
        print(list_choices())
        return None
    if ns.resume:
        run_dir = ns.resume
        cfg_path = os.path.join(run_dir, "config.json")
        if not os.path.exists(os.path.join(run_dir, "checkpoint.pt")) or not os.path.exists(cfg_path):
            raise ConfigError(f"--resume {run_dir}: no checkpoint.pt and config.json there; "
                              "pass the directory of a run started by main.py or MPI_main.py")
        try:
            saved = read_json(cfg_path)
            cfg = Config.from_dict(saved)
        except (OSError, ValueError) as e:  # ValueError: not JSON (json.JSONDecodeError)
            raise ConfigError(f"--resume {run_dir}: cannot read config.json ({one_line(e)})") from None
        _check_checkpoint(run_dir)
        given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
        if "--no-progress" in given:
            cfg.progress = False
        new_rounds = "--rounds" in given or "--iterations" in given
        if new_rounds:
            cfg.rounds = ns.rounds
        validate(cfg)
        if new_rounds:  # the run's target is now R: a later bare --resume continues to R too
            write_json(cfg_path, {**saved, "rounds": cfg.rounds})
        return cfg, run_dir, True
    run_dir = cfg.output or os.path.join("outputs", cfg.run_name())
    cfg.output = run_dir
    return cfg, run_dir, False


def _check_checkpoint(run_dir: str) -> None:
    """Fail with one line, before any rank starts, if ``checkpoint.pt`` is not one of ours."""
    try:
        ck = load_torch(os.path.join(run_dir, "checkpoint.pt"))
        ok = (isinstance(ck, dict) and isinstance(ck.get("round"), int)
              and isinstance(ck.get("server"), dict) and "params" in ck["server"])
    except UnsafeCheckpointError as e:
        raise ConfigError(f"--resume {run_dir}: checkpoint.pt holds code ({one_line(e)}), not "
                          "only tensors: refused without running it; it was tampered with or not "
                          "written by main.py/MPI_main.py") from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError, pickle errors, EOFError...
        raise ConfigError(f"--resume {run_dir}: checkpoint.pt is unreadable ({one_line(e)}); "
                          "it is damaged or was not written by main.py/MPI_main.py") from None
    if not ok:
        raise ConfigError(f"--resume {run_dir}: checkpoint.pt does not hold a run's state; "
                          "it was not written by main.py/MPI_main.py")


def exit_on_config_error(fn: Callable) -> Callable:
    """Run ``fn``; turn a ConfigError into ``error: <message>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
