"""Run logs of an experiment: loading every run's config, summary and metrics, the keys that
vary across runs, and the tables (mean +- std over seeds) built from them."""
from __future__ import annotations

import csv
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from common.errors import ConfigError
from common.run.config import Config
from common.run.io import read_json, read_metrics
from experiments.grids import EXPERIMENTS, FMNIST, LAST5, PEAK, SIZES

# Config keys that never define a cell: bookkeeping, or per-seed.
IGNORED = {"output", "progress", "seed", "trial_idx", "data_dir", "device", "grad_path",
           "compile_rules", "checkpoint_every", "round_timeout", "state_timeout", "threads",
           "inject_fault", "server_device"}
SHORT = {"num_workers": "n", "num_byzantine": "f", "momentum": "beta", "rfa_iters": "T",
         "redundancy": "r", "deterministic": "det", "byz_schedule": "sched", "defense_f": "f_def"}
BARE = {"agg", "attack", "partition", "pre"}  # values that are self-explanatory


@dataclass
class RunLog:
    """One finished run: its name, flat config, summary and metrics records."""

    name: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0)) + int(self.config.get("trial_idx", 0))


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config.json as one flat dict (:meth:`Config.flat_dict`: fields added to Config
    after the run filled in with their defaults, parameters under their flat keys); a file this
    version cannot read is taken as it is, over the defaults."""
    try:
        return Config.from_dict(config).flat_dict()
    except ConfigError:
        return {**Config().to_dict(), **config}


def load_runs(exp_dir: str) -> tuple[list[RunLog], list[str]]:
    """Finished runs of ``exp_dir`` (sorted by name) and the names of unfinished ones."""
    runs, unfinished = [], []
    for name in sorted(os.listdir(exp_dir)):
        d = os.path.join(exp_dir, name)
        if not os.path.isfile(os.path.join(d, "config.json")):
            continue
        if not os.path.isfile(os.path.join(d, "summary.json")):
            unfinished.append(name)
            continue
        metrics_path = os.path.join(d, "metrics.jsonl")
        metrics = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
        summary = read_json(os.path.join(d, "summary.json"))
        last = last_evaluations(metrics)
        if last:
            summary[LAST5] = sum(last) / len(last)
        if "best_test_accuracy" in summary:  # a single run's peak (worst.peak_of_mean: seeds')
            summary[PEAK] = summary["best_test_accuracy"]
        runs.append(RunLog(name, flat_config(read_json(os.path.join(d, "config.json"))),
                           summary, metrics))
    return runs, unfinished


CPU_LOG = "cpu.csv"  # the runner's CPU and wall seconds per run it ran (the last entry counts)


def log_cpu(exp_dir: str, name: str, cpu: float, wall: float) -> None:
    """Append run ``name``'s CPU and wall seconds (as the runner measured them) to cpu.csv."""
    path = os.path.join(exp_dir, CPU_LOG)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh)
        if new:
            w.writerow(["run", "cpu", "wall"])
        w.writerow([name, f"{cpu:.2f}", f"{wall:.2f}"])


def cpu_seconds(exp_dir: str) -> dict[str, float]:
    """run name -> its CPU seconds from cpu.csv (empty without one)."""
    path = os.path.join(exp_dir, CPU_LOG)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="") as fh:
        return {r["run"]: float(r["cpu"]) for r in csv.DictReader(fh)}


def last_evaluations(metrics: Sequence[dict[str, Any]], k: int = 5) -> list[float]:
    """The test accuracies of the last ``k`` evaluations (the bucketing paper reports their
    mean)."""
    accs = [float(m["test_accuracy"]) for m in metrics if m.get("test_accuracy") is not None]
    return accs[-k:]


def experiment_of(dir_name: str) -> tuple[str, str]:
    """(experiment name, size) of an experiment directory's name: ``attacks`` -> (attacks,
    fmnist), ``attacks-digits`` -> (attacks, digits); an unknown name is returned as it is."""
    for size in SIZES:
        stem = dir_name[:-len(size) - 1]
        if size != FMNIST and dir_name.endswith("-" + size) and stem in EXPERIMENTS:
            return stem, size
    return dir_name, FMNIST


