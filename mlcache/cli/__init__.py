"""The `mlcache` command line (typer).

Every error is one line on stderr (`error: ...`, exit 1; usage errors exit 2), every warning one
line (`warning: ...`); data goes to stdout, everything else to stderr (see `core`).
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, TextIO

import typer
from typer.exceptions import TyperException

from ..errors import MlcacheError, ServerUnreachable
from . import admin, artifacts, bundles, search
from .core import app, printable

__all__ = ["admin", "app", "artifacts", "bundles", "run", "search"]


def _one_line(text: str) -> str:
    return printable(" ".join(str(text).split()))


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Warnings as one line for the person at the terminal, without Python's source location."""
    if "--quiet" in sys.argv[1:] or "-q" in sys.argv[1:]:
        return
    text = str(message).replace(ServerUnreachable.LIBRARY_HINT, ServerUnreachable.CLI_HINT)
    sys.stderr.write(f"warning: {_one_line(text.replace('raise timeout=', 'raise --timeout'))}\n")


def _error(message: str, code: int) -> None:
    sys.stderr.write(f"error: {_one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(code)


def _usage_error(exc: TyperException) -> None:
    """A usage error as one line naming the help to read (no arguments at all: the help itself)."""
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, typer.Abort):
        _error("interrupted", 130)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        sys.stderr.write(ctx.get_help() + "\n")
        sys.exit(2)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    command = ctx.command_path if ctx is not None else "mlcache"
    _error(f"{message} (see `{command} --help`)", int(getattr(exc, "exit_code", 2)))


def run(args: list[str] | None = None) -> None:
    """Entry point: run the app; mlcache's errors (and the system's: a full disk, a path that
    cannot be read) become one line on stderr and exit 1, usage errors one line and exit 2."""
    warnings.showwarning = _show_warning
    warnings.filterwarnings("ignore", module=r"(mlflow|pydantic|alembic|sqlalchemy)(\..*)?$")
    try:
        result: Any = app(args=args, prog_name="mlcache", standalone_mode=False)
    except TyperException as exc:
        _usage_error(exc)
    except MlcacheError as exc:
        _error(exc.for_cli(), 1)
    except OSError as exc:
        _error(str(exc), 1)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    if isinstance(result, int) and result:
        sys.exit(result)
