"""Copy an experiment's report and figures into the repository (``docs/results/<experiment>/``).

    python -m experiments.publish outputs/<experiment> [...]   # -> docs/results/<experiment>/

PNGs are re-encoded with a 128-colour palette (line plots and heat maps lose nothing visible) so
the committed figures stay a few tens of KB each; report.md, results.csv and worstcase.csv are
copied as is; the run logs go into ``runs.tar.gz`` (:mod:`experiments.archive`: what the report
is rebuilt from, and what lets ``bash run.sh`` continue a published grid elsewhere).
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Sequence

from experiments.archive import ARCHIVE, pack
from experiments.grids import EXPERIMENTS
from experiments.runlogs import experiment_of

FILES = ("report.md", "results.csv", "worstcase.csv")


def publish(exp_dir: str, dest_root: str = os.path.join("docs", "results")) -> list[str]:
    """Copy report.md, results.csv (worstcase.csv where there is one) and every PNG of
    ``exp_dir``; returns the written paths."""
    from PIL import Image  # noqa: PLC0415 - matplotlib's dependency, needed here only

    exp_dir = os.path.normpath(exp_dir)
    if not os.path.isfile(os.path.join(exp_dir, "report.md")):
        raise FileNotFoundError(f"{exp_dir}/report.md missing: run python -m experiments.report {exp_dir}")
    dest = os.path.join(dest_root, os.path.basename(exp_dir))
    os.makedirs(dest, exist_ok=True)
    written = []
    for name in sorted(os.listdir(exp_dir)):
        src, dst = os.path.join(exp_dir, name), os.path.join(dest, name)
        if name in FILES:
            shutil.copyfile(src, dst)
        elif name.endswith(".png"):
            with Image.open(src) as im:
                im.convert("RGB").quantize(colors=128, method=Image.Quantize.FASTOCTREE).save(
                    dst, optimize=True)
        else:
            continue
        written.append(dst)
    name, _ = experiment_of(os.path.basename(exp_dir))
    every = name in EXPERIMENTS and EXPERIMENTS[name].layout.selection  # per-round selections
    archive = os.path.join(dest, ARCHIVE)
    pack(exp_dir, archive, every_record=every)
    return written + [archive]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m experiments.publish outputs/<experiment> [...]", file=sys.stderr)
        return 2
    for d in args:
        try:
            for p in publish(d):
                print(f"{p} ({os.path.getsize(p) // 1024} KB)")
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
