"""Worst-case tables of an experiment whose :class:`~experiments.grid.Layout` names ``worst_over``
(e.g. the attack): each cell's least seed mean over those keys and which value gave it, the
headline per defense, the adaptive-vs-fixed comparison, the cells left out, and worstcase.csv."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from experiments.grid import LAST5, PEAK, Flags, Layout
from experiments.runlogs import SHORT, RunLog, _hashable, _ordered, key_cells, label, write_csv

__all__ = ["Worst", "seed_mean", "worst_cells", "worst_layout", "sections", "write_worst_csv",
           "MARGIN"]

#: Points by which an attack must end below another to count as beating it (versus).
MARGIN = 5.0
# Accuracies within this many points count as one worst case (a diverged model scores 10.00 %
# under several attacks alike: each of them is named).
TIE = 0.005

Paper = Callable[[dict[str, Any]], "float | None"]


@dataclass(frozen=True)
class Worst:
    """One cell's worst case: the least seed mean, the values of the worst_over keys that gave
    it (every one within :data:`TIE`), each value's seed mean, and a run's config of the cell."""

    value: float
    by: tuple[tuple, ...]
    values: dict[tuple, float]
    config: dict[str, Any]


def _key(run: RunLog, keys: Sequence[str]) -> tuple:
    return tuple(_hashable(run.config.get(k)) for k in keys)


def peak_of_mean(runs: Sequence[RunLog]) -> float | None:
    """The highest evaluation of the test-accuracy curve averaged over ``runs`` (on the rounds
    every run evaluated): ByzFL's heat-map number."""
    curves = [{int(m["round"]): float(m["test_accuracy"]) for m in r.metrics
               if m.get("test_accuracy") is not None} for r in runs]
    rounds = set.intersection(*(set(c) for c in curves)) if curves else set()
    return max(sum(c[t] for c in curves) / len(curves) for t in rounds) if rounds else None


def seed_mean(runs: Sequence[RunLog], metric: str) -> float | None:
    """The mean over ``runs`` (a cell's seeds) of ``metric``; for :data:`PEAK` the peak of the
    mean curve."""
    if metric == PEAK:
        return peak_of_mean(runs)
    xs = [float(r.summary[metric]) for r in runs if r.summary.get(metric) is not None]
    return sum(xs) / len(xs) if xs else None


