"""Tables and figures of an experiment, rebuilt from its run directories alone.

    python -m common.report outputs/<experiment> [more experiment dirs]

Reads every ``<experiment>/<run>/config.json``, ``summary.json`` and ``metrics.jsonl`` and writes
into ``<experiment>/``:

* ``results.csv`` — one row per finished run: the config keys that vary across the runs, the seed,
  final and best test accuracy (percent), backdoor accuracy and DiverseFL flag precision/recall
  when logged, rounds and wall seconds;
* ``report.md`` — mean +- std over seeds of the final accuracy, laid out as the experiment's
  :class:`~experiments.grids.Layout` says (any directory works: unknown experiments get a
  generic layout);
* ``curves.png`` (accuracy vs round, mean over seeds), ``heatmap.png`` or ``bars.png`` (final
  accuracy over the grid), ``selection.png`` (Krum's selections per worker, mapped through the
  pre-aggregators) and ``c1c2.png`` (DiverseFL's filter statistics), each when the logs allow it.
"""
from __future__ import annotations

import csv
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from common.io import read_json, read_metrics

# Config keys that never define a cell: bookkeeping, or per-seed.
IGNORED = {"output", "progress", "seed", "trial_idx", "data_dir", "device", "grad_path",
           "compile_rules", "checkpoint_every", "round_timeout", "state_timeout", "threads",
           "inject_fault", "server_device"}
SHORT = {"num_workers": "n", "num_byzantine": "f", "momentum": "beta", "rfa_iters": "T",
         "redundancy": "r", "deterministic": "det", "byz_schedule": "sched", "defense_f": "f_def"}
BARE = {"agg", "attack", "partition", "pre"}  # values that are self-explanatory
DPI = 80