def grid_order(exp_name: str, runs: list[RunLog]) -> list[RunLog]:
    """Runs in the order the experiment's grid lists them (rows of the table follow the paper's
    order); unknown runs keep their name order, after the known ones."""
    if exp_name not in EXPERIMENTS:
        return runs
    order: dict[str, int] = {}
    for size in EXPERIMENTS[exp_name].sizes:
        for r in EXPERIMENTS[exp_name].runs(size, seeds=10):
            order.setdefault(r.name, len(order))
    return sorted(runs, key=lambda r: (order.get(r.name, len(order)), r.name))


def varying_keys(runs: Sequence[RunLog]) -> list[str]:
    """Config keys whose values differ across runs (in config order), seeds excluded."""
    if not runs:
        return []
    keys = [k for k in runs[0].config if k not in IGNORED]
    vary = [k for k in keys if len({_hashable(r.config.get(k)) for r in runs}) > 1]
    if "agg" not in vary:
        return vary
    # A rule parameter set per rule (e.g. CClip's tau) adds no cell of its own: leave it out.
    def set_by_agg(k: str) -> bool:
        seen: dict[Any, Any] = {}
        return all(seen.setdefault(r.config.get("agg"), _hashable(r.config.get(k)))
                   == _hashable(r.config.get(k)) for r in runs)
    return [k for k in vary if k == "agg" or not set_by_agg(k)]


def determined(runs: Sequence[RunLog], key: str, by: Sequence[str]) -> bool:
    """True if ``key``'s value is a function of the values of the ``by`` keys across ``runs``
    (e.g. each model's lr given the model): such a key splits no cell of a table over ``by``."""
    seen: dict[tuple, Any] = {}
    for r in runs:
        k = tuple(_hashable(r.config.get(b)) for b in by)
        if seen.setdefault(k, _hashable(r.config.get(key))) != _hashable(r.config.get(key)):
            return False
    return True


def layout_keys(exp_name: str) -> tuple[str, ...]:
    """Every key the experiment's Layout names (empty for an unknown experiment)."""
    if exp_name not in EXPERIMENTS:
        return ()
    lay = EXPERIMENTS[exp_name].layout
    return tuple(dict.fromkeys(lay.rows + lay.cols + lay.facet_rows + lay.facet_cols))


