"""The figures of an experiment's report: accuracy curves, the heat map (or bars) of final
accuracy, Krum's selections per worker and DiverseFL's filter statistics."""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

from experiments.runlogs import _hashable, _mean_std, _ordered, cell_table, determined, label

DPI = 80


def _plt():
    import matplotlib  # noqa: PLC0415 - only when a figure is drawn (import ~0.5 s)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the Agg backend

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
    series: dict[tuple, dict[tuple, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for r in runs:
        f = (tuple(_hashable(r.config.get(k)) for k in frows),
             tuple(_hashable(r.config.get(k)) for k in fcols))
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


def plot_grid(path_heat: str, path_bars: str, runs, rows, cols, title: str,
              metric: str = "final_test_accuracy", what: str = "final acc. (%)") -> str | None:
    """Heat map of the seed-mean ``metric`` (rows x cols), or bars when there is one column;
    ``what`` labels the scale."""
    rv, cv, vals = cell_table(runs, rows, cols, metric)
    if not vals:
        return None
    plt = _plt()
    mean = [[(sum(vals[(r, c)]) / len(vals[(r, c)]) if vals.get((r, c)) else float("nan"))
             for c in cv] for r in rv]
    rlabels = [label(rows, r) for r in rv]
    if len(cv) >= 2 and len(rows) >= 2 and len(rv) > MAX_HEAT_ROWS:
        return _heat_panels(path_heat, rows, cols, rv, cv, mean, title, what)
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
        fig.colorbar(im, ax=ax, label=what, shrink=0.9)
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
    ax.set_ylabel(what)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_bars, dpi=DPI)
    plt.close(fig)
    return path_bars


# A heat map with more rows than this is split into panels by its last row key.
MAX_HEAT_ROWS = 24


def _heat_panels(path: str, rows, cols, rv, cv, mean, title: str, what: str) -> str:
    """One heat map panel per value of the last row key (e.g. the pre-aggregator), side by side,
    each the other row keys x the columns."""
    plt = _plt()
    panels = _ordered_values(r[-1] for r in rv)
    inner = _ordered_values(r[:-1] for r in rv)
    at = {r: i for i, r in enumerate(rv)}
    fig, axes = plt.subplots(1, len(panels), sharey=True, squeeze=False,
                             figsize=(1.6 + (0.9 + 0.5 * len(cv)) * len(panels),
                                      1.8 + 0.3 * len(inner)))
    for ax, p in zip(axes[0], panels):
        grid = [[mean[at[r + (p,)]][j] if r + (p,) in at else float("nan")
                 for j in range(len(cv))] for r in inner]
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(cv)), [label(cols, c) for c in cv], rotation=35, ha="right",
                      fontsize=8)
        ax.set_yticks(range(len(inner)), [label(rows[:-1], r) for r in inner], fontsize=8)
        ax.set_title(label(rows[-1:], (p,)), fontsize=9)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 60 else "black")
    fig.colorbar(im, ax=list(axes[0]), label=what, shrink=0.9)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _ordered_values(values) -> list:
    out: list = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def plot_worst(path: str, panels: dict, rows, cols, frows, fcols, over, title: str,
               what: str) -> bool:
    """Heat maps of the worst case (rows x cols), one panel per facet value (facet_rows down,
    facet_cols across), each cell its value and what gave it. ``panels``: facet value -> {rows +
    cols values: :class:`~experiments.worst.Worst`} (:func:`experiments.worst.panels`)."""
    if not panels:
        return False
    plt = _plt()
    nfr = len(frows)
    fr = _ordered(f[:nfr] for f in panels)
    fc = _ordered(f[nfr:] for f in panels)
    rv = _ordered(g[:len(rows)] for cells in panels.values() for g in cells)
    cv = _ordered(g[len(rows):] for cells in panels.values() for g in cells)
    fig, axes = plt.subplots(len(fr), len(fc), squeeze=False,
                             figsize=(len(fc) * (1.3 + 0.8 * len(cv)) + 1.2,
                                      len(fr) * (0.7 + 0.36 * len(rv)) + 0.6))
    im = None
    for i, a in enumerate(fr):
        for j, b in enumerate(fc):
            ax, cells = axes[i][j], panels.get(a + b, {})
            grid = [[cells[r + c].value if r + c in cells else float("nan") for c in cv]
                    for r in rv]
            im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
            for y, r in enumerate(rv):
                for x, c in enumerate(cv):
                    w = cells.get(r + c)
                    if w is not None:  # the value, the first attack that gave it, +ties
                        ties = f" +{len(w.by) - 1}" if len(w.by) > 1 else ""
                        ax.text(x, y, f"{w.value:.0f}\n{label(over, w.by[0])}{ties}", ha="center",
                                va="center", fontsize=6, color="white" if w.value < 60 else "black")
            ax.set_xticks(range(len(cv)), [label(cols, c) for c in cv], fontsize=7)
            ax.set_yticks(range(len(rv)), [label(rows, r) for r in rv] if j == 0 else [],
                          fontsize=7)
            ax.set_title(label(frows + fcols, a + b), fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.93, 0.97))
    fig.colorbar(im, ax=axes, label=what, shrink=0.6, fraction=0.03)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


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
        f = (tuple(_hashable(r.config.get(k)) for k in frows),
             tuple(_hashable(r.config.get(k)) for k in fcols))
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
