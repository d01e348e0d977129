"""The run logs of an experiment, packed beside its published report, and unpacked again.

    python -m experiments.archive restore docs/results/<experiment> [--out outputs]

``docs/results/<experiment>/runs.tar.gz`` holds, for every finished run, its ``config.json``,
``summary.json`` and the evaluation records of ``metrics.jsonl`` (every record for the
experiments whose figures read per-round diagnostics, e.g. Krum's selections); checkpoints stay
out. Restored into ``outputs/<experiment>/``, the runs rebuild the same report
(``python -m experiments.report``) and count as done for ``bash run.sh`` (a grid that was
published half-way continues where it stopped, on another machine or in a later checkout).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from typing import Sequence

__all__ = ["ARCHIVE", "pack", "restore", "main"]

ARCHIVE = "runs.tar.gz"
_FILES = ("config.json", "summary.json")


def _metrics(path: str, every_record: bool) -> bytes:
    """The lines of ``metrics.jsonl`` to keep: the evaluations, or every record."""
    with open(path, "rb") as fh:
        lines = fh.read().splitlines()
    if not every_record:
        lines = [ln for ln in lines if b'"test_accuracy"' in ln]
    return b"".join(ln + b"\n" for ln in lines)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # the same bytes -> the same archive
    tar.addfile(info, io.BytesIO(data))


def pack(exp_dir: str, dest: str, every_record: bool = False) -> int:
    """Write ``dest`` (a .tar.gz) with every finished run of ``exp_dir``; returns their number."""
    runs = sorted(r for r in os.listdir(exp_dir)
                  if os.path.isfile(os.path.join(exp_dir, r, "summary.json")))
    with tarfile.open(dest, "w:gz", compresslevel=9) as tar:
        for r in runs:
            for name in _FILES:
                with open(os.path.join(exp_dir, r, name), "rb") as fh:
                    _add(tar, f"{r}/{name}", fh.read())
            metrics = os.path.join(exp_dir, r, "metrics.jsonl")
            if os.path.isfile(metrics):
                _add(tar, f"{r}/metrics.jsonl", _metrics(metrics, every_record))
    return len(runs)


def restore(published: str, out_root: str = "outputs") -> tuple[str, int, int]:
    """Unpack ``published/runs.tar.gz`` into ``out_root/<experiment>/``: (that directory, runs
    restored, runs already there and kept)."""
    path = os.path.join(published, ARCHIVE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no archive of run logs (publish the experiment first)")
    exp_dir = os.path.join(out_root, os.path.basename(os.path.normpath(published)))
    restored, kept = 0, 0
    with tarfile.open(path, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for run in sorted({m.name.split("/")[0] for m in members}):
            if run in ("", ".", "..") or os.sep in run or run.startswith("."):
                raise ValueError(f"{path}: a member outside its run directory ({run!r})")
            if os.path.exists(os.path.join(exp_dir, run, "summary.json")):
                kept += 1
                continue
            os.makedirs(os.path.join(exp_dir, run), exist_ok=True)
            for m in members:
                parts = m.name.split("/")
                if parts[0] == run and len(parts) == 2 and parts[1] in (*_FILES, "metrics.jsonl"):
                    with open(os.path.join(exp_dir, run, parts[1]), "wb") as fh:
                        fh.write(tar.extractfile(m).read())
            json.load(open(os.path.join(exp_dir, run, "summary.json")))  # whole, or an error
            restored += 1
    return exp_dir, restored, kept


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.archive",
                                description="Restore an experiment's published run logs.")
    p.add_argument("command", choices=("restore",))
    p.add_argument("published", nargs="+", help="docs/results/<experiment> directories")
    p.add_argument("--out", default="outputs", help="output root (default outputs)")
    ns = p.parse_args(argv)
    for d in ns.published:
        try:
            exp_dir, restored, kept = restore(d, ns.out)
        except (FileNotFoundError, tarfile.TarError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{exp_dir}: {restored} runs restored, {kept} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