def worst_cells(runs: Sequence[RunLog], keys: Sequence[str], over: Sequence[str],
                metric: str) -> dict[tuple, Worst]:
    """``keys`` values -> :class:`Worst` over the values of ``over``, in first-seen order."""
    groups: dict[tuple, dict[tuple, list[RunLog]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        groups[_key(r, keys)][_key(r, over)].append(r)
    out = {}
    for g, by_over in groups.items():
        vals = {o: v for o, rs in by_over.items() if (v := seed_mean(rs, metric)) is not None}
        if vals:
            least = min(vals.values())
            by = tuple(o for o, v in vals.items() if v <= least + TIE)
            out[g] = Worst(least, by, vals, next(iter(by_over.values()))[0].config)
    return out


def worst_layout(lay: Layout, shown: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """(rows, cols, facet_rows, facet_cols, over) restricted to the keys that vary; a varying
    key the layout does not name gets rows of its own."""
    pick = lambda ks: tuple(k for k in ks if k in shown)  # noqa: E731
    rows, cols, frows, fcols, over = (pick(lay.rows), pick(lay.cols), pick(lay.facet_rows),
                                      pick(lay.facet_cols), pick(lay.worst_over))
    rows += tuple(k for k in shown if k not in rows + cols + frows + fcols + over)
    return rows, cols, frows, fcols, over


def _by(over: Sequence[str], w: Worst, most: int = 3) -> str:
    names = [label(over, o) for o in w.by]
    return " / ".join(names[:most]) + (f" +{len(names) - most}" if len(names) > most else "")


def _table(cells: dict[tuple, Worst], rows, cols, over, paper: Paper | None,
           note: Callable[[tuple, Worst], str] | None = None) -> list[str]:
    """Markdown: rows x cols, each cell ``least (by)`` (or ``least (note)``) and ``[paper]``
    where there is one."""
    rv = _ordered(g[:len(rows)] for g in cells)
    cv = _ordered(g[len(rows):] for g in cells)
    head = [SHORT.get(k, k) for k in rows] + [label(cols, c) if cols else "worst" for c in cv]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rv:
        row = key_cells(rows, r)
        for c in cv:
            w = cells.get(r + c)
            theirs = paper(w.config) if w and paper else None
            why = note(r + c, w) if note and w else _by(over, w) if w else ""
            row.append("-" if w is None else f"{w.value:.1f} ({why})" +
                       ("" if theirs is None else f" [{theirs:.1f}]"))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def panels(runs, rows, cols, frows, fcols, over, metric) -> dict[tuple, dict[tuple, Worst]]:
    """facet value (facet_rows + facet_cols) -> {rows + cols values: Worst}."""
    out: dict[tuple, dict[tuple, Worst]] = defaultdict(dict)
    facet = len(frows + fcols)
    for g, w in worst_cells(runs, frows + fcols + rows + cols, over, metric).items():
        out[g[:facet]][g[facet:]] = w
    return dict(out)


def _headline(runs, rows, cols, frows, fcols, over, metric) -> list[str]:
    """Each defense's worst case over ``over`` and ``cols`` per facet row (e.g. heterogeneity),
    the defense with the best worst case per facet row, and what most often breaks each rule."""
    keys, h_over = rows + fcols, over + cols
    cells = worst_cells(runs, keys + frows, h_over, metric)
    out = ["## Headline: each defense's worst case", "",
           f"The least {_what(metric)} over {_names(h_over, ' and ')}, per "
           f"{_names(frows) or 'experiment'}:", ""]
    out += _table(cells, keys, frows, h_over, None) + [""]
    if fcols:  # each rule with its best pre-aggregator (the largest worst case)
        best_of: dict[tuple, tuple[tuple, Worst]] = {}
        for g, w in cells.items():
            k = g[:len(rows)] + g[len(keys):]
            if k not in best_of or w.value > best_of[k][1].value:
                best_of[k] = (g[len(rows):len(keys)], w)
        out += [f"Each {', '.join(rows)} with its best {', '.join(fcols)} (the largest worst "
                "case):", ""]
        out += _table({k: w for k, (_, w) in best_of.items()}, rows, frows, h_over, None,
                      lambda k, w: f"{label(fcols, best_of[k][0])}; {_by(h_over, w)}") + [""]
    for fv in _ordered(g[len(keys):] for g in cells) if keys else ():
        out += _best_lines(cells, keys, frows, fv, over, h_over)
    # Which attack gives each rule's worst case, counted over every cell the rule ran under
    # attack (a no-attack reference cell, e.g. f = 0, has nothing to count).
    attacked = [r for r in runs if r.config.get("attack", "none") != "none"]
    every = worst_cells(attacked, [k for k in rows + cols + frows + fcols], over, metric)
    counts: dict[Any, Counter] = defaultdict(Counter)
    for g, w in every.items():
        counts[g[0]].update(label(over, o) for o in w.by)
    cells_of = Counter(g[0] for g in every)
    for rule, c in counts.items() if rows else ():
        top = ", ".join(f"{a} ({n} of {cells_of[rule]})" for a, n in c.most_common(3))
        out.append(f"- worst attack most often, {label(rows[:1], (rule,))}: {top}")
    return out + [""]


def _best_lines(cells: dict[tuple, Worst], keys, frows, fv: tuple, over, h_over) -> list[str]:
    """The defense with the best worst case in facet ``fv``. A worst case is over the attacks
    run against the defense, so where some were not run against it (e.g. opt-* against a
    stateful rule) a second line names the best of the defenses that faced more of them."""
    mine = {g: w for g, w in cells.items() if g[len(keys):] == fv}
    faced = {g: {o[:len(over)] for o in w.values} for g, w in mine.items()}
    every = set().union(*faced.values())
    lines, pool = [], list(mine)
    while pool:
        best = max(pool, key=lambda g: mine[g].value)
        w, missing = mine[best], every - faced[best]
        skipped = ", ".join(sorted(label(over, o) for o in missing))
        head = (f"- best worst case, {label(frows, fv)}" if not lines
                else "  - of the defenses that faced more of the attacks")
        lines.append(f"{head}: {label(keys, best[:len(keys)])} {w.value:.1f} % "
                     f"(worst: {_by(h_over, w)}" + (f"; not run: {skipped})" if missing else ")"))
        pool = [g for g in pool if faced[g] > faced[best]]
    return lines


def _versus(runs, keys, over, pairs, metric) -> list[str]:
    """Per (attack, fixed attacks): in how many cells the attack ends MARGIN points below the
    best of the fixed ones (and above), and the largest gaps."""
    if len(over) != 1 or not pairs:
        return []
    cells = worst_cells(runs, keys, over, metric)
    out = ["## Adaptive vs fixed attacks", "",
           f"Cells where an attack ends at least {MARGIN:g} points below the best of the fixed "
           f"attacks it is compared with ({_what(metric)}; largest gaps first):", ""]
    for a, fixed in pairs:
        gaps = []
        for g, w in cells.items():
            base = [w.values[(b,)] for b in fixed if (b,) in w.values]
            if (a,) in w.values and base:
                gaps.append((min(base) - w.values[(a,)], g, w.values[(a,)], min(base)))
        if not gaps:
            continue
        gaps.sort(key=lambda t: -t[0])
        below = [t for t in gaps if t[0] >= MARGIN]
        above = sum(t[0] <= -MARGIN for t in gaps)
        top = "; ".join(f"{label(keys, g)}: {x:.1f} vs {y:.1f}" for _, g, x, y in below[:5])
        out.append(f"- {a} vs {' / '.join(fixed)}: below in {len(below)} of {len(gaps)} cells, "
                   f"above in {above}" + (f". Largest: {top}" if top else ""))
    return out + [""]


def _skipped(skipped: Sequence[tuple[Flags, str]], runs: Sequence[RunLog]) -> list[str]:
    """The cells left out, grouped by reason, naming the values (of those the runs and the
    skipped cells take) that the group is limited to."""
    if not skipped:
        return []
    everything = {k: {_hashable(r.config.get(k)) for r in runs} for k in skipped[0][0]}
    for cell, _ in skipped:
        for k, v in cell.items():
            everything.setdefault(k, set()).add(_hashable(v))
    by_reason: dict[str, list[Flags]] = defaultdict(list)
    for cell, why in skipped:
        by_reason[why].append(cell)
    out = [f"Not run ({len(skipped)} cells of the grid, by reason):", ""]
    for why, cells in by_reason.items():
        limits = []
        for k in cells[0]:
            vals = _ordered((_hashable(c[k]),) for c in cells)
            if len(vals) < len(everything[k]) or len(everything[k]) == 1:
                limits.append(f"{SHORT.get(k, k)} {', '.join(str(v[0]) for v in vals)}")
        out.append(f"- {why}: {len(cells)} cells ({'; '.join(limits)})")
    return out + [""]


def _names(keys: Sequence[str], sep: str = ", ") -> str:
    return sep.join(SHORT.get(k, k) for k in keys)


def _what(metric: str) -> str:
    return {PEAK: "peak of the seed-mean accuracy curve", LAST5: "mean of the last 5 "
            "evaluations (seed mean)"}.get(metric, "final test accuracy (seed mean)")


def _cpu(runs: Sequence[RunLog], cpu: dict[str, float]) -> list[str]:
    """The runs' CPU time as the runner logged it (the Setting line sums their wall time)."""
    logged = [cpu[r.name] for r in runs if r.name in cpu]
    if not logged:
        return []
    return [f"CPU time of {len(logged)} of these {len(runs)} runs (the runner's cpu.csv): "
            f"{sum(logged):.0f} s = {sum(logged) / 3600:.2f} h.", ""]


def sections(runs: Sequence[RunLog], lay: Layout, shown: Sequence[str], metric: str,
             skipped: Sequence[tuple[Flags, str]], paper: Paper | None,
             source: str = "", cpu: dict[str, float] | None = None) -> list[str]:
    """The markdown sections of a worst-case report (module docstring); ``paper`` gives a
    reference's number per cell, from ``source``; ``cpu``: run name -> CPU seconds."""
    rows, cols, frows, fcols, over = worst_layout(lay, shown)
    out = _cpu(runs, cpu or {})
    out += _skipped(skipped, runs) + _headline(runs, rows, cols, frows, fcols, over, metric)
    out += ["## Worst case per " + (_names(frows + fcols) or "experiment"), "",
            f"Each cell: the least {_what(metric)} over {_names(over)} and which gave it" +
            (f"; [the reference's number] ({source})" if paper else "") +
            ". Heat map: heatmap.png.", ""]
    for fv, cells in panels(runs, rows, cols, frows, fcols, over, metric).items():
        if frows + fcols:
            out += [f"### {label(frows + fcols, fv)}", ""]
        out += _table(cells, rows, cols, over, paper) + [""]
    return out + _versus(runs, frows + fcols + rows + cols, over, lay.versus, metric)


def write_worst_csv(path: str, runs: Sequence[RunLog], lay: Layout, shown: Sequence[str],
                    metric: str) -> None:
    """worstcase.csv: one row per cell, its worst case, which gave it and every value's mean."""
    rows, cols, frows, fcols, over = worst_layout(lay, shown)
    keys = frows + fcols + rows + cols
    out = []
    for g, w in worst_cells(runs, keys, over, metric).items():
        row: dict[str, Any] = dict(zip(keys, g))
        row.update(worst=round(w.value, 4), worst_by="; ".join(label(over, o) for o in w.by))
        row.update({label(over, o): round(v, 4) for o, v in w.values.items()
                    if not math.isnan(v)})
        out.append(row)
    write_csv(path, out)
