"""Run-directory files, written atomically (temp file, fsync, rename): a crash never leaves a
half-written config, summary or checkpoint behind."""
from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import tempfile
from typing import Any

import torch

from common.errors import ConfigError

#: The checkpoint's file name in a run directory.
CHECKPOINT = "checkpoint.pt"


def atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def finite_json(obj: Any) -> Any:
    """``obj`` with every NaN/Inf float replaced by None: ``json.dumps`` would write the
    non-standard tokens NaN/Infinity, which strict JSON readers (jq, JavaScript) reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def write_json(path: str, obj: Any) -> None:
    text = json.dumps(finite_json(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str) -> Any:
    with open(path) as fh:
        return json.load(fh)


#: The largest config file read (a run's config.json is about 2 KB).
CONFIG_LIMIT = 1 << 20


def read_config_file(path: str, what: str) -> Any:
    """A JSON config file (``--config``, a run's config.json) read as untrusted input: at most
    :data:`CONFIG_LIMIT` bytes (``/dev/zero`` is not read until memory runs out), UTF-8, nesting
    bounded by the parser's recursion limit; a key given twice is a ``warning:`` line (the last
    value wins, as in JSON parsers). Raises ConfigError naming the problem (``what``: the
    file's role, e.g. ``--config x.json``)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(CONFIG_LIMIT + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror or e}") from None
    if len(data) > CONFIG_LIMIT:
        raise ConfigError(f"{what} is larger than {CONFIG_LIMIT >> 20} MiB; a config is a JSON "
                          "object of flag values (a run's config.json is about 2 KB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} is not UTF-8 text (byte {e.start}); a config is a JSON "
                          "object of flag values") from None
    dupes: list[str] = []

    def pairs(items):
        seen = {}
        for k, v in items:
            if k in seen:
                dupes.append(k)
            seen[k] = v
        return seen

    try:
        obj = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON: {e}") from None
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply to be a config (a config is a flat JSON "
                          "object of flag values)") from None
    if dupes:
        print(f"warning: {what} gives {', '.join(sorted(set(dupes)))} more than once; the "
              "last value is used", file=sys.stderr)
    return obj


def save_torch(path: str, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class UnsafeCheckpointError(ValueError):
    """A checkpoint that names code (a class or function; the message is its name) rather than
    only tensors, numbers and containers: ``torch.load(weights_only=True)`` refused it without
    running anything."""


def load_torch(path: str, mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint, tensors only. ``mmap``: tensors are views of the file's
    pages, read only when touched (to take a few rows of a large (n, d) tensor)."""
    # Checkpoints are written by rank 0 of the user's own run; weights_only keeps a tampered
    # file from executing code anyway.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        # torch raises pickle.UnpicklingError with a long advice text (ANSI-coloured, suggesting
        # weights_only=False): replace it by what happened. Matched by name: no module rank 0
        # runs imports pickle (tests/test_faults.py).
        if type(e).__name__ != "UnpicklingError" or "Weights only load failed" not in str(e):
            raise
        m = re.search(r"GLOBAL ([\w.]{1,100}) was not an allowed global", str(e))
        raise UnsafeCheckpointError(m.group(1) if m else "objects other than tensors") from None


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, appended and flushed as the run goes.

    On resume the file is truncated to the rounds the checkpoint covers, so a run that died
    between a checkpoint and the crash does not log those rounds twice.
    """

    def __init__(self, path: str, keep_until_round: int | None = None) -> None:
        self.path = path
        if keep_until_round is None:
            open(path, "w").close()
        elif os.path.exists(path):
            kept = []
            with open(path) as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        break  # a torn last line from a crash
                    if rec.get("round", -1) < keep_until_round:
                        kept.append(line if line.endswith("\n") else line + "\n")
            atomic_write_bytes(path, "".join(kept).encode())
        self._fh = open(path, "a")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(finite_json(record), separators=(",", ":"), allow_nan=False)
                       + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def read_metrics(path: str) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
