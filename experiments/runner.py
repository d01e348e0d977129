"""Run an experiment grid: every configuration through ``main.main`` (in-process, or in ``-j``
worker processes), then regenerate ``results.csv``, ``report.md`` and figures.

    python -m experiments.runner                        # the menu
    python -m experiments.runner noattack -j 2          # one experiment (Fashion-MNIST if installed)
    python -m experiments.runner noattack --size digits # the quick size
    python -m experiments.runner all -j 2 --size full   # every experiment at paper size

Runs of the default size (``fmnist``) go to ``outputs/<experiment>/``, the others to
``outputs/<experiment>-<size>/``.

A run whose directory already holds a ``summary.json`` written for the same configuration is
skipped (``--force`` reruns it), so an interrupted grid continues where it stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from typing import Sequence

from common.data.datasets import fashionmnist_installed
from common.errors import ConfigError, unknown_name
from common.run.config import Config, validate
from common.run.flags import parse_args
from common.run.io import load_torch, read_json
from experiments import report, runlogs
from experiments.grids import ALL, DIGITS, FMNIST, FULL, SIZES, Experiment, Run, get, menu
from experiments.parallel import run_parallel
from main import main as main_py
from master.trainer import EXIT_INTERRUPTED


def _same_config(path: str, argv: list[str]) -> bool:
    """True if the JSON file ``path`` (a run's ``config.json``, or its ``summary.json``, which
    holds it under ``config``) records exactly this command line's configuration."""
    if not os.path.exists(path):
        return False
    try:
        saved = read_json(path)
        # A field added to Config after the run finished counts as its default, and an earlier
        # version's flat parameters are read into their sections.
        done_cfg = Config.from_dict(saved["config"] if path.endswith("summary.json") else saved)
        validate(done_cfg)
    except (OSError, ValueError, KeyError, TypeError):   # ConfigError is a ValueError
        return False
    done = done_cfg.to_dict()
    cfg, _ = parse_args(argv)
    # progress only changes the terminal output, and a run restored or moved from another
    # directory (experiments.archive) is the same run
    return all(done.get(k) == v for k, v in cfg.to_dict().items()
               if k not in ("progress", "output"))


class GridInterrupted(Exception):
    """A run stopped by SIGTERM/SIGINT (its checkpoint kept): the grid stops with it. An
    Exception, not SystemExit, so that it also travels back from a pool worker."""


def run_one(job: tuple[str, list[str], bool]) -> tuple[str, str, float, str, float]:
    """Run one configuration: (name, status ok|skipped|failed, seconds, message, CPU seconds of
    this process during the run, plus those of the sessions before a resume)."""
    name, argv, force = job
    out_dir = argv[argv.index("--output") + 1]
    t0, c0 = time.time(), time.process_time()
    earlier = 0.0  # CPU seconds of a resumed run's earlier sessions
    try:
        if not force and _same_config(os.path.join(out_dir, "summary.json"), argv):
            return name, "skipped", 0.0, "already done", 0.0
        summary, how = None, ""
        if not force and os.path.exists(os.path.join(out_dir, "checkpoint.pt")) and \
                _same_config(os.path.join(out_dir, "config.json"), argv):
            earlier = _earlier_cpu(out_dir)
            summary = _resume(out_dir)   # this very cell, stopped before its end
            earlier = earlier if summary is not None else 0.0
            how = " (resumed from its checkpoint)" if summary is not None else ""
        if summary is None:
            # Any other cell is rerun from scratch: its directory's old files go first (an
            # interrupted rerun must not leave the old summary by new logs).
            summary = main_py([*argv, "--overwrite"])
        acc = summary["final_test_accuracy"]
        status, msg = "ok", f"final {acc:.2f}%{how}"
    except SystemExit as e:  # main's ConfigError handler exits with code 2 after printing
        if e.code == EXIT_INTERRUPTED:  # SIGTERM/Ctrl-C stops the grid, not only this run
            raise GridInterrupted(name) from None
        status, msg = "failed", f"exit code {e.code}"
    except Exception as e:  # one broken configuration must not stop the grid
        status, msg = "failed", f"{type(e).__name__}: {e}"
    return name, status, time.time() - t0, msg, earlier + time.process_time() - c0


