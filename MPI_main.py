"""Distributed run: rank 0 is the parameter server, ranks 1..R-1 host the workers.

    mpiexec -n 5 python MPI_main.py -n 4 -f 1 --rounds 100      # one worker per rank
    mpiexec -n 3 python MPI_main.py -n 20 -f 4                  # 10 workers per rank, vectorised
    mpiexec -f hosts/hostfile -n 9 python MPI_main.py -n 32 --device cuda   # a cluster

Takes exactly the flags of ``main.py`` and, for the same config and seed, ends with the same
parameters. Rank 0 runs the same :class:`master.trainer.Trainer` with an
:class:`master.mpi_transport.MPITransport`; worker ranks run :class:`worker.mpi_worker.WorkerRank`.
Rank 0 alone parses the command line and resolves ``--resume`` (the run directory needs to exist
only where rank 0 runs) and broadcasts the config; every rank then builds the data and model from
it deterministically. See hosts/README.md for clusters, GPUs and the threat model.
"""
from __future__ import annotations

import common.run.startup  # noqa: F401  (first: settings read when torch loads)

# isort: split
import os
import sys

from common.run.catalog import answer_without_torch

if __name__ == "__main__":  # --help, --list and flag errors answered before torch loads; under
    # mpiexec every rank answers the same way and only rank 0 prints (MPICH / Open MPI set these)
    _RANK = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
    answer_without_torch(sys.argv[1:], "MPI_main.py", quiet=_RANK != "0")

# isort: split
import json
import signal
import socket
import traceback

import numpy as np
import torch

from common.errors import ConfigError
from common.run.cli import resolve_run
from common.run.config import Config
from common.run.problem import build_problem, configure_threads, resolve_device
from master.trainer import Trainer

try:  # importing mpi4py initialises MPI; main() reports a missing installation in one line
    from mpi4py import MPI
except ImportError:
    MPI = None
if MPI is not None:  # both sides import mpi4py themselves
    from master.mpi_transport import MPITransport
    from worker.mpi_worker import WorkerRank

# Header of the start-up broadcast: [run?, exit code, length of the JSON config].
RUN, EXIT = 1, 0


def _rank_count(size: int):
    """The check of the launch's rank count against the config's workers (ConfigError)."""
    def check(cfg) -> None:
        n = cfg.num_workers
        if size == 1:
            raise ConfigError("MPI_main.py needs rank 0 (server) plus at least one worker rank: "
                              f"start it with mpiexec, e.g. mpiexec -n {min(n, 4) + 1} python "
                              "MPI_main.py ... (python main.py runs everything in one process)")
        if size - 1 > n:
            raise ConfigError(f"mpiexec -n {size} gives {size - 1} worker ranks for n={n} "
                              "workers; every worker rank needs a worker: use at most "
                              f"{n + 1} ranks, or more workers (-n)")
    return check


def _resolve(argv, size: int) -> tuple[int, int, dict | None, str, bool]:
    """Rank 0: (RUN/EXIT, exit code, config dict, run dir, resume?). Prints its own errors."""
    try:
        resolved = resolve_run(argv, "MPI_main.py", check=_rank_count(size),
                               launcher=f"mpiexec -n {size}")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT, 2, None, "", False
    except SystemExit as e:  # --help
        return EXIT, int(e.code or 0), None, "", False
    if resolved is None:     # --list
        return EXIT, 0, None, "", False
    return RUN, 0, resolved.cfg.to_dict(), resolved.run_dir, resolved.resume


def _share_config(comm, rank: int, argv) -> tuple[int, dict | None, str, bool]:
    """Rank 0 resolves, everyone learns the verdict and the config (raw bytes, no pickle)."""
    head = np.zeros(3, np.int64)
    cfg_dict, run_dir, resume = None, "", False
    if rank == 0:
        what, code, cfg_dict, run_dir, resume = _resolve(argv, comm.Get_size())
        text = json.dumps(cfg_dict).encode() if cfg_dict is not None else b""
        head[:] = (what, code, len(text))
    if comm.Get_size() == 1:
        return int(head[1]), cfg_dict, run_dir, resume
    comm.Bcast(head, root=0)
    if head[0] != RUN:
        return int(head[1]), None, "", False
    payload = np.zeros(int(head[2]), np.uint8)
    if rank == 0:
        payload[:] = np.frombuffer(text, np.uint8)
    comm.Bcast(payload, root=0)
    return -1, json.loads(payload.tobytes().decode()), run_dir, resume


