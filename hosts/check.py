"""Pre-flight check of an MPICH (Hydra) hostfile: run it before ``mpiexec -f FILE``.

    python -m hosts.check hosts/hostfile            # syntax, slots, every host resolves
    python -m hosts.check hosts/hostfile -n 9       # ... and whether 9 ranks fit the slots
    python -m hosts.check hosts/hostfile --no-resolve   # syntax only (e.g. outside the cluster)

``mpiexec -f FILE`` reads the hostfile before any Python starts, and Hydra (MPICH 5.0.2, the
``mpich`` wheel) reports problems poorly or not at all: a missing file or a trailing comment is
a 7-8 line trace and exit 255; ``node:0`` or ``node:abc`` crashes mpiexec (SIGFPE, exit 136);
``node:-1`` makes it spin forever; ``node:2x`` silently means 2 slots; a directory or an empty
file silently runs every rank on the launch node; more ranks than slots silently wrap around the
hosts. This check reads the file as Hydra does, stricter where Hydra guesses:

* one entry per line, tokens separated by whitespace: ``HOST[:SLOTS] [user=NAME] [binding=SPEC]``;
* blank lines, and lines whose first non-blank character is ``#``, are ignored; a ``#`` after an
  entry is an error (Hydra rejects it: "token # not supported at this time");
* SLOTS is a decimal integer >= 1 (default 1): how many consecutive ranks the host takes;
* HOST is a host name or an IPv4 address (Hydra cuts the entry at the first ``:``, so IPv6
  literals cannot be written); every host must resolve on this (the launch) node.

Every problem is one line ``error: FILE[:LINE]: ...`` on stderr, and the exit code is 2. A file
without problems prints one summary line (hosts, slots, where rank 0 runs) and exits 0; ``-n``
larger than the slots adds a ``warning:`` line (Hydra oversubscribes rather than refusing).
Standard library only: it runs on a launch node without torch.
"""
from __future__ import annotations

import argparse
import re
import socket
import sys
from dataclasses import dataclass, field

SLOTS_MAX = 2**31 - 1          # Hydra reads slots with atoi into an int
OPTIONS = ("user", "binding")  # the per-host keys Hydra accepts after HOST[:SLOTS]
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


class HostfileError(Exception):
    """The hostfile cannot be read at all (one line)."""


@dataclass
class Entry:
    """One host of a hostfile: its line number, host name and slots."""

    line: int
    host: str
    slots: int
    options: dict = field(default_factory=dict)