def _earlier_cpu(out_dir: str) -> float:
    """The CPU seconds a stopped run's checkpoint has counted (0 when it does not say)."""
    try:
        ck = load_torch(os.path.join(out_dir, "checkpoint.pt"), mmap=True)  # no tensor is read
        return float(ck.get("cpu_seconds", 0.0))
    except Exception:  # noqa: BLE001 -- an unreadable checkpoint: _resume says so and reruns
        return 0.0


def _resume(out_dir: str) -> dict | None:
    """Continue the stopped run in ``out_dir`` from its checkpoint; None when the checkpoint
    cannot be resumed (main has said why), so that the caller reruns the cell."""
    try:
        return main_py(["--resume", out_dir])
    except SystemExit as e:
        if e.code == EXIT_INTERRUPTED:
            raise
        print(f"{out_dir}: not resumable; running it again from the start", flush=True)
        return None


def check(exp: Experiment, runs: list[Run], out_root: str) -> None:
    """Validate every run's command line before starting any (ConfigError on the first bad one).
    Warnings are left to the runs themselves (a grid would repeat each one per seed)."""
    for r in runs:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parse_args(r.argv(os.path.join(out_root, exp.name, r.name)))
        except ConfigError as e:
            raise ConfigError(f"experiment {exp.name} cannot run yet ({r.name}): {e}") from None


def experiment_dir(out_root: str, name: str, size: str) -> str:
    """Where an experiment's runs of ``size`` go: ``<out_root>/<name>`` for the default size,
    ``<out_root>/<name>-<size>`` for the others."""
    return os.path.join(out_root, name if size == FMNIST else f"{name}-{size}")


def default_size() -> str:
    """``fmnist`` where the Debian package's Fashion-MNIST is installed, else ``digits``."""
    return FMNIST if fashionmnist_installed() else DIGITS


def run_experiment(exp: Experiment, *, size: str = DIGITS, jobs: int = 1, seeds: int | None = None,
                   rounds: int | None = None, force: bool = False, out_root: str = "outputs",
                   quiet: bool = False) -> str:
    """Run every configuration of ``exp`` at ``size`` and write its report; returns the
    experiment's directory (:func:`experiment_dir`)."""
    exp_dir = experiment_dir(out_root, exp.name, size)
    runs = exp.runs(size, seeds=seeds, rounds=rounds)
    check(exp, runs, out_root)
    os.makedirs(exp_dir, exist_ok=True)
    jobs_ = [(r.name, r.argv(os.path.join(exp_dir, r.name)), force) for r in runs]
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"== {exp.name} ({size}): {len(runs)} runs, {jobs} in parallel -> {exp_dir}")
    t0 = time.time()
    failed, finished = [], []

    def record(result: tuple[str, str, float, str, float]) -> None:
        name, status, secs, msg, cpu = result
        finished.append(name)
        say(f"[{len(finished)}/{len(runs)}] {status:<7} {secs:6.1f}s  {name}  {msg}")
        if status == "failed":
            failed.append((name, msg))
        elif status == "ok":
            runlogs.log_cpu(exp_dir, name, cpu, secs)

    if jobs <= 1:
        for job in jobs_:
            record(run_one(job))
    else:
        try:
            run_parallel(run_one, jobs_, jobs, record)
        except KeyboardInterrupt:  # the workers' runs have checkpointed and stopped
            raise GridInterrupted(exp.name) from None
    report.write_report(exp_dir, quiet=quiet)
    say(f"== {exp.name}: done in {time.time() - t0:.0f}s; {len(failed)} failed; "
        f"report in {exp_dir}/report.md")
    for name, msg in failed:
        say(f"   failed: {name}: {msg}")
    return exp_dir