def _setup(comm, rank: int, cfg_dict: dict):
    """Device, threads, problem, and this rank's role object; raises on bad config or data."""
    cfg = Config.from_dict(cfg_dict)
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = local.Get_rank(), local.Get_size()
    local.Free()
    # Rank 0 may keep the server on the CPU (--server-device cpu) while workers use GPUs.
    device = resolve_device((cfg.server_device or cfg.device) if rank == 0 else cfg.device,
                            local_rank)
    configure_threads(cfg)
    if not cfg.threads:
        # Ranks on a node share its cores: more threads than that only contend.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (cores or 1) // local_size)))
    problem = build_problem(cfg, device)
    layout = _layout(comm, local_rank, local_size, device)
    if rank == 0:
        transport = MPITransport(cfg, problem, device, comm)
        transport.layout = layout
        return cfg, device, problem, transport
    return cfg, device, problem, WorkerRank(cfg, problem, device, comm)


def _layout(comm, local_rank: int, local_size: int, device) -> list[dict]:
    """Every rank's host, local rank, ranks on its host and device (for summary.json): fixed-size
    buffers, no pickle."""
    mine = np.zeros(96, np.uint8)
    text = f"{socket.gethostname()}\0{device}".encode()[:88]
    mine[:len(text)] = np.frombuffer(text, np.uint8)
    mine[88:96] = np.frombuffer(np.array([local_rank, local_size], np.int32).tobytes(), np.uint8)
    every = np.zeros((comm.Get_size(), 96), np.uint8)
    comm.Allgather(mine, every)
    out = []
    for row in every:
        host, _, dev = row[:88].tobytes().rstrip(b"\0").decode(errors="replace").partition("\0")
        lr, ls = np.frombuffer(row[88:96].tobytes(), np.int32)
        out.append({"host": host, "local_rank": int(lr), "local_size": int(ls), "device": dev})
    return out


def main(argv=None) -> int:
    if MPI is None:
        print("error: MPI_main.py needs mpi4py and an MPI library: pip install mpi4py mpich "
              "(or use python main.py)", file=sys.stderr)
        return 2
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if rank != 0:
        # mpiexec forwards Ctrl-C/SIGTERM to every rank; only rank 0 acts on them (it needs the
        # workers alive to checkpoint, then stops them).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    code, cfg_dict, run_dir, resume = _share_config(comm, rank, argv)
    if cfg_dict is None:
        return code

    # Every rank builds its part; all learn whether everyone succeeded before any waits on another.
    err, role = 0, None
    try:
        cfg, device, problem, role = _setup(comm, rank, cfg_dict)
    except ConfigError as e:
        err, msg = 2, f"error: {e}"
    except Exception:  # noqa: BLE001 - reported with the rank, then every rank exits
        err, msg = 1, traceback.format_exc()
    codes = np.zeros(comm.Get_size(), np.int64)
    comm.Allgather(np.array([err], np.int64), codes)
    if codes.any():
        if err and (rank == 0 or codes[0] == 0):  # an error every rank shares is printed once
            where = "" if rank == 0 else f"(rank {rank} on {socket.gethostname()}) "
            print(where + msg, file=sys.stderr, flush=True)
        return int(codes.max())

    if rank != 0:
        try:
            role.serve()
        except Exception:  # noqa: BLE001 - a broken worker must not leave the job hanging
            traceback.print_exc()
            sys.stderr.flush()
            comm.Abort(1)
        return 0

    try:
        summary = Trainer(cfg, problem, role, run_dir, device).run(resume=resume)
        role.close()
    except SystemExit:   # interrupted: the trainer checkpointed and stopped the workers
        raise
    except ConfigError as e:  # a checkpoint that does not fit, a full disk: stop the workers
        print(f"error: {e}", file=sys.stderr, flush=True)
        role.close()
        return 2
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
    print(f"final test accuracy {summary['final_test_accuracy']:.2f}% "
          f"(best {summary['best_test_accuracy']:.2f}%) after {summary['rounds']} rounds "
          f"in {summary['wall_seconds']:.1f}s on {comm.Get_size() - 1} worker ranks; "
          f"outputs in {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