def read_text(path: str) -> str:
    """The file's text; HostfileError (one line) if it is missing, unreadable or not text."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise HostfileError(f"{path}: no such file") from None
    except IsADirectoryError:
        # Hydra opens a directory without complaint, reads nothing and runs every rank locally.
        raise HostfileError(f"{path}: is a directory, not a hostfile") from None
    except PermissionError:
        raise HostfileError(f"{path}: permission denied (cannot read it)") from None
    except OSError as e:
        raise HostfileError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HostfileError(f"{path}: not a text file (byte 0x{data[e.start]:02x} at offset "
                            f"{e.start})") from None
    if "\0" in text:
        raise HostfileError(f"{path}: not a text file (NUL byte at offset {text.index(chr(0))})")
    return text


def parse(text: str, path: str) -> tuple[list[Entry], list[tuple[int, str]]]:
    """(entries, problems): one ``(line, "FILE:LINE: what is wrong")`` per bad line."""
    entries: list[Entry] = []
    problems: list[tuple[int, str]] = []
    for no, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        where = f"{path}:{no}"
        first, rest = tokens[0], tokens[1:]
        host, colon, slots_text = first.partition(":")
        why = _bad_host(host, first) or (_bad_slots(slots_text) if colon else None)
        if why:
            problems.append((no, f"{where}: {why}"))
            continue
        options: dict[str, str] = {}
        for tok in rest:
            key, eq, value = tok.partition("=")
            if tok.startswith("#"):
                why = (f"comment after the entry ('{tok}'): hydra rejects it; "
                       "put comments on lines of their own")
            elif not eq or key not in OPTIONS:
                why = (f"unexpected token '{tok}' after '{first}': an entry is "
                       "HOST[:SLOTS] [user=NAME] [binding=SPEC], one per line")
            elif not value:
                why = f"'{tok}' has no value"
            elif key in options:
                why = f"{key}= given twice"
            else:
                options[key] = value
                continue
            problems.append((no, f"{where}: {why}"))
            break
        else:
            entries.append(Entry(no, host, int(slots_text) if colon else 1, options))
    if not entries and not problems:
        problems.append((0, f"{path}: no hosts in it (mpiexec would run every rank on this "
                            "node)"))
    return entries, problems


def _bad_host(host: str, token: str) -> str | None:
    if not host:
        return f"'{token}' has no host name before ':'"
    if "@" in host:
        user, _, name = host.rpartition("@")
        return f"'{host}': user@host is not hostfile syntax, write '{name} user={user}'"
    if not _HOST.fullmatch(host):
        return (f"host '{host}' is not a host name or IPv4 address (letters, digits, '.', '-', "
                "'_'; not starting with '-')")
    return None


def _bad_slots(text: str) -> str | None:
    if not text:
        return "':' without a slot count (write HOST or HOST:SLOTS)"
    if ":" in text:
        return ("more than one ':' (an IPv6 address cannot be written in a hydra hostfile: "
                "use a host name or an IPv4 address)")
    if not text.isdigit() or not text.isascii():
        return f"slot count '{text}' is not a whole number >= 1"
    if not 1 <= int(text) <= SLOTS_MAX:
        return f"slot count {int(text)} is out of range: 1 <= SLOTS <= {SLOTS_MAX}"
    return None


def resolve(entries: list[Entry], path: str, resolver=socket.getaddrinfo
            ) -> list[tuple[int, str]]:
    """One ``(line, problem)`` per host name that does not resolve (at its first line)."""
    problems, seen = [], set()
    for e in entries:
        if e.host in seen:
            continue
        seen.add(e.host)
        try:
            resolver(e.host, None)
        except (OSError, UnicodeError) as err:  # socket.gaierror is an OSError
            why = getattr(err, "strerror", None) or str(err) or type(err).__name__
            problems.append((e.line, f"{path}:{e.line}: cannot resolve host '{e.host}' ({why})"))
    return problems


def summary(entries: list[Entry], path: str, ranks: int | None) -> str:
    slots = sum(e.slots for e in entries)
    hosts = len({e.host for e in entries})
    listed = ", ".join(f"{e.host}:{e.slots}" for e in entries[:6])
    if len(entries) > 6:
        listed += f", ... ({len(entries) - 6} more)"
    text = (f"{path}: {hosts} host{'s' * (hosts != 1)}, {slots} slot{'s' * (slots != 1)} "
            f"({listed}); rank 0 (the server) runs on {entries[0].host}")
    if ranks is not None and ranks <= slots:
        text += f"; -n {ranks} fits"
    return text


def check(path: str, ranks: int | None = None, do_resolve: bool = True
          ) -> tuple[str | None, list[str], list[str]]:
    """(summary line or None, warnings, errors) for the hostfile at ``path``."""
    try:
        text = read_text(path)
    except HostfileError as e:
        return None, [], [str(e)]
    entries, problems = parse(text, path)
    if do_resolve:
        problems += resolve(entries, path)
    if problems:
        return None, [], [p for _, p in sorted(problems, key=lambda lp: lp[0])]
    warnings = []
    slots = sum(e.slots for e in entries)
    if ranks is not None and ranks > slots:
        warnings.append(f"{path}: -n {ranks} is more than its {slots} slot{'s' * (slots != 1)}: "
                        "mpiexec does not refuse, it wraps around to the first host again and "
                        "oversubscribes the hosts")
    return summary(entries, path, ranks), warnings, []


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + error)
        self.exit(2, f"error: {message} (usage: python -m hosts.check HOSTFILE [-n RANKS] "
                     "[--no-resolve])\n")


def _ranks(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-n must be a whole number >= 1, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"-n must be >= 1, got {v}")
    return v


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m hosts.check",
                description="Check an MPICH (Hydra) hostfile before mpiexec -f HOSTFILE: "
                            "syntax, slot counts, that every host resolves, and with -n that "
                            "the ranks fit. Problems: one line each, exit code 2.")
    p.add_argument("hostfile")
    p.add_argument("-n", "--ranks", type=_ranks, default=None,
                   help="the -n you will give mpiexec: warn if it exceeds the slots")
    p.add_argument("--no-resolve", action="store_true",
                   help="check the syntax only, not that the host names resolve here")
    ns = p.parse_args(argv)
    line, warnings, errors = check(ns.hostfile, ns.ranks, not ns.no_resolve)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if errors:
        return 2
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