def plan(exp: Experiment, size: str, seeds: int | None, rounds: int | None, out_root: str) -> None:
    """``--dry-run``: check every command line of the grid (ConfigError on the first bad one)
    and print how many runs would go where, and the first one's ``main.py`` command."""
    runs = exp.runs(size, seeds=seeds, rounds=rounds)
    check(exp, runs, out_root)
    exp_dir = experiment_dir(out_root, exp.name, size)
    print(f"== {exp.name} ({size}): {len(runs)} runs -> {exp_dir}; all command lines check; "
          f"the first: python main.py {' '.join(runs[0].argv(os.path.join(exp_dir, runs[0].name)))}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="run.sh", description="Run the experiment grids.")
    p.add_argument("name", nargs="?", help="experiment name or 'all' (none: list them)")
    p.add_argument("-j", "--jobs", type=int, default=int(os.environ.get("J", "1")),
                   help="configurations run in parallel (default $J or 1)")
    p.add_argument("--size", default=os.environ.get("SIZE"),
                   help=f"{' | '.join(SIZES)} (default $SIZE; FULL=1 means full; otherwise "
                   "fmnist where Fashion-MNIST is installed, else digits)")
    p.add_argument("--seeds", type=int, default=int(os.environ["SEEDS"]) if os.environ.get("SEEDS") else None,
                   help="seeds per configuration (default: the experiment's; $SEEDS)")
    p.add_argument("--rounds", type=int,
                   default=int(os.environ["ROUNDS"]) if os.environ.get("ROUNDS") else None,
                   help="override the rounds of every run (quick looks; $ROUNDS)")
    p.add_argument("--force", action="store_true", default=os.environ.get("FORCE", "0") == "1",
                   help="rerun configurations that already finished ($FORCE=1)")
    p.add_argument("--out", default=os.environ.get("OUT", "outputs"), help="output root ($OUT)")
    p.add_argument("--dry-run", action="store_true",
                   help="check every run's command line and print the plan; run nothing")
    ns = p.parse_args(argv)
    if not ns.name:
        print("usage: bash run.sh NAME|all [-j N]   (SIZE=digits for the quick size, FULL=1 for "
              "the paper's)\n")
        print("experiments:\n" + menu())
        return 0
    try:
        size = ns.size or (FULL if os.environ.get("FULL", "0") == "1" else None)
        if size is None:
            size = default_size()
            if size == DIGITS:
                print("note: Fashion-MNIST is not installed (apt-get install "
                      "dataset-fashion-mnist): running the quick digits size", file=sys.stderr)
        if size not in SIZES:
            raise unknown_name("size", size, SIZES)
        if ns.jobs < 1:
            raise ConfigError(f"-j must be >= 1, got {ns.jobs}")
        if ns.seeds is not None and ns.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {ns.seeds}")
        if ns.rounds is not None and ns.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {ns.rounds}")
        exps = ([get(n) for n in ALL if size in get(n).sizes] if ns.name == "all"
                else [get(ns.name)])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    status = 0
    for exp in exps:
        try:
            if ns.dry_run:
                plan(exp, size, ns.seeds, ns.rounds, ns.out)
                continue
            run_experiment(exp, size=size, jobs=ns.jobs, seeds=ns.seeds, rounds=ns.rounds,
                           force=ns.force, out_root=ns.out)
        except ConfigError as e:
            # `all` keeps going past an experiment whose feature is not available.
            print(f"error: {e}", file=sys.stderr)
            status = 2
        except GridInterrupted as e:
            print(f"stopped by a signal during {e}; the same command continues the grid",
                  file=sys.stderr)
            return EXIT_INTERRUPTED
    return status


if __name__ == "__main__":
    sys.exit(main())
