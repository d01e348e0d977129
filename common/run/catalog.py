"""``--help``, ``--list`` and flag errors answered before torch loads.

The full command line (:mod:`common.run.flags`) is generated from the declarations of every
rule, pre-aggregator, attack and protocol, and importing them imports torch (about 2 s of CPU).
Each time the full parser is built, its description (every flag's spellings, type, default,
choices and help, the ``--list`` text and the rule and attack names) is saved as a *catalog* in
the cache directory (:mod:`common.cachedir`), keyed by a hash of the package's sources. The
entry points first call :func:`answer_without_torch`: with a catalog for these sources it
rebuilds the parser from it alone (this module and its imports are torch-free) and answers
``--help``, ``--list``, an unknown or malformed flag, or an unknown rule or attack name, then
exits; anything else goes on to the full path. Plugins, ``--config`` and ``--resume`` always
take the full path (they can add or change flags).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from common.cachedir import cache_dirs
from common.errors import ConfigError, unknown_name
from common.params import parse_bool

__all__ = ["Parser", "HelpFormatter", "int_list", "save_catalog", "load_catalog",
           "answer_without_torch", "source_key"]

_PACKAGE = Path(__file__).resolve().parents[1]  # common/
_VERSION = 1


def int_list(text: str) -> tuple[int, ...]:
    """``'500,950'`` -> (500, 950) (an argparse type)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


class Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str):  # noqa: D401
        raise ConfigError(f"{message} (see --help)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every flag's help, and the epilog's list of choices kept one kind per line."""


_TYPES = {"int": int, "float": float, "str": str, "int_list": int_list, "parse_bool": parse_bool}
_ACTIONS = {"_StoreAction": "store", "_StoreConstAction": "store_const", "_AppendAction": "append",
            "_StoreTrueAction": "store_true", "_StoreFalseAction": "store_false",
            "_HelpAction": "help"}


def source_key() -> str:
    """A hash of every source file of the package: a catalog describes exactly these sources."""
    h = hashlib.sha256(str(_VERSION).encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(_PACKAGE)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:20]


def _default(v: Any) -> Any:
    return {"tuple": list(v)} if isinstance(v, tuple) else v


def describe(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The parser as plain data (every group and flag), for :func:`rebuild`."""
    groups = []
    for group in parser._action_groups:
        actions = []
        for a in group._group_actions:
            kind = _ACTIONS.get(type(a).__name__)
            type_name = getattr(a.type, "__name__", None)
            if kind is None or (a.type is not None and type_name not in _TYPES):
                raise TypeError(f"the catalog cannot describe flag {a.option_strings}")
            actions.append({"flags": a.option_strings, "dest": a.dest, "kind": kind,
                            "type": type_name if a.type is not None else None,
                            "default": _default(a.default), "const": a.const,
                            "choices": list(a.choices) if a.choices else None,
                            "help": a.help, "metavar": a.metavar})
        groups.append({"title": group.title, "description": group.description,
                       "actions": actions})
    return {"prog": parser.prog, "description": parser.description, "epilog": parser.epilog,
            "groups": groups}


def rebuild(spec: dict[str, Any]) -> Parser:
    """The parser :func:`describe` described."""
    p = Parser(prog=spec["prog"], description=spec["description"], epilog=spec["epilog"],
               formatter_class=HelpFormatter, add_help=False)
    for g in spec["groups"]:
        # argparse's two built-in groups are reused, the others added in order
        known = {grp.title: grp for grp in p._action_groups}
        group = known.get(g["title"]) or p.add_argument_group(g["title"], g["description"])
        for a in g["actions"]:
            kw: dict[str, Any] = {"dest": a["dest"], "help": a["help"]}
            default = a["default"]
            if isinstance(default, dict):
                default = tuple(default["tuple"])
            elif default == argparse.SUPPRESS:
                default = argparse.SUPPRESS  # the formatter tests it by identity
            kw["default"] = default
            if a["kind"] in ("store", "append"):
                kw.update(type=_TYPES[a["type"]] if a["type"] else None, choices=a["choices"],
                          metavar=a["metavar"])
            elif a["kind"] == "store_const":
                kw["const"] = a["const"]
            if a["kind"] == "help":
                kw = {"help": a["help"]}
            group.add_argument(*a["flags"], action=a["kind"], **kw)
    return p


def _paths(prog: str) -> list[Path]:
    return [d / f"cli-{prog.replace('.', '_')}-{source_key()}.json" for d in cache_dirs()]


def save_catalog(parser: argparse.ArgumentParser, listing: str, names: dict[str, list[str]]) -> None:
    """Save the catalog of ``parser`` (the full one, built from every declaration), the
    ``--list`` text and the rule and attack names; silently nothing where no cache directory is
    writable (the full path still answers)."""
    data = json.dumps({"parser": describe(parser), "list": listing, "names": names})
    for path in _paths(parser.prog):
        if path.exists() and _readable(path):
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".json", dir=path.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write(data)
            os.replace(tmp, path)  # concurrent writers: each rename is whole
            return
        except OSError:
            continue


def _readable(path: Path) -> bool:
    """Whether ``path`` holds a catalog whose parser rebuilds (a damaged one is replaced)."""
    try:
        rebuild(json.loads(path.read_text())["parser"])
        return True
    except (OSError, TypeError, KeyError, ValueError, argparse.ArgumentError):
        return False


def load_catalog(prog: str) -> dict[str, Any] | None:
    """The catalog of ``prog`` for the current sources, or None."""
    for path in _paths(prog):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


_FULL_PATH = ("--plugin", "--config", "--resume")


def answer_without_torch(argv: Sequence[str], prog: str, quiet: bool = False) -> None:
    """Answer ``--help``, ``--list`` and flag errors from the catalog and exit (0, or 2 with one
    ``error:`` line); return when the full path must run (no catalog for these sources, a
    plugin, a config file, a resume, or a command line that parses). ``quiet``: exit with the
    same code without printing (MPI ranks other than 0)."""
    argv = list(argv)
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--") and len(a) > 2]
    if any(full.startswith(f) for f in flags for full in _FULL_PATH):  # abbreviations too
        return
    cat = load_catalog(prog)
    try:
        parser = rebuild(cat["parser"])
        listing, names = str(cat["list"]), {k: list(cat["names"][k]) for k in ("rule", "attack")}
    except (TypeError, KeyError, ValueError, argparse.ArgumentError):
        return  # no catalog, or a damaged one: the full path answers (and writes a new one)
    out = open(os.devnull, "w") if quiet else sys.stdout
    try:
        if any(a in ("-h", "--help") for a in argv):
            parser.print_help(out)
            raise SystemExit(0)
        ns = parser.parse_args(argv)
        if ns.list:
            print(listing, file=out)
            raise SystemExit(0)
        for kind, dest in (("rule", "agg"), ("attack", "attack")):
            value = str(getattr(ns, dest)).strip().lower()
            if value not in names[kind]:
                raise unknown_name(kind, getattr(ns, dest), names[kind])
    except ConfigError as e:
        if not quiet:
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
