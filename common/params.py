"""Declared parameters, and the registries that hold rules, pre-aggregators, attacks and protocols.

Every registered class declares its parameters once, as a tuple of :class:`Param`::

    @RULES.register
    class CClip(Rule):
        name = "cclip"
        params = (Param("tau", float, 10.0, "clipping radius", low=0, low_open=True),
                  Param("iters", int, 3, "clipping iterations L", low=1))

From these declarations come the command-line flags (``--cclip-tau``, ``--cclip-iters``), their
``--help`` text, the ``--list`` entry, the validation of every value (:meth:`Param.check`, the
one checking helper for all registries) and the class's section of ``config.json``
(``"agg_params": {"iters": 3, "tau": 10.0}``). A parameter's ``key`` (default
``<owner>_<name>``, e.g. ``cclip_tau``) is its flat name: the flag is derived from it, earlier
versions' ``config.json`` files held it as a top-level field, and experiment grids and reports
use it as a column. Two classes may share a parameter (Krum and Multi-Krum's ``neighbours``) by
declaring the same :class:`Param` object with an explicit key.

This module imports no torch, so declarations can be read before torch loads.
"""
from __future__ import annotations

import argparse
import importlib
import math
import pkgutil
import types
from dataclasses import dataclass, replace
from typing import Any, Iterator

from common.errors import ConfigError, unknown_name

__all__ = ["Param", "Registry", "parse_bool", "registries", "declared_params", "discover"]

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


def parse_bool(text: str) -> bool:
    """``True/False/1/0/yes/no`` (any case) to bool; argparse's ``type=bool`` treats 'False' as True."""
    t = str(text).strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got '{text}'")


@dataclass(frozen=True)
class Param:
    """One parameter of a registered class.

    name:    its key in the class's section of ``config.json`` and its keyword argument.
    type:    int, float, bool or str.
    default: the value when not given; None means "derived at run time" (the help says how).
    help:    one line for ``--help`` and ``--list``.
    low, high, low_open, high_open: the valid range (inclusive unless open).
    key:     flat name (default ``<owner>_<name>``); the flag is ``--`` + key with dashes.
    flags:   the command-line spellings (default: the one derived from ``key``).
    choices: the valid values, for str parameters.
    """

    name: str
    type: type
    default: Any = None
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    key: str = ""
    flags: tuple[str, ...] = ()
    choices: tuple = ()

    def bound(self, owner: str, flag: bool = True) -> "Param":
        """This parameter with ``key`` and (if ``flag``) ``flags`` filled in for the class
        ``owner``."""
        key = self.key or f"{owner}_{self.name}".replace("-", "_")
        flags = self.flags or (("--" + key.replace("_", "-"),) if flag else ())
        return replace(self, key=key, flags=flags)

    @property
    def flag(self) -> str:
        """The canonical command-line spelling."""
        return self.flags[0] if self.flags else ""

    def range_text(self) -> str:
        """The valid range in words, e.g. ``> 0`` or ``in [0, 0.5)`` (empty when unbounded)."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            return f"in {'(' if self.low_open else '['}{lo:g}, {hi:g}{')' if self.high_open else ']'}"
        if lo is not None:
            return f"{'>' if self.low_open else '>='} {lo:g}"
        if hi is not None:
            return f"{'<' if self.high_open else '<='} {hi:g}"
        return ""

    def bounds(self) -> str:
        """`` (range; default D)`` for help texts; a derived default (None) is left to the help
        text, which says how it is derived."""
        parts = [self.range_text()] if self.range_text() else []
        if self.default is not None:
            parts.append(f"default {self.default!r}")
        return f" ({'; '.join(parts)})" if parts else ""

    def describe(self) -> str:
        """``name: type (range; default D) -- help [flag]``, for ``--list``."""
        flag = f" [{self.flag}]" if self.flag else ""
        return f"{self.name}: {self.type.__name__}{self.bounds()} -- {self.help}{flag}"

    def check(self, value: Any, owner: str, where: str | None = None) -> Any:
        """``value`` converted to this parameter's type and checked against its range; None
        gives the default. Raises ConfigError naming the parameter (``where``, default
        ``<owner> parameter <name>``; the command line passes the flag) and the bound that is
        violated."""
        if value is None:
            return self.default
        where = where or f"{owner} parameter {self.name}"
        kind = self.type
        try:
            if isinstance(value, bool) and kind is not bool:
                raise ValueError
            if kind is bool:
                out = value if isinstance(value, bool) else parse_bool(value)
            elif kind is int:
                x = float(value) if isinstance(value, (float, str)) else value
                if isinstance(x, float):
                    if not math.isfinite(x) or not x.is_integer():
                        raise ValueError
                    x = int(x)
                out = int(x)
            elif kind is float:
                out = float(value)
            else:
                if not isinstance(value, str):
                    raise ValueError
                out = value
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            if kind is bool:
                raise ConfigError(f"{where}: expected True or False, got {value!r}") from None
            what = {int: "an integer", float: "a number"}.get(kind, "text")
            raise ConfigError(f"{where} must be {what}, got {value!r}") from None
        if kind is float and not math.isfinite(out):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        if self.choices and out not in self.choices:
            raise unknown_name(f"value for {where}", out, self.choices)
        lo, hi = self.low, self.high
        if ((lo is not None and (out < lo or (self.low_open and out == lo)))
                or (hi is not None and (out > hi or (self.high_open and out == hi)))):
            raise ConfigError(f"{where} must be {self.range_text()}, got {value!r}")
        return out


class Registry:
    """Registered classes of one kind (``rule``, ``pre-aggregator``, ``attack``, ``protocol``),
    by name. A class has a ``name``, a tuple ``params`` of :class:`Param` and a docstring whose
    first line is its summary in ``--list``.

    A class may define ``check_values(values)`` (a classmethod) for constraints between its
    parameters; :meth:`resolve` runs it.

    ``register`` is a class decorator; plugins (``--plugin MODULE``) call it the same way.
    Names are case-insensitive; an unknown name gives a ConfigError listing the valid ones.
    """

    def __init__(self, kind: str, flags: bool = True) -> None:
        self.kind = kind
        self.flags = flags  # False: the parameters are not command-line flags (pre-aggregators)
        self._entries: dict[str, type] = {}
        _REGISTRIES.append(self)

    def register(self, cls: type) -> type:
        name = str(getattr(cls, "name", "")).strip().lower()
        if not name:
            raise TypeError(f"{_label(cls)} has no name to register as a {self.kind}")
        if name in self._entries and self._entries[name] is not cls:
            raise ValueError(f"{self.kind} '{name}' is already registered "
                             f"({_label(self._entries[name])})")
        cls.params = tuple(p.bound(name, self.flags) for p in getattr(cls, "params", ()))
        for p in cls.params:
            for other, where in _declared_keys():
                if other.key == p.key and other != p:
                    raise ValueError(f"{self.kind} '{name}': parameter key {p.key} is declared "
                                     f"differently by {where}")
        self._entries[name] = cls
        return cls

    def get(self, name: str) -> type:
        key = str(name).strip().lower()
        if key not in self._entries:
            raise unknown_name(self.kind, name, self._entries)
        return self._entries[key]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return str(name).strip().lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names, sorted (a registry reads like a dict of name -> class)."""
        return iter(self.names())

    def __getitem__(self, name: str) -> type:
        return self.get(name)

    def __len__(self) -> int:
        return len(self._entries)

    def values(self) -> list[type]:
        """The registered classes, by sorted name."""
        return [self._entries[k] for k in self.names()]

    def items(self) -> list[tuple[str, type]]:
        return [(k, self._entries[k]) for k in self.names()]

    def resolve(self, name: str, given: dict[str, Any]) -> dict[str, Any]:
        """Every declared parameter of ``name`` checked (None or missing: the default);
        ConfigError for a key the class does not declare."""
        cls = self.get(name)
        valid = {p.name: p for p in cls.params}
        unknown = sorted(set(given) - set(valid))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {self.kind} "
                              f"'{cls.name}'; valid parameters: "
                              f"{', '.join(sorted(valid)) or 'none'}")
        values = {k: p.check(given.get(k), cls.name) for k, p in valid.items()}
        check = getattr(cls, "check_values", None)
        if check is not None:
            check(values)
        return values

    def listing(self) -> list[str]:
        """Lines for ``--list``: every name with its summary and parameters."""
        out = []
        for cls in self.values():
            doc = (cls.__doc__ or "").strip().splitlines()
            out.append(f"  {cls.name:<18} {doc[0] if doc else ''}")
            out.extend(f"  {'':<18}   {p.describe()}" for p in cls.params)
        return out


