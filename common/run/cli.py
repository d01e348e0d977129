"""What both entry points do before training: parse, list, resolve the run directory, resume.

A :class:`ConfigError` anywhere in here (or in building the problem) is printed as one line and
exits with code 2: see :func:`exit_on_config_error`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

from common.errors import ConfigError, one_line
from common.run.command import explicit_command
from common.run.config import Config, validate
from common.run.flags import flag_names, given_dests, list_choices, parse_args
from common.run.io import CHECKPOINT, UnsafeCheckpointError, load_torch, read_config_file
from common.run.resume import RESUMABLE, config_differences, fingerprint, refuse
from common.run.rundir import RunLock, claim


@dataclass
class Resolved:
    """A run ready to start: its config, directory, whether it resumes, and the directory's lock
    (held until released or the process exits)."""

    cfg: Config
    run_dir: str
    resume: bool
    lock: RunLock


def resolve_run(argv: Sequence[str] | None, prog: str,
                check: Callable[[Config], None] | None = None,
                launcher: str = "") -> Resolved | None:
    """The run the command line asks for, its directory claimed; None for ``--list``.
    ``check(cfg)``: the caller's own checks (ConfigError), made before anything is written.
    Prints the run's explicit command (``launcher``, e.g. ``mpiexec -n 5``, in front)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, ns = parse_args(argv, prog)
    if ns.list:
        print(list_choices())
        return None
    if not ns.resume:
        if check is not None:
            check(cfg)
        run_dir = cfg.output or default_run_dir(cfg)
        cfg.output = run_dir
        lock = prepare_run(cfg, run_dir, False, ns.overwrite)
        print(f"run: {explicit_command(cfg, prog, launcher)}", flush=True)
        return Resolved(cfg, run_dir, False, lock)
    run_dir = ns.resume
    given = given_dests(argv, prog) - {"resume"}
    refused = sorted(given - set(RESUMABLE))
    if refused:
        raise ConfigError(f"--resume {run_dir}: {', '.join(flag_names(refused, prog))} cannot "
                          "change on resume (they define the run; start a new run with -o to "
                          "try them); flags a resume may change: "
                          f"{', '.join(flag_names(RESUMABLE, prog))}")
    saved = _saved_config(run_dir)
    for k in sorted(given):  # what the resume changes, recorded in config.json by the trainer
        setattr(saved, k, getattr(cfg, k))
    validate(saved)
    if check is not None:
        check(saved)
    lock = prepare_run(saved, run_dir, True)
    print(f"run: {explicit_command(saved, prog, launcher)} (resumed from {run_dir})", flush=True)
    return Resolved(saved, run_dir, True, lock)


def default_run_dir(cfg: Config) -> str:
    """``outputs/<run name>_<fingerprint>``: distinct configurations get distinct directories
    (the name leaves out lr, rounds and most other settings; the 6 hex digits cover them)."""
    digest = hashlib.sha256(json.dumps(fingerprint(cfg.to_dict()), sort_keys=True,
                                       default=str).encode()).hexdigest()[:6]
    return os.path.join("outputs", f"{cfg.run_name()}_{digest}")


def prepare_run(cfg: Config, run_dir: str, resume: bool, overwrite: bool = False) -> RunLock:
    """Claim ``run_dir`` for ``cfg`` (:func:`common.run.rundir.claim`); on resume, first check
    that its checkpoint is one of ours, of this configuration, and not past ``cfg.rounds``.
    Raises ConfigError (one line) otherwise; nothing is written then."""
    if not resume:
        return claim(run_dir, False, overwrite)
    if not os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        raise ConfigError(f"--resume {run_dir}: no checkpoint.pt there; pass the directory of a "
                          "run started by main.py or MPI_main.py")
    lock = claim(run_dir, True)
    try:
        ck = _check_checkpoint(run_dir)
        if ck["round"] > cfg.rounds:
            raise ConfigError(f"--resume {run_dir}: --rounds {cfg.rounds} is below the "
                              f"checkpoint's round {ck['round']}; give --rounds {ck['round']} or "
                              "more")
        stamp = ck.get("fingerprint")
        if isinstance(stamp, dict) and isinstance(stamp.get("config"), dict):
            # a field added since the checkpoint was written ran at its default
            saved = {**fingerprint(Config().to_dict()), **stamp["config"]}
            diffs = config_differences(saved, cfg.to_dict())
            if diffs:
                raise refuse(run_dir, "config.json does not describe the run of checkpoint.pt "
                             "(edited, or another run's); restore it or start a new run", diffs)
    except ConfigError:
        lock.release()
        raise
    return lock


def _saved_config(run_dir: str) -> Config:
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(cfg_path) or not os.path.exists(os.path.join(run_dir, CHECKPOINT)):
        raise ConfigError(f"--resume {run_dir}: no checkpoint.pt and config.json there; pass "
                          "the directory of a run started by main.py or MPI_main.py")
    try:
        return Config.from_dict(read_config_file(cfg_path, cfg_path))
    except ConfigError as e:
        raise ConfigError(f"--resume {run_dir}: {e}") from None


def _check_checkpoint(run_dir: str) -> dict:
    """The checkpoint's tensors memory-mapped (read only where touched); fails with one line,
    before any rank starts, if ``checkpoint.pt`` is not one of ours."""
    try:
        ck = load_torch(os.path.join(run_dir, CHECKPOINT), mmap=True)
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
    return ck


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
