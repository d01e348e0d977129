"""Simulator time per round against the compute floor; vmap vs loop per model; peak memory.

    python bench/rounds.py                    # all three parts
    python bench/rounds.py --part rounds      # (a) CNN n=25 cclip+bucketing:2 under ALIE,
                                              # (b) MLP n=20 and n=100, on Fashion-MNIST
    python bench/rounds.py --part paths       # linear vs vmap vs loop: softmax, mlp, cnn, resnet20
    python bench/rounds.py --part memory      # ResNet-18 round: peak RSS vs the (n, d) stack
    python bench/rounds.py --part default     # wall time of the README's first command
    python bench/rounds.py --part local       # federated local steps: vectorised vs a per-client
                                              # loop vs one step (client-steps per second)

A round is :meth:`master.trainer.Trainer.round` without evaluation: batches, honest gradients,
momentum, attack, pre-aggregation, rule, step. The compute floor is the faster of (i) one
forward+backward over all n x batch samples as a single batch and (ii) a bare per-worker loop of
forward+backward (no flattening, no momentum, nothing else). Times are medians.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import common.run.startup  # noqa: E402,F401  (before torch)

# isort: split
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from common.compute.linear_grads import linear_layers  # noqa: E402
from common.compute.paths import FAST_PATH  # noqa: E402
from common.run.config import Config  # noqa: E402
from common.run.problem import build_problem  # noqa: E402
from main import in_process_trainer  # noqa: E402
from worker.group import make_worker_group  # noqa: E402

CPU = torch.device("cpu")


def median_time(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def floor_times(cfg: Config, problem, reps: int) -> tuple[float, float]:
    """(i) one batch of n*b samples, (ii) a bare loop over n batches of b; forward+backward."""
    model = problem.model
    problem.flat.load_into(model, problem.init_params)
    n, b = cfg.num_workers, cfg.batch_size
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(problem.dataset.y_train), (n, b), generator=g)
    x, y = problem.dataset.x_train[idx], problem.dataset.y_train[idx]
    xs, ys = x.reshape(n * b, *x.shape[2:]), y.reshape(-1)

    def single():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(xs), ys).backward()

    def loop():
        for i in range(n):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i]), y[i]).backward()

    return median_time(single, reps), median_time(loop, reps)


def round_time(cfg: Config, reps: int) -> tuple[float, float, float, str]:
    problem = build_problem(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = in_process_trainer(cfg, tmp, problem)
        t = iter(range(10**6))
        rt = median_time(lambda: trainer.round(next(t)), reps, warmup=2)
    single, loop = floor_times(cfg, problem, reps)
    return rt, single, loop, trainer.transport.group.path


def part_rounds(reps: int) -> None:
    print("== simulator round vs compute floor (Fashion-MNIST, cclip + bucketing:2, ALIE, "
          f"momentum 0.9; {torch.get_num_threads()} thread(s), median of {reps})")
    print(f"{'setting':<34}{'path':>6}{'round ms':>10}{'(i) 1 batch':>13}{'(ii) loop':>11}"
          f"{'floor':>8}{'ratio':>7}")
    settings = [
        ("(a) CNN n=25 f=5 b=32", dict(model="cnn", num_workers=25, num_byzantine=5)),
        ("(b) MLP n=20 f=4 b=32", dict(model="mlp", num_workers=20, num_byzantine=4)),
        ("(b) MLP n=100 f=20 b=32", dict(model="mlp", num_workers=100, num_byzantine=20)),
    ]
    for label, kw in settings:
        cfg = Config(dataset="fashionmnist", batch_size=32, agg="cclip", pre="bucketing:2",
                     attack="alie", partition="noniid", eval_every=10**9, rounds=10**6,
                     progress=False, **kw)
        rt, single, loop, path = round_time(cfg, reps)
        fl = min(single, loop)
        print(f"{label:<34}{path:>6}{1e3 * rt:>10.1f}{1e3 * single:>13.1f}{1e3 * loop:>11.1f}"
              f"{1e3 * fl:>8.1f}{rt / fl:>7.2f}", flush=True)


def part_paths(reps: int) -> None:
    print(f"\n== honest gradients of one group: linear vs vmap vs loop (Fashion-MNIST, b=32; "
          f"{torch.get_num_threads()} thread(s), median of {reps}); FAST_PATH in common/compute/paths.py")
    print(f"{'model':<10}{'n':>5}{'linear ms':>11}{'vmap ms':>10}{'loop ms':>10}{'fastest':>9}"
          f"{'FAST_PATH':>11}")
    for model, n in (("softmax", 20), ("mlp", 20), ("mlp", 100), ("cnn", 25), ("resnet20", 4)):
        res = {}
        for path in ("linear", "vmap", "loop"):
            cfg = Config(dataset="fashionmnist", model=model, num_workers=n, num_byzantine=0,
                         attack="none", agg="mean", pre="none", batch_size=32, grad_path=path)
            problem = build_problem(cfg)
            if path == "linear" and linear_layers(problem.model) is None:
                continue
            group = make_worker_group(cfg, problem, range(n), CPU)
            x, y = group.batches(0)
            params = problem.init_params
            res[path] = median_time(lambda: group.gradients(params, x, y), reps)
        ms = {p: f"{1e3 * res[p]:.1f}" if p in res else "-" for p in ("linear", "vmap", "loop")}
        print(f"{model:<10}{n:>5}{ms['linear']:>11}{ms['vmap']:>10}{ms['loop']:>10}"
              f"{min(res, key=res.get):>9}{FAST_PATH[model]:>11}", flush=True)


_MEMORY_CHILD = r"""
import resource, sys, tempfile, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from common.run.config import Config
from common.run.problem import build_problem
from main import in_process_trainer
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
cfg = Config(dataset="fashionmnist", model="resnet18", num_workers={n}, num_byzantine={f},
             batch_size=2, agg="cclip", pre="bucketing:2", attack="alie", eval_every=10**9,
             rounds=10**6, progress=False)
