"""Owning a run directory: one writer at a time, no run replaced without a word, I/O errors as
one line.

:func:`claim` runs before any data is loaded, on the process that writes the directory (rank 0
under MPI). It creates the directory, takes an exclusive lock on its ``.lock`` file, refuses a
new run where another run's files are (unless ``overwrite``), removes the temporary files a
killed writer left, and writes the owner's pid and host into the lock file, which also proves the
directory is writable (a read-only or full file system fails here, not after the data loaded).

The lock is ``fcntl.flock``: the kernel releases it when its holder exits, however it exits
(SIGKILL included), so a dead run's lock is simply taken over; a live holder makes a second
writer fail with one line naming its pid and host.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import socket

from common.errors import ConfigError

__all__ = ["RUN_FILES", "LOCK", "RunLock", "claim", "io_error"]

#: The files that make a directory a run's (what a new run would replace).
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.jsonl", "summary.json")
LOCK = ".lock"

# Locks this process holds, so that dropping the returned object does not release one (the
# entry points keep theirs until the process exits).
_HELD: dict[str, "RunLock"] = {}


def io_error(what: str, path: str, e: OSError) -> ConfigError:
    """One line for an OSError on ``path`` while doing ``what``, with the fix."""
    why = e.strerror or str(e)
    fix = {errno.ENOSPC: "free some space or choose another directory with -o",
           errno.EDQUOT: "free some space or choose another directory with -o",
           errno.EROFS: "choose a writable directory with -o",
           errno.EACCES: "choose a directory you can write with -o",
           errno.EPERM: "choose a directory you can write with -o"}.get(e.errno, "check the path")
    return ConfigError(f"cannot {what} {path}: {why} (errno {e.errno}); {fix}")


class RunLock:
    """The exclusive lock on a run directory (``release()`` or process exit ends it).

    A run that wrote nothing (it failed before its first file) leaves nothing: ``release``
    removes the lock file, and the directory if this claim created it."""

    def __init__(self, run_dir: str, fd: int, created: bool = False) -> None:
        self.run_dir, self._fd, self.created = run_dir, fd, created

    def release(self) -> None:
        if self._fd is not None:
            _HELD.pop(os.path.realpath(self.run_dir), None)
            with contextlib.suppress(OSError):
                if os.listdir(self.run_dir) == [LOCK]:
                    # unlinked while still held: a process that opens .lock from now on gets
                    # a new file (and the lock), never ours
                    os.unlink(os.path.join(self.run_dir, LOCK))
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
            if self.created:
                with contextlib.suppress(OSError):  # not empty: another run claimed it
                    os.rmdir(self.run_dir)


def _owner(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        text = []
    return f"process {text[0]} on {text[1]}" if len(text) >= 2 else "another process"


def claim(run_dir: str, resume: bool, overwrite: bool = False) -> RunLock:
    """Make ``run_dir`` this process's run directory (see the module docstring).

    Raises ConfigError, with the fix, when ``run_dir`` is a file, cannot be created or written,
    is locked by a live run, or (a new run, ``overwrite`` False) holds another run's files."""
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"the run directory {run_dir} is a file, not a directory; choose "
                          "another with -o")
    created = not os.path.exists(run_dir)
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(os.path.join(run_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise io_error("create the run directory", run_dir, e) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _owner(fd)
        os.close(fd)
        raise ConfigError(f"the run directory {run_dir} is in use by {owner}; wait for it to "
                          "end, or choose another directory with -o") from None
    try:
        present = [name for name in RUN_FILES if os.path.exists(os.path.join(run_dir, name))]
        if present and not resume:
            if not overwrite:
                raise ConfigError(
                    f"{run_dir} holds another run ({', '.join(present)}); continue it with "
                    f"--resume {run_dir}, keep both with -o ANOTHER_DIR, or replace it with "
                    "--overwrite")
            for name in present:
                os.unlink(os.path.join(run_dir, name))
        # Temporary files of a writer killed mid-write (io.atomic_write_bytes): nobody else
        # can be writing them, we hold the lock.
        for tmp in glob.glob(os.path.join(glob.escape(run_dir), ".tmp-*")):
            os.unlink(tmp)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        raise io_error("write the run directory", run_dir, e) from None
    except ConfigError:
        os.close(fd)
        raise
    lock = RunLock(run_dir, fd, created)
    _HELD[os.path.realpath(run_dir)] = lock
    return lock
