"""The `mlcache` command line (typer).

Every error is one line on stderr (`error: ...`, exit 1; usage errors exit 2), every warning one
line (`warning: ...`); data goes to stdout, everything else to stderr (see `core`).
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any, TextIO

import typer
from typer.exceptions import TyperException

from ..errors import MlcacheError, ServerUnreachable
from . import admin, artifacts, bundles, search, selftest
from .core import app, printable

__all__ = ["admin", "app", "artifacts", "bundles", "run", "search", "selftest"]


def _one_line(text: str) -> str:
    return printable(" ".join(str(text).split()))


def _warnings_as_lines(quiet: bool) -> None:
    """Warnings and mlcache's log warnings (retries, waits) as one line each on stderr, without
    Python's source location; none with `--quiet`."""

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if not quiet:
            text = str(message).replace(ServerUnreachable.LIBRARY_HINT, ServerUnreachable.CLI_HINT)
            sys.stderr.write(f"warning: {_one_line(text.replace('raise timeout=', 'raise --timeout'))}\n")

    warnings.showwarning = show
    logger = logging.getLogger("mlcache")
    for handler in [h for h in logger.handlers if getattr(h, "mlcache_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter())
    handler.setLevel(logging.ERROR if quiet else logging.WARNING)
    handler.mlcache_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False
    pulls = logging.getLogger("mlcache.pulls")
    for handler in [h for h in pulls.handlers if getattr(h, "mlcache_cli", False)]:
        pulls.removeHandler(handler)
    if not quiet:
        told = logging.StreamHandler(sys.stderr)
        told.setFormatter(_PlainFormatter())
        told.setLevel(logging.INFO)
        told.mlcache_cli = True  # type: ignore[attr-defined]
        pulls.addHandler(told)
        pulls.setLevel(logging.INFO)


class _PlainFormatter(logging.Formatter):
    """What a pull brought (linked and downloaded), said as it is."""

    def format(self, record: logging.LogRecord) -> str:
        return _one_line(record.getMessage())


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {_one_line(record.getMessage())}"


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
    argv = sys.argv[1:] if args is None else list(args)
    quiet = "--quiet" in argv or "-q" in argv
    _warnings_as_lines(quiet)
    warnings.filterwarnings("ignore", module=r"(mlflow|pydantic|alembic|sqlalchemy)(\..*)?$")
    try:
        result: Any = app(args=args, prog_name="mlcache", standalone_mode=False)
    except TyperException as exc:
        _usage_error(exc)
    except MlcacheError as exc:
        _error(exc.for_cli(), 1)
    except OSError as exc:
        _error(str(exc), 1)
    except ImportError as exc:
        missing = exc.name or str(exc)
        if missing.split(".")[0] == "mlflow":
            _error(
                "the mlflow plugin needs mlflow, which is not installed: pip install 'mlcache[mlflow]', or --offline", 1
            )
        _error(f"a module mlcache needs is missing: {missing}", 1)
    except KeyboardInterrupt:
        _error("interrupted", 130)
    if isinstance(result, int) and result:
        sys.exit(result)
