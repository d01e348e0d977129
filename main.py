"""Single-machine simulation: all n workers in this process, one vectorised worker group.

    python main.py                       # digits, 20 workers, iid, the plain mean, no attack
    python main.py --noniid -f 4 --attack ipm --agg rfa --bucketing 2     # the showcase
    python main.py -n 25 -f 5 --agg cm --attack ipm --noniid --bucketing 2 --momentum 0.9
    python main.py --help | --list

From Python (the same run, in process)::

    from main import Config, train
    result = train(Config(agg="krum", pre="none", num_workers=10, num_byzantine=1, rounds=30))
    result.summary["final_test_accuracy"], result.params, result.model
"""
from __future__ import annotations

import common.run.startup  # noqa: F401  (first: settings read when torch loads)

# isort: split
import sys

from common.run.catalog import answer_without_torch

if __name__ == "__main__":  # --help, --list and flag errors answered before torch loads
    answer_without_torch(sys.argv[1:], "main.py")

# isort: split
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from common.protocols import protocol_of
from common.run.cli import default_run_dir, exit_on_config_error, prepare_run, resolve_run
from common.run.config import Config, validate
from common.run.problem import Problem, build_problem, configure_threads, resolve_device
from master.trainer import Trainer
from master.transport import InProcessTransport
from worker.group import make_worker_group

__all__ = ["Config", "Result", "train", "in_process_trainer", "main"]


@dataclass
class Result:
    """What :func:`train` returns: the run's ``summary.json``, the final flat parameter vector,
    the model with those parameters loaded, and the run directory."""

    summary: dict[str, Any]
    params: Tensor
    model: nn.Module
    run_dir: str


def train(cfg: Config | dict | None = None, *, output: str | None = None,
          resume: bool = False, overwrite: bool = False) -> Result:
    """Train in this process and return the result.

    ``cfg``: a :class:`Config`, or a dict of its fields (``config.json`` as read, or flat keys
    such as ``cclip_tau`` as in the grids); None is the default run. It is validated first
    (ConfigError with one line on a bad value). ``output``: the run directory (default
    ``cfg.output``, else ``outputs/<run name>_<fingerprint>``); ``resume``: continue the run
    there (``cfg`` must be that run's, up to :data:`common.run.resume.RESUMABLE` fields);
    ``overwrite``: a new run may replace the run already there (otherwise ConfigError).
    """
    cfg = Config.from_dict(cfg) if isinstance(cfg, dict) else (cfg or Config())
    validate(cfg)
    run_dir = output or cfg.output or default_run_dir(cfg)
    cfg.output = run_dir
    lock = prepare_run(cfg, run_dir, resume, overwrite)
    try:
        return _run(cfg, run_dir, resume)
    finally:
        lock.release()


def in_process_trainer(cfg: Config, run_dir: str, problem: Problem | None = None) -> Trainer:
    """The trainer of a run with every worker in this process, on ``cfg.device``
    (``problem``: one already built for ``cfg``)."""
    device = resolve_device(cfg.device)
    problem = problem or build_problem(cfg, device)
    group = make_worker_group(cfg, problem, range(cfg.num_workers), device)
    transport = InProcessTransport(group, protocol_of(cfg))
    return Trainer(cfg, problem, transport, run_dir, device)


def _run(cfg: Config, run_dir: str, resume: bool) -> Result:
    configure_threads(cfg)
    trainer = in_process_trainer(cfg, run_dir)
    summary = trainer.run(resume=resume)
    params = trainer.server.params.detach().clone()
    model = trainer.problem.model
    trainer.problem.flat.load_into(model, params.to(next(model.parameters()).device))
    return Result(summary=summary, params=params, model=model, run_dir=run_dir)


@exit_on_config_error
def main(argv=None) -> dict | None:
    """The command line (``python main.py [flags]``): the run's summary, or None for ``--list``."""
    run = resolve_run(argv, "main.py")
    if run is None:
        return None
    try:
        summary = _run(run.cfg, run.run_dir, run.resume).summary
    finally:
        run.lock.release()
    print(f"final test accuracy {summary['final_test_accuracy']:.2f}% "
          f"(best {summary['best_test_accuracy']:.2f}%) after {summary['rounds']} rounds "
          f"in {summary['wall_seconds']:.1f}s; outputs in {run.run_dir}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
