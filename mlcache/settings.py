"""Settings read from the environment: one parser, one set of accepted spellings, clear errors.

Every `MLCACHE_*` variable is read here, by the library, the CLI and the `mlcache://` loader
alike, so a value means the same everywhere. A value outside the accepted spellings is an
`InvalidSetting` naming the variable and what it accepts, never a silent default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import InvalidSetting

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def raw(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value stripped of surrounding spaces; None when unset or empty."""
    value = _env(environ).get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def parse_bool(text: str, what: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off`, any case; anything else is refused."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise InvalidSetting(
        f"{what}={text!r} is not a yes/no value; use one of {', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)}"
    )


def env_bool(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    value = raw(name, environ)
    return default if value is None else parse_bool(value, name)


def parse_seconds(text: str | float, what: str, minimum: float = 0.0) -> float:
    """A finite number of seconds, at least `minimum`."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise InvalidSetting(f"{what}={text!r} is not a number of seconds; use a finite number >= {minimum:g}")
    return value


def env_seconds(name: str, default: float, environ: Mapping[str, str] | None = None, minimum: float = 0.0) -> float:
    value = raw(name, environ)
    return default if value is None else parse_seconds(value, name, minimum)


def parse_int(text: str | int, what: str, minimum: int = 0) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise InvalidSetting(f"{what}={text!r} is not a whole number >= {minimum}")
    return value


def parse_choice(text: str, what: str, choices: Iterable[str]) -> str:
    """One of `choices`, compared without regard to case."""
    options = tuple(choices)
    word = text.strip().lower()
    if word not in options:
        raise InvalidSetting(f"{what}={text!r} is not accepted; use one of {', '.join(options)}")
    return word


def env_choice(name: str, choices: Iterable[str], default: str, environ: Mapping[str, str] | None = None) -> str:
    value = raw(name, environ)
    return default if value is None else parse_choice(value, name, choices)


def env_path(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    value = raw(name, environ)
    if value is None:
        return None
    if "\x00" in value:
        raise InvalidSetting(f"{name} holds a NUL character; give a plain path")
    return Path(value).expanduser().absolute()


def env_list(name: str, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """A list separated by commas (or newlines); empty items are dropped."""
    value = raw(name, environ)
    if value is None:
        return ()
    return tuple(item.strip() for item in value.replace("\n", ",").split(",") if item.strip())