problem = build_problem(cfg)
torch.zeros(1)
base = rss()
with tempfile.TemporaryDirectory() as tmp:
    trainer = in_process_trainer(cfg, tmp, problem)
    trainer.round(0)
    trainer.round(1)
print(problem.dim, base, rss())
"""


def part_memory(ns: list[int], threads: int) -> None:
    print("\n== peak memory of a round: ResNet-18 on Fashion-MNIST (batch 2, cclip + "
          "bucketing:2, ALIE); two rounds in a fresh process, max RSS above the baseline "
          "after loading data and model")
    print(f"{'n':>5}{'d':>11}{'stack MiB':>11}{'peak-base MiB':>15}{'x stack':>9}{'secs':>7}")
    rows = []
    for n in ns:
        t = time.time()
        code = _MEMORY_CHILD.format(root=ROOT, n=n, f=max(1, n // 5), threads=threads)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{n:>5} failed: {r.stderr.strip().splitlines()[-1]}")
            continue
        d, base, peak = (int(v) for v in r.stdout.split()[-3:])
        stack = n * d * 4
        rows.append((n, peak - base, stack))
        print(f"{n:>5}{d:>11}{stack / 2**20:>11.0f}{(peak - base) / 2**20:>15.0f}"
              f"{(peak - base) / stack:>9.2f}{time.time() - t:>7.0f}", flush=True)
    if len(rows) >= 2 and rows[-1][0] != 100:
        (n0, m0, _), (n1, m1, s1) = rows[-2], rows[-1]
        per_worker = (m1 - m0) / (n1 - n0)
        fixed = m1 - per_worker * n1
        est = fixed + per_worker * 100
        stack100 = s1 / n1 * 100
        print(f"linear extrapolation to n=100: {est / 2**30:.2f} GiB = {est / stack100:.2f} x "
              f"the (100, d) stack ({stack100 / 2**30:.2f} GiB); per worker "
              f"{per_worker / (s1 / n1):.2f} x a d-vector")


def plain_local_loop(problem, x: torch.Tensor, y: torch.Tensor, params: torch.Tensor,
                     lr: float) -> torch.Tensor:
    """The per-client loop a FedAvg implementation runs: for each client, load the global
    model into the module, take K plain SGD steps on its K batches (x: (K, n, b, ...)), and
    return the (n, d) deltas."""
    model, flat = problem.model, problem.flat
    out = torch.empty(x.shape[1], flat.dim)
    for i in range(x.shape[1]):
        flat.load_into(model, params)
        for k in range(x.shape[0]):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[k, i]), y[k, i]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p.sub_(p.grad, alpha=lr)
        torch.sub(params, flat.flatten(model), out=out[i])
    return out


def part_local(reps: int, k_steps: int, settings: list[tuple[str, int, int]]) -> None:
    print(f"\n== federated local steps, K = {k_steps}: client-steps per second (Fashion-MNIST, "
          f"momentum 0; {torch.get_num_threads()} thread(s), median of {reps}, the variants "
          "interleaved): the group's round (common/protocols/federated.py) on the model's path "
          "(auto), on vmap and on its loop; a plain per-client loop of SGD steps; one step (K = 1, "
          "the gradient protocol)")
    print(f"{'model':<8}{'n':>4}{'b':>4}{'path':>7}{'auto':>8}{'vmap':>8}{'own loop':>10}"
          f"{'plain loop':>12}{'one step':>10}{'x plain':>9}{'/ 1 step':>10}")
    for model, n, b in settings:
        kw = dict(dataset="fashionmnist", model=model, num_workers=n, num_byzantine=0,
                  attack="none", agg="mean", pre="none", batch_size=b, momentum=0.0,
                  partition="iid", lr=0.05)
        problem = build_problem(Config(**kw))
        params = problem.init_params
        byz = torch.zeros(n, dtype=torch.bool)
        jobs, steps, path = {}, {}, ""
        for what, extra in (("auto", dict(local_steps=k_steps)),
                            ("vmap", dict(local_steps=k_steps, grad_path="vmap")),
                            ("own loop", dict(local_steps=k_steps, grad_path="loop")),
                            ("one step", {})):
            group = make_worker_group(Config(**kw, **extra), problem, range(n), CPU)
            rounds = iter(range(10**6))
            jobs[what] = (lambda g, r: lambda: g.compute(params, next(r), byz))(group, rounds)
            steps[what] = n * (k_steps if extra else 1)
            path = path or group.path
        drawn = [group.batches(0, k) for k in range(k_steps)]
        x, y = torch.stack([d[0] for d in drawn]), torch.stack([d[1] for d in drawn])
        jobs["plain loop"] = lambda: plain_local_loop(problem, x, y, params, 0.05)
        steps["plain loop"] = n * k_steps
        times: dict[str, list[float]] = {what: [] for what in jobs}
        for rep in range(reps + 1):          # the first pass warms up
            for what, job in jobs.items():
                t0 = time.perf_counter()
                job()
                if rep:
                    times[what].append(time.perf_counter() - t0)
        rate = {what: steps[what] / statistics.median(ts) for what, ts in times.items()}
        a = rate["auto"]
        print(f"{model:<8}{n:>4}{b:>4}{path:>7}{a:>8.0f}{rate['vmap']:>8.0f}"
              f"{rate['own loop']:>10.0f}{rate['plain loop']:>12.0f}{rate['one step']:>10.0f}"
              f"{a / rate['plain loop']:>9.2f}{a / rate['one step']:>10.2f}", flush=True)


# The README's first command: digits, non-iid, 4 of 20 workers sending IPM, RFA after bucketing.
SHOWCASE = ["--noniid", "-f", "4", "--attack", "ipm", "--agg", "rfa", "--bucketing", "2"]


def part_default() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        r = subprocess.run([sys.executable, "main.py", *SHOWCASE, "--no-progress", "-o", tmp],
                           cwd=ROOT, capture_output=True, text=True)
        wall = time.time() - t
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"\n== `python main.py {' '.join(SHOWCASE)}`: {wall:.1f} s wall including start-up"
          f"\n   {last}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "rounds", "paths", "memory", "default", "local"),
                   default="all")
    p.add_argument("--local-steps", type=int, default=5, help="K of --part local")
    p.add_argument("--local-models", default="softmax:20,mlp:20,mlp:20:10,mlp:100,cnn:10",
                   help="MODEL:N[:BATCH] settings of --part local (batch 32 unless given)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--memory-n", default="20,100",
                   help="worker counts for the ResNet-18 memory measurement (n = 100 needs "
                   "~9 GiB and a minute; with two smaller counts the last two are extrapolated "
                   "to 100)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.part in ("all", "rounds"):
        part_rounds(a.reps)
    if a.part in ("all", "paths"):
        part_paths(a.reps)
    if a.part in ("all", "memory"):
        part_memory([int(v) for v in a.memory_n.split(",")], torch.get_num_threads())
    if a.part in ("all", "local"):
        part_local(a.reps, a.local_steps, [(m, int(n), int(b[0]) if b else 32) for m, n, *b in
                                           (s.split(":") for s in a.local_models.split(","))])
    if a.part in ("all", "default"):
        part_default()


if __name__ == "__main__":
    main()
