"""Tables and figures of an experiment, rebuilt from its run directories alone.

    python -m experiments.report outputs/<experiment> [more experiment dirs]

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

import os
import sys
from typing import Any, Sequence

from experiments import worst
from experiments.figures import plot_c1c2, plot_curves, plot_grid, plot_selection, plot_worst
from experiments.grids import EXPERIMENTS, FINAL, FMNIST, LAST5, PEAK
from experiments.paper import PAPER, WORST, source_of
from experiments.runlogs import (
    cpu_seconds,
    experiment_of,
    flag_stats,
    grid_order,
    layout_keys,
    load_runs,
    markdown_table,
    resolve_layout,
    row_of,
    table_keys,
    varying_keys,
    write_csv,
)

__all__ = ["write_report", "main", "VERDICTS"]

#: Hand-written verdicts per experiment (claim by claim, with the runs that show the cause).
VERDICTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verdicts")


def write_report(exp_dir: str, quiet: bool = False) -> dict[str, Any]:
    """Write results.csv, report.md and figures for ``exp_dir``; returns what was written."""
    exp_dir = os.path.normpath(exp_dir)
    if not os.path.isdir(exp_dir):
        raise FileNotFoundError(f"{exp_dir}: no such experiment directory")
    name, size = experiment_of(os.path.basename(exp_dir))
    runs, unfinished = load_runs(exp_dir)
    runs = grid_order(name, runs)
    keys = varying_keys(runs)
    shown = table_keys(runs, keys, layout_keys(name))
    rows, cols, frows, fcols, selection = resolve_layout(name, shown)
    csv_rows = [row_of(r, keys) for r in runs]
    write_csv(os.path.join(exp_dir, "results.csv"), csv_rows)
    exp = EXPERIMENTS.get(name)
    worst_lay = exp.layout if exp and exp.layout.worst_over else None

    figures = []
    if runs and worst_lay:
        # thousands of runs: the worst-case heat map and table per cell, no curves
        metric, what = _metric(name)
        w_rows, w_cols, w_frows, w_fcols, over = worst.worst_layout(worst_lay, shown)
        if plot_worst(os.path.join(exp_dir, "heatmap.png"),
                      worst.panels(runs, w_rows, w_cols, w_frows, w_fcols, over, metric),
                      w_rows, w_cols, w_frows, w_fcols, over,
                      f"{name}: worst case over {', '.join(over)}", what):
            figures.append("heatmap.png")
        worst.write_worst_csv(os.path.join(exp_dir, "worstcase.csv"), runs, worst_lay, shown,
                              metric)
    elif runs:
        if plot_curves(os.path.join(exp_dir, "curves.png"), runs, shown, frows, fcols):
            figures.append("curves.png")
        metric, what = _metric(name)
        g = plot_grid(os.path.join(exp_dir, "heatmap.png"), os.path.join(exp_dir, "bars.png"),
                      runs, rows, cols, f"{name}: {what}, seed mean", metric, what)
        if g:
            figures.append(os.path.basename(g))
        if selection and plot_selection(os.path.join(exp_dir, "selection.png"), runs, frows, fcols):
            figures.append("selection.png")
        # DiverseFL's filter statistics, from the runs that logged them
        if plot_c1c2(os.path.join(exp_dir, "c1c2.png"), runs,
                     [k for k in shown if k in ("model", "attack")]):
            figures.append("c1c2.png")

    md = _markdown(name, runs, unfinished, keys, rows, cols, figures,
                   [k for k in keys if k not in shown], shown, size, cpu_seconds(exp_dir))
    with open(os.path.join(exp_dir, "report.md"), "w") as fh:
        fh.write(md)
    if not quiet:
        print(f"{exp_dir}: {len(runs)} runs -> results.csv, report.md" +
              "".join(f", {f}" for f in figures) +
              (f" ({len(unfinished)} unfinished runs left out)" if unfinished else ""))
    return {"runs": len(runs), "unfinished": unfinished, "figures": figures}


def _metric(name: str) -> tuple[str, str]:
    """(summary key, label) of the number an experiment's table shows."""
    exp = EXPERIMENTS.get(name)
    if exp and exp.metric == LAST5:
        return LAST5, "mean of the last 5 evaluations (%)"
    if exp and exp.metric == PEAK:
        return PEAK, "highest evaluation of the test accuracy (%)"
    return FINAL, "final test accuracy (%)"


def _verdict(name: str) -> list[str]:
    """The hand-written verdict of ``experiments/verdicts/<name>.md``, if there is one."""
    path = os.path.join(VERDICTS, f"{name}.md")
    if not os.path.isfile(path):
        return []
    with open(path) as fh:
        return [fh.read().strip(), ""]


def _markdown(name, runs, unfinished, keys, rows, cols, figures, implied=(), shown=(),
              size=FMNIST, cpu=None) -> str:
    exp = EXPERIMENTS.get(name)
    out = [f"# {name}" + (f": {exp.title}" if exp else ""), ""]
    if exp:
        out += [f"Claim checked: {exp.claim}", ""]
    out += _verdict(name)
    if not runs:
        return "\n".join(out + ["No finished runs.", ""])
    c = runs[0].config
    seeds = sorted({r.seed for r in runs})
    fixed = [k for k in ("dataset", "model", "num_workers", "num_byzantine", "defense_f", "partition",
                         "agg", "pre", "attack", "momentum", "momentum_style", "lr", "batch_size",
                         "rounds") if k not in keys and k in c]
    hours = sum(float(r.summary.get("wall_seconds", 0.0)) for r in runs) / 3600
    out += ["Setting: " + ", ".join(f"{k}={c[k]}" for k in fixed) +
            f"; {len(runs)} runs, seeds {seeds}; {hours:.2f} h of run time in all (the runs' "
            "wall_seconds summed: one process each, single-threaded for softmax/MLP).", ""]
    if implied:
        out += ["Set per cell by the table's keys (values in results.csv): " +
                ", ".join(implied) + ".", ""]
    metric, what = _metric(name)
    if exp and exp.layout.worst_over:
        # the worst-case sections, then every run's number: rows down to the last key, the
        # worst_over keys across
        skipped = exp.skipped(size) if exp.skipped and size in exp.sizes else []
        out += worst.sections(runs, exp.layout, shown, metric, skipped, WORST.get(name),
                              source_of(name), cpu)
        w_rows, w_cols, w_frows, w_fcols, cols = worst.worst_layout(exp.layout, shown)
        rows = w_frows + w_fcols + w_rows + w_cols
        out += [f"## Every {', '.join(cols) or 'run'}", "",
                "Per cell (worst case, which, every value): worstcase.csv.", ""]
    worst_col = bool(exp and (exp.layout.worst or exp.layout.worst_over))
    paper = None if exp and exp.layout.worst_over else PAPER.get(name)
    out += [what[0].upper() + what[1:-4] + " (%), mean ± std over seeds" +
            (f"; [the paper's number] ({source_of(name)})" if paper else "") +
            (" (last column: the least seed mean over the columns)" if worst_col else "") + ":",
            "", markdown_table(runs, rows, cols, metric, worst=worst_col, paper=paper), ""]
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
        print("usage: python -m experiments.report outputs/<experiment> [...]")
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
