"""``--plugin MODULE``: import a user module whose rules, pre-aggregators, attacks, datasets,
models or protocols register themselves through the project's registries (``RULES.register``,
``ATTACKS.register``, ...); they are then usable by name from the command line, both entry
points, ``--list`` and run.sh grids. A run records its plugins in ``config.json``, so
``--resume`` and every MPI rank import them too. The module is found like any import (the
current directory and ``PYTHONPATH``): ``--plugin examples.my_rule``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Iterable

from common.errors import ConfigError, one_line

__all__ = ["load_plugins", "loaded_plugins"]

_LOADED: list[str] = []


def load_plugins(modules: Iterable[str]) -> None:
    """Import every module of ``modules`` once (ConfigError with the reason when one cannot be
    imported)."""
    for name in modules:
        if name in _LOADED:
            continue
        if not isinstance(name, str) or not name.replace(".", "").replace("_", "").isalnum():
            raise ConfigError(f"--plugin {name!r} is not a module name (e.g. examples.my_rule)")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and name.startswith(e.name):
                raise ConfigError(f"--plugin {name}: no module named {e.name} (give a module on "
                                  f"the Python path, e.g. examples.my_rule, run from the project "
                                  f"directory or with PYTHONPATH set; sys.path[0] = "
                                  f"{sys.path[0] or '.'})") from None
            raise ConfigError(f"--plugin {name}: importing it failed: {one_line(e)}") from None
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's module: report it in one line
            raise ConfigError(f"--plugin {name}: importing it failed "
                              f"({type(e).__name__}: {one_line(e)})") from None
        _LOADED.append(name)


def loaded_plugins() -> list[str]:
    """The plugin modules imported so far, in order."""
    return list(_LOADED)
