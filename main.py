"""Single-machine simulation: all n workers in this process, one vectorised worker group.

    python main.py                       # digits, non-iid, ALIE attack, CClip + bucketing
    python main.py -n 25 -f 5 --agg cm --attack ipm --noniid --bucketing 2 --momentum 0.9
    python main.py --help | --list
"""
from __future__ import annotations

import sys

import common.startup  # noqa: F401  (first: settings read when torch loads)
from common.cli import exit_on_config_error, resolve_run


@exit_on_config_error
def main(argv=None) -> dict | None:
    resolved = resolve_run(argv, "main.py")
    if resolved is None:
        return None
    cfg, run_dir, resume = resolved

    from common.problem import build_problem, configure_threads, resolve_device
    from master.trainer import Trainer
    from master.transport import InProcessTransport

    device = resolve_device(cfg.device)
    configure_threads(cfg)
    problem = build_problem(cfg, device)
    transport = InProcessTransport(cfg, problem, device)
    summary = Trainer(cfg, problem, transport, run_dir, device).run(resume=resume)
    print(f"final test accuracy {summary['final_test_accuracy']:.2f}% "
          f"(best {summary['best_test_accuracy']:.2f}%) after {summary['rounds']} rounds "
          f"in {summary['wall_seconds']:.1f}s; outputs in {run_dir}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
