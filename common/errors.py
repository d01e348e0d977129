"""The one error type users see: a bad flag, an unmet precondition, missing data.

Entry points catch :class:`ConfigError`, print its message on one line and exit with code 2,
so every message must say what is wrong and how to fix it (valid choices, the violated bound,
where to get the data).
"""
import re
import sys


class ConfigError(ValueError):
    """A user-facing configuration or input error (exit code 2, no traceback)."""


def require(cond: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``cond`` (a precondition or bound, stated as a fix)."""
    if not cond:
        raise ConfigError(message)


def warn(message: str) -> None:
    """A setting that is accepted but probably not what the user meant: one ``warning:`` line."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def unknown_name(kind: str, name: str, choices) -> ConfigError:
    """Error for an unknown registry name that lists the valid choices."""
    return ConfigError(f"unknown {kind} '{name}'; choose one of: {', '.join(sorted(choices))}")


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception's message as one line of printable characters, at most ``limit`` long.

    Messages can quote bytes of a damaged or hostile file (terminal escape sequences included),
    so escape sequences are dropped and other unprintable characters become spaces.
    """
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(e))
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = text or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
