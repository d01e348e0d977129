"""Where the project caches what it builds (native kernels, the command-line catalog).

``BYZROBUST_CACHE`` sets the directory (default ``$XDG_CACHE_HOME/byzrobust`` or
``~/.cache/byzrobust``); where it is not writable, a per-user folder in the temporary directory
is the fallback. Torch-free: the command line reads it before torch loads.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "cache_dirs"]


def cache_dir() -> Path:
    """The configured cache directory (it may not exist yet)."""
    if os.environ.get("BYZROBUST_CACHE"):
        return Path(os.environ["BYZROBUST_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "byzrobust"


def cache_dirs() -> tuple[Path, Path]:
    """The cache directory, then the fallback in the temporary directory."""
    uid = getattr(os, "getuid", lambda: 0)()
    return cache_dir(), Path(tempfile.gettempdir()) / f"byzrobust-{uid}"