@dataclass
class RunLog:
    name: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0)) + int(self.config.get("trial_idx", 0))


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config with fields added to Config after the run filled in with their defaults."""
    try:
        from common.config import Config
        defaults = Config().to_dict()
    except ImportError:
        return config
    return {**defaults, **{k: v for k, v in config.items()}}


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
        runs.append(RunLog(name, _with_defaults(read_json(os.path.join(d, "config.json"))),
                           read_json(os.path.join(d, "summary.json")), metrics))
    return runs, unfinished


def grid_order(exp_name: str, runs: list[RunLog]) -> list[RunLog]:
    """Runs in the order the experiment's grid lists them (rows of the table follow the paper's
    order); unknown runs keep their name order, after the known ones."""
    try:
        from experiments.grids import EXPERIMENTS
    except ImportError:
        return runs
    if exp_name not in EXPERIMENTS:
        return runs
    order: dict[str, int] = {}
    for full in (False, True):
        for r in EXPERIMENTS[exp_name].runs(full=full, seeds=10):
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
    try:
        from experiments.grids import EXPERIMENTS
    except ImportError:
        return ()
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
    try:
        from experiments.grids import EXPERIMENTS
        lay = EXPERIMENTS[exp_name].layout if exp_name in EXPERIMENTS else None
    except ImportError:  # the report must work from the logs even without the grid package
        lay = None
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


def markdown_table(runs, rows, cols, metric="final_test_accuracy") -> str:
    rv, cv, vals = cell_table(runs, rows, cols, metric)
    head = [SHORT.get(k, k) for k in rows] + [label(cols, c) if cols else metric for c in cv]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rv:
        cells = [fmt_value(k, v) if k not in BARE else str(v) for k, v in zip(rows, r)]
        cells = [c.split("=", 1)[-1] for c in cells]
        cells += [_fmt_ms(vals.get((r, c), [])) for c in cv]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Figures

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _facets(runs, frows, fcols):
    fr = _ordered(tuple(_hashable(r.config.get(k)) for k in frows) for r in runs)
    fc = _ordered(tuple(_hashable(r.config.get(k)) for k in fcols) for r in runs)
    return fr, fc


def _grid_axes(plt, nr: int, nc: int, w: float = 3.4, h: float = 2.6):
    fig, axes = plt.subplots(nr, nc, figsize=(w * nc + 0.6, h * nr + 0.6), squeeze=False,
                             sharex=True, sharey=True)
    return fig, axes


def plot_curves(path: str, runs, keys, frows, fcols, key="test_accuracy", ylabel="test accuracy (%)") -> bool:
    """Accuracy vs round, one subplot per facet cell, one line per remaining cell (seed mean)."""
    hue = [k for k in keys if k not in frows + fcols]
    # A line key fixed by the subplot (e.g. the schedule an attack implies) would only lengthen
    # the labels and split one rule's colour across subplots.
    if frows + fcols:
        hue = [k for k in hue if not determined(runs, k, list(frows + fcols))]
    series: dict[tuple, dict[tuple, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in runs:
        f = (tuple(_hashable(r.config.get(k)) for k in frows), tuple(_hashable(r.config.get(k)) for k in fcols))
        h = tuple(_hashable(r.config.get(k)) for k in hue)
        for m in r.metrics:
            if m.get(key) is not None:
                series[f][h][int(m["round"]) + 1].append(float(m[key]))
    if not series:
        return False
    plt = _plt()
    fr, fc = _facets(runs, frows, fcols)
    fig, axes = _grid_axes(plt, len(fr), len(fc))
    hues = _ordered(tuple(_hashable(r.config.get(k)) for k in hue) for r in runs)
    colors = plt.get_cmap("tab10" if len(hues) <= 10 else "tab20")
    for i, a in enumerate(fr):
        for j, b in enumerate(fc):
            ax = axes[i][j]
            for hi, h in enumerate(hues):
                pts = series.get((a, b), {}).get(h)
                if not pts:
                    continue
                xs = sorted(pts)
                # Alternate dashes so identical curves (e.g. mean and never-clipping CClip) both show.
                ax.plot(xs, [sum(pts[x]) / len(pts[x]) for x in xs], color=colors(hi % colors.N),
                        label=label(hue, h), lw=1.3, ls="-" if hi % 2 == 0 else "--")
            ax.set_title(label(frows + fcols, a + b), fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(fr) - 1:
                ax.set_xlabel("round")
            if j == 0:
                ax.set_ylabel(ylabel)
    handles, labels = [], []  # every line label once, across all subplots
    for row in axes:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    ncol, nrow = 1, 0
    if labels and hue:  # no legend when each subplot holds a single cell
        # As many legend columns as fit the figure width (about 0.075 in per character at 8 pt).
        width = fig.get_size_inches()[0]
        ncol = max(1, min(len(labels), int(width / (0.075 * max(map(len, labels)) + 0.6))))
        nrow = math.ceil(len(labels) / ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, min(0.5, (0.1 + 0.18 * nrow) / height), 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def plot_grid(path_heat: str, path_bars: str, runs, rows, cols, title: str) -> str | None:
    """Heat map of the seed-mean final accuracy (rows x cols), or bars when there is one column."""
    rv, cv, vals = cell_table(runs, rows, cols)
    if not vals:
        return None
    plt = _plt()
    mean = [[(sum(vals[(r, c)]) / len(vals[(r, c)]) if vals.get((r, c)) else float("nan"))
             for c in cv] for r in rv]
    rlabels = [label(rows, r) for r in rv]
    if len(cv) >= 2:
        clabels = [label(cols, c) for c in cv]
        # Long, narrow grids read better lying down: table rows become the x axis.
        flip = len(rv) > 3 * len(cv)
        grid = [list(col) for col in zip(*mean)] if flip else mean
        xl, yl = (rlabels, clabels) if flip else (clabels, rlabels)
        fig, ax = plt.subplots(figsize=(2.2 + 0.55 * len(xl), 1.6 + 0.32 * len(yl)))
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(xl)), xl, rotation=35 if flip else 30, ha="right", fontsize=8)
        ax.set_yticks(range(len(yl)), yl, fontsize=8)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 60 else "black")
        fig.colorbar(im, ax=ax, label="final acc. (%)", shrink=0.9)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path_heat, dpi=DPI)
        plt.close(fig)
        return path_heat
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * len(rv), 3.2))
    ms = [_mean_std(vals[(r, cv[0])]) if vals.get((r, cv[0])) else (float("nan"), float("nan"))
          for r in rv]
    ax.bar(range(len(rv)), [m for m, _ in ms],
           yerr=[0 if math.isnan(s) else s for _, s in ms], color="tab:blue", capsize=3)
    ax.set_xticks(range(len(rv)), rlabels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_bars, dpi=DPI)
    plt.close(fig)
    return path_bars


def selected_workers(record: dict, n: int) -> list[int]:
    """Workers behind the rows a selecting rule chose in one round.

    ``rule.selected`` indexes the pre-aggregated vectors; each logged stage maps its outputs back
    to its inputs: bucketing (output i = permutation[i s:(i+1) s]), resampling (output i =
    groups[i]), NNM (output i = neighbours[i]). A worker inside a selected average counts once per
    time it appears.
    """
    rule = record.get("rule") or {}
    sel = rule.get("selected")
    if sel is None:
        return []
    current = [[i] for i in sel]
    for stage in reversed(rule.get("pre") or []):
        name = stage.get("name")
        if name == "bucketing":
            perm, s = stage["permutation"], int(stage["s"])
            groups = [perm[i * s:(i + 1) * s] for i in range(math.ceil(len(perm) / s))]
        elif name == "resampling":
            groups = stage["groups"]
        elif name == "nnm":
            groups = stage["neighbours"]
        else:
            return []  # an unknown stage: no honest mapping to workers exists
        current = [[w for i in row for w in groups[i]] for row in current]
    return [w for row in current for w in row if 0 <= w < n]


def plot_selection(path: str, runs, frows, fcols) -> bool:
    """Histogram of Krum's selections per worker (summed over rounds and seeds); Byzantine red."""
    counts: dict[tuple, list[int]] = {}
    byz: dict[tuple, set] = defaultdict(set)
    runs = [r for r in runs if any((m.get("rule") or {}).get("selected") is not None for m in r.metrics)]
    for r in runs:
        n = int(r.config["num_workers"])
        f = (tuple(_hashable(r.config.get(k)) for k in frows), tuple(_hashable(r.config.get(k)) for k in fcols))
        c = counts.setdefault(f, [0] * n)
        for m in r.metrics:
            for w in selected_workers(m, n):
                c[w] += 1
            byz[f].update(m.get("byzantine") or [])
    if not any(sum(c) for c in counts.values()):
        return False
    plt = _plt()
    fr, fc = _facets(runs, frows, fcols)
    fig, axes = _grid_axes(plt, len(fr), len(fc), w=3.6, h=2.4)
    for i, a in enumerate(fr):
        for j, b in enumerate(fc):
            ax = axes[i][j]
            c = counts.get((a, b))
            if c is None:
                continue
            total = sum(c) or 1
            colors = ["tab:red" if w in byz[(a, b)] else "tab:blue" for w in range(len(c))]
            ax.bar(range(len(c)), [100 * x / total for x in c], color=colors)
            ax.set_title(label(frows + fcols, a + b), fontsize=9)
            if i == len(fr) - 1:
                ax.set_xlabel("worker (red: Byzantine)")
            if j == 0:
                ax.set_ylabel("% of selections")
            ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _symlog_x(ax, xs: Sequence[float]) -> None:
    """Symmetric log x axis with a few readable ticks (C1 spans many decades of both signs)."""
    mags = sorted(abs(x) for x in xs if x != 0)
    if not mags:
        return
    lo = math.floor(math.log10(mags[len(mags) // 20]))  # 5% of the points fall in the linear part
    hi = max(lo + 1, math.ceil(math.log10(mags[-1])))
    ax.set_xscale("symlog", linthresh=10.0 ** lo)
    step = max(1, (hi - lo) // 2)
    ks = list(range(lo, hi + 1, step))
    ticks = [-(10.0 ** k) for k in reversed(ks)] + [0.0] + [10.0 ** k for k in ks]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7, rotation=45)
    ax.minorticks_off()


def plot_c1c2(path: str, runs, facet: Sequence[str]) -> bool:
    """DiverseFL's C1 (g~ . z) vs C2 (||z|| / ||g~||) per client and round, honest vs Byzantine."""
    pts: dict[tuple, dict[bool, tuple[list, list]]] = {}
    for r in runs:
        f = tuple(_hashable(r.config.get(k)) for k in facet)
        for m in r.metrics:
            rule = m.get("rule") or {}
            c1, c2 = rule.get("c1"), rule.get("c2")
            if not c1 or not c2:
                continue
            b = set(m.get("byzantine") or [])
            d = pts.setdefault(f, {True: ([], []), False: ([], [])})
            for j, (x, y) in enumerate(zip(c1, c2)):
                if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)) or y <= 0:
                    continue
                d[j in b][0].append(x)
                d[j in b][1].append(y)
    if not pts:
        return False
    plt = _plt()
    keys = list(pts)
    # Two facet keys (e.g. model x attack): one row per value of the first, else one row.
    rows_v = _ordered(k[:1] for k in keys) if len(facet) == 2 else [()]
    cols_v = _ordered(k[len(rows_v[0]):] for k in keys)
    fig, axes = plt.subplots(len(rows_v), len(cols_v),
                             figsize=(3.6 * len(cols_v) + 0.6, 3.2 * len(rows_v)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for k in keys:
        ax = axes[rows_v.index(k[:len(rows_v[0])])][cols_v.index(k[len(rows_v[0]):])]
        ax.set_visible(True)
        for is_byz, color, name in ((False, "tab:blue", "honest"), (True, "tab:red", "Byzantine")):
            xs, ys = pts[k][is_byz]
            ax.scatter(xs, ys, s=4, alpha=0.3, color=color, label=name, linewidths=0)
        _symlog_x(ax, pts[k][True][0] + pts[k][False][0])
        ax.set_yscale("log")
        ax.axvline(0, color="k", lw=0.8)
        for y in (0.5, 2.0):  # the default eps1, eps2 acceptance band
            ax.axhline(y, color="k", lw=0.8, ls="--")
        ax.set_xlabel("C1 = g~ . z")
        ax.set_ylabel("C2 = ||z|| / ||g~||")
        ax.set_title(label(facet, k) + " (dashed: eps1, eps2)", fontsize=9)
        ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------
# The report

def write_report(exp_dir: str, quiet: bool = False) -> dict[str, Any]:
    """Write results.csv, report.md and figures for ``exp_dir``; returns what was written."""
    exp_dir = os.path.normpath(exp_dir)
    if not os.path.isdir(exp_dir):
        raise FileNotFoundError(f"{exp_dir}: no such experiment directory")
    name = os.path.basename(exp_dir)
    runs, unfinished = load_runs(exp_dir)
    runs = grid_order(name, runs)
    keys = varying_keys(runs)
    shown = table_keys(runs, keys, layout_keys(name))
    rows, cols, frows, fcols, selection = resolve_layout(name, shown)
    csv_rows = [row_of(r, keys) for r in runs]
    write_csv(os.path.join(exp_dir, "results.csv"), csv_rows)

    figures = []
    if runs:
        if plot_curves(os.path.join(exp_dir, "curves.png"), runs, shown, frows, fcols):
            figures.append("curves.png")
        g = plot_grid(os.path.join(exp_dir, "heatmap.png"), os.path.join(exp_dir, "bars.png"),
                      runs, rows, cols, f"{name}: final test accuracy, seed mean")
        if g:
            figures.append(os.path.basename(g))
        if selection and plot_selection(os.path.join(exp_dir, "selection.png"), runs, frows, fcols):
            figures.append("selection.png")
        if plot_c1c2(os.path.join(exp_dir, "c1c2.png"), [r for r in runs if r.config.get("agg") == "diversefl"],
                     [k for k in shown if k in ("model", "attack")]):
            figures.append("c1c2.png")

    md = _markdown(name, runs, unfinished, keys, rows, cols, figures,
                   [k for k in keys if k not in shown])
    with open(os.path.join(exp_dir, "report.md"), "w") as fh:
        fh.write(md)
    if not quiet:
        print(f"{exp_dir}: {len(runs)} runs -> results.csv, report.md" +
              "".join(f", {f}" for f in figures) +
              (f" ({len(unfinished)} unfinished runs left out)" if unfinished else ""))
    return {"runs": len(runs), "unfinished": unfinished, "figures": figures}


def _markdown(name, runs, unfinished, keys, rows, cols, figures, implied=()) -> str:
    try:
        from experiments.grids import EXPERIMENTS
        exp = EXPERIMENTS.get(name)
    except ImportError:
        exp = None
    out = [f"# {name}" + (f": {exp.title}" if exp else ""), ""]
    if exp:
        out += [f"Claim checked: {exp.claim}", ""]
    if not runs:
        return "\n".join(out + ["No finished runs.", ""])
    c = runs[0].config
    seeds = sorted({r.seed for r in runs})
    fixed = [k for k in ("dataset", "model", "num_workers", "num_byzantine", "defense_f", "partition",
                         "agg", "pre", "attack", "momentum", "momentum_style", "lr", "batch_size",
                         "rounds") if k not in keys and k in c]
    out += ["Setting: " + ", ".join(f"{k}={c[k]}" for k in fixed) +
            f"; {len(runs)} runs, seeds {seeds}.", ""]
    if implied:
        out += ["Set per cell by the table's keys (values in results.csv): " +
                ", ".join(implied) + ".", ""]
    out += ["Final test accuracy (%), mean ± std over seeds:", "", markdown_table(runs, rows, cols), ""]
    if any("final_backdoor_accuracy" in r.summary for r in runs):
        bd = [r for r in runs if "final_backdoor_accuracy" in r.summary]
        out += ["Backdoor accuracy (%, share of test 4s classified as 9; lower is better):", "",
                markdown_table(bd, rows, cols, "final_backdoor_accuracy"), ""]
    if any(flag_stats(r) for r in runs):
        dfl = [r for r in runs if flag_stats(r)]
        for key in ("flag_precision_pct", "flag_recall_pct"):
            for r in dfl:
                r.summary[key] = flag_stats(r).get(key)
            out += [f"Filter {key.split('_')[1]} (%) against the true Byzantine set (mean over rounds):",
                    "", markdown_table(dfl, rows, cols, key), ""]
    if unfinished:
        out += [f"Unfinished runs left out: {', '.join(unfinished)}", ""]
    out += ["Figures: " + ", ".join(f"![{f}]({f})" for f in figures), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m common.report outputs/<experiment> [...]")
        return 0 if args else 2
    status = 0
    for d in args:
        try:
            write_report(d)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
