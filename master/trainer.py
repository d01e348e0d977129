"""The round loop: who is Byzantine, collect messages, aggregate, step, evaluate, log, checkpoint.

One loop for both entry points; ``main.py`` passes an in-process transport and ``MPI_main.py``
an MPI one. A run directory holds ``config.json``, ``metrics.jsonl`` (one line per round:
Byzantine set, faults, rule diagnostics, and test metrics on evaluation rounds),
``checkpoint.pt`` and, at the end, ``summary.json``.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

from common.attacks import run_attack
from common.errors import ConfigError, one_line
from common.finite import all_finite
from common.run.command import explicit_command
from common.run.config import Config
from common.run.io import CHECKPOINT, MetricsLog, load_torch, save_torch, write_json
from common.run.problem import Problem
from common.run.resume import fingerprint, refuse, shape_differences, tensor_shapes
from common.run.rundir import io_error
from common.run.schedule import ByzantineSchedule
from master.evaluate import evaluate
from master.messages import sanitize
from master.server import Server
from master.transport import Transport

# The exit code of a run that a signal stopped (its checkpoint saved), as a shell's 128 + SIGINT.
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """Raised at a round boundary after SIGTERM/SIGINT (or at once on a second signal)."""


class _StopRequest:
    """SIGTERM/SIGINT handler. The first signal only records the request: the round in flight
    finishes (workers have already advanced their momenta and attack state for it), so the
    checkpoint written at the boundary is consistent and a resumed run ends with the same model.
    A second signal raises :class:`Interrupted` at once and the last saved checkpoint is kept."""

    def __init__(self) -> None:
        self.name: str | None = None

    def __call__(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.name is not None:
            raise Interrupted(f"{name}, second signal")
        self.name = name
        print(f"\n{name}: finishing this round, then saving a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)


class Trainer:
    """The round loop of one run, writing into ``out_dir``; ``transport`` brings the messages."""

    def __init__(self, cfg: Config, problem: Problem, transport: Transport, out_dir: str,
                 device: torch.device) -> None:
        self.cfg, self.problem, self.transport, self.out_dir = cfg, problem, transport, out_dir
        self.device = device
        self.server = Server(cfg, problem, device)
        protocol = self.server.protocol
        if protocol.has_startup:  # e.g. DiverseFL: every client's data sample, once
            protocol.start(self.server.rule, transport.startup())
        # an extra test metric the attack asks for (the backdoor's success rate)
        self.test_metric = run_attack(cfg, problem.dataset.num_classes).test_metric()
        self.schedule = ByzantineSchedule(cfg)
        self.start_round = 0
        self.best_acc = -math.inf
        self.last_eval: dict = {}
        self.wall_before = 0.0
        self.cpu_before = 0.0  # this process's CPU seconds in the run's earlier sessions
        self._clock = (time.time(), time.process_time())
        # Round of the checkpoint.pt this run wrote last or resumed from; None before either (a
        # checkpoint.pt an earlier run left in the directory is never read for worker state).
        self.saved_round: int | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def elapsed(self) -> tuple[float, float]:
        """(wall, CPU) seconds of the run so far, earlier sessions (before a resume) included;
        CPU is this process's, all its threads."""
        t0, c0 = self._clock
        return (self.wall_before + time.time() - t0,
                self.cpu_before + time.process_time() - c0)

    def checkpoint(self, next_round: int, clock: tuple[float, float] | None = None) -> None:
        """Save the run's state before round ``next_round``; ``clock``: the (wall, CPU) seconds
        to record (default :meth:`elapsed` now; the end of a run passes its summary's)."""
        path = os.path.join(self.out_dir, CHECKPOINT)
        workers = self.transport.state_dict()
        missing = workers.pop("missing", None)
        if missing:
            self._keep_previous_state(path, workers, sorted(missing), next_round)
        for k in self.server.protocol.transient_state(self.cfg):
            # no round reads them before writing them: one zero, expanded (saved as one number)
            workers[k] = workers[k].new_zeros(()).expand_as(workers[k])
        server = self.server.state_dict()
        wall, cpu = self.elapsed() if clock is None else clock
        state = {
            "round": next_round,
            "server": server,
            "schedule": self.schedule.state_dict(),
            "workers": workers,
            "best_acc": self.best_acc,
            "last_eval": self.last_eval,
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "fingerprint": {"config": fingerprint(self.cfg.to_dict()),
                            "shapes": tensor_shapes({"server": server, "workers": workers})},
        }
        try:
            save_torch(path, state)
        except OSError as e:  # the previous checkpoint.pt is untouched (atomic replace)
            raise ConfigError(f"{io_error('write', path, e)}; "
                              + self._kept_checkpoint()) from None
        self.saved_round = next_round

    def _kept_checkpoint(self) -> str:
        if self.saved_round is None:
            return "no checkpoint of this run was written yet"
        return (f"the checkpoint of round {self.saved_round} is kept: continue with "
                f"--resume {self.out_dir}")

    def _keep_previous_state(self, path: str, workers: dict, missing: list[int],
                             next_round: int) -> None:
        """Workers whose state the transport could not collect (MPI: their rank did not answer
        in time) get their rows of every per-worker tensor from this run's previous checkpoint,
        their last known state, instead of zeros; one warning line says which and from where.
        The previous file is memory-mapped, so only those rows are read (no second (n, d) copy).
        The attack state is the transport's (a fresh one if the silent rank held it)."""
        rows, why = None, "there is no earlier checkpoint of this run"
        if self.saved_round is not None:
            try:
                rows = _worker_rows(path, self.saved_round, workers, missing)
            except Exception as e:  # noqa: BLE001 - a damaged file must not stop the checkpoint
                why = f"the checkpoint of round {self.saved_round} is unusable ({one_line(e)})"
        if rows is not None:
            for k, v in rows.items():
                workers[k][missing] = v
            what = f"they keep their state from the checkpoint of round {self.saved_round}"
        else:
            what = f"they start from zeros ({why})"
        print(f"warning: checkpoint of round {next_round}: no state arrived from workers "
              f"{_spans(missing)}; {what}", file=sys.stderr, flush=True)

    def restore(self) -> None:
        ck = load_torch(os.path.join(self.out_dir, CHECKPOINT))
        saved = ck.get("fingerprint", {}).get("shapes") if isinstance(ck.get("fingerprint"),
                                                                       dict) else None
        if isinstance(saved, dict):
            diffs = shape_differences(saved, self._shapes_needed())
            if diffs:
                raise refuse(self.out_dir, "checkpoint.pt does not fit this run (its data or "
                             "model changed)", diffs)
        self.start_round = self.saved_round = int(ck["round"])
        self.server.load_state_dict(ck["server"])
        self.schedule.load_state_dict(ck["schedule"])
        workers = ck["workers"]
        for k in self.server.protocol.transient_state(self.cfg):
            workers[k] = workers[k].contiguous()   # saved as one expanded zero
        self.transport.load_state_dict(workers)
        self.best_acc = float(ck["best_acc"])
        self.last_eval = dict(ck["last_eval"])
        self.wall_before = float(ck["wall_seconds"])
        self.cpu_before = float(ck.get("cpu_seconds", 0.0))  # absent before 2026-12-07

    def _shapes_needed(self) -> dict[str, list[int]]:
        """The shape of every server and per-worker tensor this run keeps."""
        n = self.cfg.num_workers
        schema = self.server.protocol.state_schema(self.cfg, self.problem.dim)
        return {**tensor_shapes({"server": self.server.state_dict()}),
                **{f"workers.{k}": [n, *shape] for k, (shape, _) in schema.items()}}

    # -- the loop ------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        """Train to ``cfg.rounds`` (continuing from the checkpoint if ``resume``); returns the
        summary. SIGTERM/SIGINT end the run at a round boundary with a checkpoint, exit 130."""
        cfg = self.cfg
        os.makedirs(self.out_dir, exist_ok=True)
        if resume:
            self.restore()
        try:  # the fully resolved configuration, with what a resume changed
            write_json(os.path.join(self.out_dir, "config.json"), cfg.to_dict())
            log = MetricsLog(os.path.join(self.out_dir, "metrics.jsonl"),
                             keep_until_round=self.start_round if resume else None)
        except OSError as e:
            raise io_error("write the run directory", self.out_dir, e) from None
        stop = _StopRequest()
        old_handlers = signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGINT, stop)
        consistent = True  # False while a round is in flight
        self._clock = (time.time(), time.process_time())
        t = self.start_round
        bar = tqdm(total=cfg.rounds, initial=t, disable=not cfg.progress, desc="rounds",
                   dynamic_ncols=True, leave=False)
        interrupted: BaseException | None = None
        try:
            while t < cfg.rounds:
                if stop.name is not None:
                    raise Interrupted(stop.name)
                consistent = False
                record = self.round(t)
                try:
                    log.write(record)
                except OSError as e:
                    raise ConfigError(f"{io_error('write', log.path, e)}; "
                                      + self._kept_checkpoint()) from None
                t += 1
                consistent = True
                bar.update(1)
                if "test_accuracy" in record:
                    bar.set_postfix(acc=f"{record['test_accuracy']:.1f}")
                if t % cfg.checkpoint_every == 0 and t < cfg.rounds:
                    self.checkpoint(t)
            wall, cpu = self.elapsed()
            self.checkpoint(t, (wall, cpu))
        except (KeyboardInterrupt, Interrupted) as e:
            interrupted = e
            if consistent:
                self.checkpoint(t)
        finally:
            bar.close()
            log.close()
            signal.signal(signal.SIGTERM, old_handlers[0])
            signal.signal(signal.SIGINT, old_handlers[1])
            if interrupted is not None:
                self.transport.close()
        if interrupted is not None:
            what = (f"after {t} rounds; checkpoint saved" if consistent else
                    f"during round {t}; the last saved checkpoint is kept")
            print(f"\ninterrupted ({type(interrupted).__name__} {interrupted}) {what}. "
                  f"Continue with: --resume {self.out_dir}", flush=True)
            raise SystemExit(EXIT_INTERRUPTED)
        execution = self.transport.describe()
        summary = {
            "final_test_accuracy": self.last_eval.get("test_accuracy"),
            "final_test_loss": self.last_eval.get("test_loss"),
            "best_test_accuracy": self.best_acc,
            "rounds": t,
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            "num_workers": cfg.num_workers,
            "num_byzantine": cfg.num_byzantine,
            "execution": execution,
            "command": explicit_command(cfg, execution["entry"], "" if execution["entry"]
                                        == "main.py" else f"mpiexec -n {execution['processes']}"),
            "config": cfg.to_dict(),
        }
        if self.test_metric is not None and self.test_metric[0] in self.last_eval:
            summary["final_" + self.test_metric[0]] = self.last_eval[self.test_metric[0]]
        path = os.path.join(self.out_dir, "summary.json")
        try:
            write_json(path, summary)
        except OSError as e:
            raise ConfigError(f"{io_error('write', path, e)}; {self._kept_checkpoint()}") from None
        return summary

    def round(self, t: int) -> dict:
        cfg, protocol = self.cfg, self.server.protocol
        t0 = time.perf_counter()
        byz = self.schedule.mask(t)
        # the round's clients (None: every worker); message row j is worker clients[j]
        clients = protocol.participants(cfg, t)
        res = self.transport.round(self.server.params, t, byz, clients)
        faults = sanitize(res.messages, res.status, res.checked, res.finite)
        bad = byz if clients is None else byz[clients]
        honest = torch.from_numpy(~bad)
        update, info = self.server.aggregate(res.messages, honest, t, dropped=sorted(faults),
                                             clients=clients)
        for k in info.get("invalid", ()):  # a vote buffer that did not decode (signSGD)
            faults.setdefault(int(k), "undecodable")
        if update is not None and not all_finite(update):
            # Only reachable when the rule's precondition is violated at run time (e.g. f too
            # small for the real number of attackers): skip the step rather than poison the model.
            faults[-1] = "nonfinite_update"
            update = None
        # A skipped round (nothing usable, or a non-finite update) leaves the model and the
        # server's momentum as they were.
        lr = self.server.step(update, t) if update is not None else protocol.step_size(cfg, t)
        # train_loss: mean batch loss of the honest workers whose message was usable (a worker
        # flagged in faults may have sent garbage losses too, e.g. random bytes)
        reporting = ~bad
        reporting[[k for k in faults if k >= 0]] = False
        losses = res.losses[torch.from_numpy(reporting)]
        losses = losses[torch.isfinite(losses)]
        worker = (lambda r: r) if clients is None else (lambda r: int(clients[r]))
        record = {
            "round": t,
            "lr": lr,
            "train_loss": float(losses.mean()) if len(losses) else None,
            "byzantine": [worker(r) for r in bad.nonzero()[0].tolist()],
        }
        if faults:
            record["faults"] = {str(worker(k) if k >= 0 else k): v for k, v in faults.items()}
        if info:
            record["rule"] = info
        if res.info:
            record.update(res.info)
        record.update(protocol.round_record(cfg, t, clients))
        record["seconds"] = round(time.perf_counter() - t0, 6)  # collect, aggregate and step
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
            self.last_eval = evaluate(self.problem, self.server.params, self.device,
                                      metric=self.test_metric)
            self.best_acc = max(self.best_acc, self.last_eval["test_accuracy"])
            record.update(self.last_eval)
        return record


def _worker_rows(path: str, round_: int, workers: dict, rows: list[int]) -> dict:
    """Rows ``rows`` of every per-worker tensor of ``workers`` as saved in the checkpoint at
    ``path``, which must be that of round ``round_`` with tensors of the same shapes and dtypes.
    Memory-mapped: only those rows are read from the file."""
    ck = load_torch(path, mmap=True)
    if not isinstance(ck, dict) or ck.get("round") != round_ or not isinstance(
            ck.get("workers"), dict):
        raise ValueError(f"{CHECKPOINT} no longer holds round {round_}")
    out = {}
    for k, v in workers.items():
        if not isinstance(v, torch.Tensor):
            continue
        old = ck["workers"].get(k)
        if not isinstance(old, torch.Tensor) or old.shape != v.shape or old.dtype != v.dtype:
            raise ValueError(f"its workers' '{k}' does not match")
        out[k] = old[rows]          # a copy: the mapping goes when ``ck`` does
    return out


def _spans(ids: list[int]) -> str:
    """Sorted worker indices as ranges: [2, 3, 4, 7] -> '2..4, 7'."""
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[i - 1] + 1:
            a, b = ids[start], ids[i - 1]
            parts.append(str(a) if a == b else f"{a}..{b}")
            start = i
    return ", ".join(parts)