def table_keys(runs: Sequence[RunLog], keys: Sequence[str], named: Sequence[str]) -> list[str]:
    """``keys`` without those the ``named`` (layout) keys determine: per-model learning rates,
    per-attack schedules and the like stay in results.csv but add no rows, columns or line
    labels of their own."""
    by = [k for k in named if k in keys]
    if not by:
        return list(keys)
    return [k for k in keys if k in by or not determined(runs, k, by)]


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def fmt_value(key: str, v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and key not in ("momentum",):
        v = int(v)
    if key in BARE:
        return str(v)
    return f"{SHORT.get(key, key)}={v}"


def label(keys: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(fmt_value(k, v) for k, v in zip(keys, values)) or "all"


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _fmt_ms(xs: Sequence[float]) -> str:
    if not xs:
        return "-"
    m, s = _mean_std(xs)
    return f"{m:.1f}" if math.isnan(s) else f"{m:.1f} ± {s:.1f}"


# ----------------------------------------------------------------------------------------------
# Per-run numbers

def flag_stats(run: RunLog) -> dict[str, float]:
    """Mean DiverseFL flag precision/recall (percent) over the rounds where they are defined."""
    out = {}
    for key in ("precision", "recall"):
        vals = [m["rule"][key] for m in run.metrics
                if isinstance(m.get("rule"), dict) and m["rule"].get(key) is not None]
        if vals:
            out[f"flag_{key}_pct"] = 100.0 * sum(vals) / len(vals)
    return out


def row_of(run: RunLog, keys: Sequence[str]) -> dict[str, Any]:
    s = run.summary
    row: dict[str, Any] = {"run": run.name}
    row.update({k: run.config.get(k) for k in keys})
    row["seed"] = run.seed
    row["final_test_accuracy"] = s.get("final_test_accuracy")
    row["best_test_accuracy"] = s.get("best_test_accuracy")
    if LAST5 in s:
        row[LAST5] = round(s[LAST5], 4)
    if "final_backdoor_accuracy" in s:
        row["final_backdoor_accuracy"] = s["final_backdoor_accuracy"]
    row.update(flag_stats(run))
    row["rounds"] = s.get("rounds")
    row["wall_seconds"] = round(float(s.get("wall_seconds", 0.0)), 2)
    return row


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


# ----------------------------------------------------------------------------------------------
# Layout

def resolve_layout(exp_name: str, keys: list[str]):
    """(rows, cols, facet_rows, facet_cols, selection) restricted to the keys that vary."""
    lay = EXPERIMENTS[exp_name].layout if exp_name in EXPERIMENTS else None
    if lay is None:
        rows, cols = tuple(keys[:-1]), tuple(keys[-1:])
        frows, fcols, selection = (), tuple(keys[-1:]), True
    else:
        rows = tuple(k for k in lay.rows if k in keys)
        cols = tuple(k for k in lay.cols if k in keys)
        frows = tuple(k for k in lay.facet_rows if k in keys)
        fcols = tuple(k for k in lay.facet_cols if k in keys)
        selection = lay.selection
        extra = tuple(k for k in keys if k not in rows + cols)
        rows += extra  # a key the layout forgot still gets its own rows
    return rows, cols, frows, fcols, selection


def _ordered(values: Iterable[tuple]) -> list[tuple]:
    out: list[tuple] = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def cell_table(runs: Sequence[RunLog], rows: Sequence[str], cols: Sequence[str],
               metric: str = "final_test_accuracy"):
    """(row values, col values, {(row, col): [metric per seed]}) in first-seen order."""
    vals: dict[tuple, list[float]] = defaultdict(list)
    rv, cv = [], []
    for r in runs:
        rk = tuple(_hashable(r.config.get(k)) for k in rows)
        ck = tuple(_hashable(r.config.get(k)) for k in cols)
        rv.append(rk)
        cv.append(ck)
        x = r.summary.get(metric)
        if x is not None:
            vals[(rk, ck)].append(float(x))
    return _ordered(rv), _ordered(cv), vals


def key_cells(keys: Sequence[str], values: Sequence[Any]) -> list[str]:
    """A table row's leading cells: each key's value as the header names it (``0.9``, ``cm``)."""
    return [fmt_value(k, v).split("=", 1)[-1] for k, v in zip(keys, values)]


def markdown_table(runs, rows, cols, metric="final_test_accuracy", worst: bool = False,
                   paper: Callable[[dict[str, Any]], float | None] | None = None) -> str:
    """The (rows x cols) table of ``metric``, mean ± std over seeds. ``worst``: a last column
    with each row's least seed mean over the columns and the column that gave it. ``paper``:
    maps a cell's config to the paper's number, shown beside ours as ``[paper X]``."""
    rv, cv, vals = cell_table(runs, rows, cols, metric)
    configs = {}
    for r in runs:
        key = (tuple(_hashable(r.config.get(k)) for k in rows),
               tuple(_hashable(r.config.get(k)) for k in cols))
        configs.setdefault(key, r.config)

    def cell(r, c) -> str:
        text = _fmt_ms(vals.get((r, c), []))
        theirs = paper(configs[(r, c)]) if paper and (r, c) in configs else None
        return text if theirs is None else f"{text} [{theirs:.1f}]"

    head = [SHORT.get(k, k) for k in rows] + [label(cols, c) if cols else metric for c in cv]
    head += ["worst (by)"] if worst else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rv:
        cells = key_cells(rows, r) + [cell(r, c) for c in cv]
        if worst:
            means = [(_mean_std(vals[(r, c)])[0], c) for c in cv if vals.get((r, c))]
            m, c = min(means, key=lambda t: t[0]) if means else (None, None)
            cells.append("-" if m is None else f"**{m:.1f}** ({label(cols, c)})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Figures
