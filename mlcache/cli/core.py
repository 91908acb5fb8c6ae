"""What every command shares: the app, the global options, and where output goes.

Data (a path, a table, JSON Lines) goes to stdout, everything else to stderr: progress, counts,
warnings (one line, `warning: ...`) and errors (one line, `error: ...`), so `$(mlcache pull ...)`
captures exactly the path. `--quiet` leaves only data and errors.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import __version__
from ..errors import InvalidSetting
from ..progress import BarProgress, LineProgress, TransferProgress
from ..settings import raw

app = typer.Typer(
    help="Offline-first cache for MLflow metadata and artifacts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class Settings:
    """Global options shared by the subcommands."""

    def __init__(
        self,
        cache_dir: Path | None,
        offline: bool,
        tracking_uri: str | None,
        timeout: float | None = None,
        plugin: str | None = None,
        quiet: bool = False,
    ) -> None:
        self.cache_dir = cache_dir
        self.offline = offline
        self.tracking_uri = tracking_uri
        self.timeout = timeout
        self.plugin = plugin
        self.quiet = quiet

    def api(self, plugin: str | None = None, **extra: Any) -> Any:
        """The api these options describe: `--plugin`, else `MLCACHE_PLUGIN`, else `offline` with
        `--offline`, else the default plugin (`mlflow` when installed)."""
        from ..plugins import default_plugin, load_plugin

        name = plugin or self.plugin or ("offline" if self.offline and not raw("MLCACHE_PLUGIN") else None)
        name = name or default_plugin()
        cls = load_plugin(name)
        conf: dict[str, Any] = dict(extra)
        if self.cache_dir is not None:
            conf["cache_dir"] = self.cache_dir
        if self.offline:
            conf["offline_mode"] = True
        if self.tracking_uri:
            if "tracking_uri" not in cls.model_fields:
                raise InvalidSetting(f"--tracking-uri does not apply to the {name} plugin")
            conf["tracking_uri"] = self.tracking_uri
        if self.timeout is not None:
            conf["timeout"] = self.timeout
        return cls(**conf)


def settings(ctx: typer.Context) -> Settings:
    return ctx.obj  # type: ignore[no-any-return]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """`text` with control characters (terminal escapes, bidi overrides) shown as `\\xNN`, so names
    from a server or a bundle cannot rewrite the terminal."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def data(line: str) -> None:
    """One line of the command's result, on stdout."""
    sys.stdout.write(f"{printable(line)}\n")
    sys.stdout.flush()


def json_line(record: dict[str, Any]) -> None:
    """One JSON document on one line of stdout (the `--json` output is JSON Lines); control
    characters are JSON escapes."""
    text = json.dumps(record, ensure_ascii=False, default=str)
    sys.stdout.write(_CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")
    sys.stdout.flush()


def note(ctx: typer.Context, message: str) -> None:
    """A message for the person at the terminal, on stderr; silent with `--quiet`."""
    if not settings(ctx).quiet:
        sys.stderr.write(f"{printable(message)}\n")
        sys.stderr.flush()


def status(ctx: typer.Context, message: str) -> None:
    """What a long command is doing, for a person at a terminal only (never in logs, pipes or
    with `--quiet`)."""
    if sys.stderr.isatty() and not settings(ctx).quiet:
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Aligned columns on stdout, every cell whole (ids are never cut; a long line wraps in the
    terminal and still pastes as one)."""
    materialized = [[str(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in materialized)]) for i, h in enumerate(headers)]
    for row in [list(headers), *materialized]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        data("  ".join(cells).rstrip())


def progress_factory(ctx: typer.Context, forced: bool | None, label: str) -> Any:
    """How a command's transfers report: a bar when stderr is a terminal (or `--progress`), plain
    lines otherwise, nothing with `--no-progress` or `--quiet`. The label is what the user asked for."""
    if settings(ctx).quiet or forced is False:
        return None
    bar = forced is True or sys.stderr.isatty()

    def make(_entry: str) -> TransferProgress:
        return BarProgress(label) if bar else LineProgress(label)

    return make


ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Force the progress bar on or off (default: a bar when stderr is a terminal, plain lines otherwise).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Output JSON Lines: one JSON document per line.")]


def _version(value: bool) -> None:
    if value:
        data(f"mlcache {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache dir (default: MLCACHE_CACHE_DIR, else the user's cache dir).")
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never touch the network (default: MLCACHE_OFFLINE).")
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else embedded sqlite).")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            min=0.1,
            help="Deadline of each server call, retries included; then a cached copy answers, if any "
            "(default: MLCACHE_TIMEOUT, else 10).",
        ),
    ] = None,
    plugin: Annotated[
        str | None,
        typer.Option(help="Backend plugin: mlflow, offline, memory or an installed one (default: MLCACHE_PLUGIN)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only results and errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Global options."""
    ctx.obj = Settings(cache_dir, offline, tracking_uri, timeout, plugin, quiet)


def is_run_uri(uri: str) -> bool:
    return uri.startswith("runs:/")