_REGISTRIES: list[Registry] = []


def _label(entry: object) -> str:
    """module.Name of a registered class (or of the class of a registered instance)."""
    cls = entry if isinstance(entry, type) else type(entry)
    return f"{cls.__module__}.{cls.__name__}"


def registries() -> list[Registry]:
    """Every registry, in creation order."""
    return list(_REGISTRIES)


def _declared_keys() -> Iterator[tuple[Param, str]]:
    for reg in _REGISTRIES:
        for name, cls in reg._entries.items():
            for p in cls.params:
                yield p, f"{reg.kind} '{name}'"


def declared_params() -> dict[str, Param]:
    """Every declared parameter by key (a key shared by several classes appears once)."""
    return {p.key: p for p, _ in _declared_keys()}


def discover(package: str, path: list[str], namespace: dict[str, Any]) -> list[str]:
    """Import every module of ``package`` (whose ``__path__`` is ``path``) and copy each
    module's ``__all__`` into ``namespace`` (the package's globals); returns the names copied.

    The registry packages (rules, pre-aggregators, attacks, protocols) call this from their
    ``__init__``: a module added there registers itself and is found without editing another
    file. A name exported by two modules is an ImportError (a module of the same name as one
    of its functions, e.g. ``bucketing``, is replaced by the function)."""
    names = []
    for info in pkgutil.iter_modules(path):
        module = importlib.import_module(f"{package}.{info.name}")
        for name in getattr(module, "__all__", ()):
            old = namespace.get(name)
            if old is not None and not isinstance(old, types.ModuleType) \
                    and old is not getattr(module, name):
                raise ImportError(f"{module.__name__} exports {name}, which another module of "
                                  f"{package} exports too")
            namespace[name] = getattr(module, name)
            names.append(name)
    return names
