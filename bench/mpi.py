"""Per-round communication of the MPI runtime against bare mpi4py collectives of the same bytes.

    python bench/mpi.py                          # ranks 4 and 8, d = 1e5, 1e6, 1e7
    python bench/mpi.py --ranks 4 --dims 100000 --reps 20

For each rank count R (started here with ``mpiexec -n R``; more ranks than cores is fine but
then every number includes time-sharing) and each d, with n = R - 1 workers (one per rank):

* runtime: ``MPITransport.round`` on rank 0 against real :class:`worker.mpi_worker.WorkerRank`
  loops, i.e. the header and parameter broadcasts, the per-rank receives into the (n, d)
  buffer with their size checks, and the trailers; the workers' gradient computation is
  replaced by a precomputed (1, d) message so only communication is timed;
* bare: ``comm.Bcast`` of the d float32 parameters + ``comm.Gatherv`` of the n x d float32
  messages into one buffer on rank 0 (blocking collectives, no checks).

Prints the median seconds per round of both and their ratio (runtime / bare).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def reps_for(d: int, base: int) -> int:
    return max(5, int(base * 1e5 / d)) if d > 1e5 else base


def child(dims: list[int], base_reps: int) -> None:
    import numpy as np
    import torch
    from mpi4py import MPI
    from torch import nn

    from common.data.flat import FlatParams
    from common.run.config import Config
    from common.run.problem import build_problem

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    n = size - 1
    cfg = Config(num_workers=n, num_byzantine=0, attack="none", agg="mean", pre="none",
                 model="softmax", rounds=1, progress=False)
    base = build_problem(cfg)

    class Vector(nn.Module):
        """A model that is one d-vector: the runtime only sees its flat size."""

        def __init__(self, d: int) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(d))

    for d in dims:
        reps = reps_for(d, base_reps)
        model = Vector(d)
        flat = FlatParams(model)
        problem = type(base)(dataset=base.dataset, model=model, flat=flat,
                             init_params=flat.flatten(model).clone(), shards=base.shards)
        params = torch.randn(d)
        msg = np.random.default_rng(rank).standard_normal((1, d)).astype(np.float32)

        # bare collectives
        recv = np.empty((n, d), np.float32) if rank == 0 else None
        counts = [0] + [d] * n
        bare = []
        comm.Barrier()
        for _ in range(reps + 1):  # back to back, like the runtime's rounds
            t0 = time.perf_counter()
            p = params.numpy() if rank == 0 else np.empty(d, np.float32)
            comm.Bcast([p, MPI.FLOAT], root=0)
            send = np.empty((0,), np.float32) if rank == 0 else msg
            comm.Gatherv([send, MPI.FLOAT], [recv, (counts, None), MPI.FLOAT] if rank == 0 else None,
                         root=0)
            bare.append(time.perf_counter() - t0)

        # the runtime
        comm.Barrier()
        if rank == 0:
            from master.mpi_transport import MPITransport

            tr = MPITransport(cfg, problem, torch.device("cpu"), comm)
            byz = np.zeros(n, bool)
            runtime = []
            for t in range(reps + 1):
                t0 = time.perf_counter()
                res = tr.round(params, t, byz)
                runtime.append(time.perf_counter() - t0)
                assert res.status == ["ok"] * n
            tr.close()
            b, r = float(np.median(bare[1:])), float(np.median(runtime[1:]))
            print(json.dumps({"ranks": size, "n": n, "d": d, "reps": reps, "bare_s": b,
                              "runtime_s": r, "ratio": r / b}), flush=True)
        else:
            from worker.mpi_worker import WorkerRank

            w = WorkerRank(cfg, problem, torch.device("cpu"), comm)
            pre = torch.from_numpy(msg)
            w.group.compute = lambda params, t, byz, active=None: pre  # communication only
            w.serve()
        comm.Barrier()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="4,8", help="comma-separated rank counts (server included)")
    ap.add_argument("--dims", default="100000,1000000,10000000")
    ap.add_argument("--reps", type=int, default=30, help="rounds timed at d = 1e5 (fewer above)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    dims = [int(float(x)) for x in a.dims.split(",")]
    if a.child:
        child(dims, a.reps)
        return
    rows = []
    for r in (int(x) for x in a.ranks.split(",")):
        p = subprocess.run(["mpiexec", "-n", str(r), sys.executable, os.path.abspath(__file__),
                            "--child", "--dims", a.dims, "--reps", str(a.reps)],
                           cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        if p.returncode != 0:
            sys.exit(f"mpiexec -n {r} failed:\n{p.stderr}")
        rows += [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    print(f"cores: {os.cpu_count()} (ranks beyond that time-share)")
    print(f"{'ranks':>5} {'n':>3} {'d':>9} {'MB/round':>9} {'bare ms':>9} {'runtime ms':>10} "
          f"{'ratio':>6}")
    for x in rows:
        mb = 4 * x["d"] * (x["n"] + 1) / 1e6
        print(f"{x['ranks']:>5} {x['n']:>3} {x['d']:>9.0e} {mb:>9.1f} {1e3 * x['bare_s']:>9.2f} "
              f"{1e3 * x['runtime_s']:>10.2f} {x['ratio']:>6.2f}")


if __name__ == "__main__":
    main()
