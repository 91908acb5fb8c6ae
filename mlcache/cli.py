"""The `mlcache` command line (typer). Errors print one clear line and exit non-zero."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from . import __version__
from .errors import MlcacheError

app = typer.Typer(help="Offline-first cache for MLflow metadata and artifacts.", no_args_is_help=True)
console = Console(stderr=True)
out = Console()


class Settings:
    """Global options shared by the subcommands."""

    def __init__(self, cache_dir: Path | None, offline: bool, tracking_uri: str | None) -> None:
        self.cache_dir = cache_dir
        self.offline = offline
        self.tracking_uri = tracking_uri

    def api_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {}
        if self.cache_dir is not None:
            conf["cache_dir"] = self.cache_dir
        if self.offline:
            conf["offline_mode"] = True
        if self.tracking_uri:
            conf["tracking_uri"] = self.tracking_uri
        return conf


def _version(value: bool) -> None:
    if value:
        out.print(f"mlcache {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    cache_dir: Annotated[
        Path | None, typer.Option(envvar="MLCACHE_CACHE_DIR", help="Cache dir (default: the user's cache dir).")
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", envvar="MLCACHE_OFFLINE", help="Never touch the network.")
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI (default: embedded sqlite).")
    ] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Global options."""
    ctx.obj = Settings(cache_dir, offline, tracking_uri)


@app.command()
def demo(ctx: typer.Context) -> None:
    """Run the whole loop on the embedded default: track, register, cache, read back offline."""
    from .demo import run_demo
    from .plugins import get_api

    settings: Settings = ctx.obj
    api = get_api("mlflow", **settings.api_conf())
    run_demo(api, say=lambda line: out.print(f"[green]✓[/green] {line}"))


def run() -> None:
    """Entry point: run the app, turning mlcache errors into one line on stderr."""
    try:
        app()
    except MlcacheError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
