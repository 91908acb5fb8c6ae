"""The `mlcache` command line (typer). Errors print one clear line and exit non-zero."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import InvalidSetting, MlcacheError
from .settings import raw

app = typer.Typer(help="Offline-first cache for MLflow metadata and artifacts.", no_args_is_help=True)
err = Console(stderr=True)
out = Console()

KINDS = {
    "exps": "find_exps",
    "runs": "find_runs",
    "models": "find_models",
    "versions": "find_model_versions",
    "logged": "find_logged_models",
}


class Settings:
    """Global options shared by the subcommands."""

    def __init__(
        self,
        cache_dir: Path | None,
        offline: bool,
        tracking_uri: str | None,
        timeout: float | None = None,
        plugin: str | None = None,
    ) -> None:
        self.cache_dir = cache_dir
        self.offline = offline
        self.tracking_uri = tracking_uri
        self.timeout = timeout
        self.plugin = plugin

    def api(self, plugin: str | None = None, **extra: Any) -> Any:
        """The api these options describe: `--plugin`, else `MLCACHE_PLUGIN`, else `offline` with
        `--offline` or `MLCACHE_OFFLINE`, else `mlflow`."""
        from .plugins import default_plugin, load_plugin

        name = plugin or self.plugin or ("offline" if self.offline and not raw("MLCACHE_PLUGIN") else None)
        cls = load_plugin(name or default_plugin())
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


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj  # type: ignore[no-any-return]


def _version(value: bool) -> None:
    if value:
        out.print(f"mlcache {__version__}")
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
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False,
) -> None:
    """Global options."""
    ctx.obj = Settings(cache_dir, offline, tracking_uri, timeout, plugin)


def _is_run_uri(uri: str) -> bool:
    return uri.startswith("runs:/")


@app.command()
def pull(
    ctx: typer.Context,
    uri: Annotated[str, typer.Argument(help="models:/name/3, models:/name@alias, models:/m-<id>, runs:/<id>/path")],
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Progress bar.")] = None,
) -> None:
    """Pull a model or run artifact into the cache (if needed) and print its local path."""
    show = sys.stderr.isatty() if progress is None else progress
    api = _settings(ctx).api(show_progress=show)
    path = api.get_run_artifact(uri) if _is_run_uri(uri) else api.get_model_artifact(uri)
    typer.echo(str(path))


@app.command("ls")
def list_files(
    ctx: typer.Context,
    uri: Annotated[str, typer.Argument(help="A model version, logged model or runs:/<id>/<path>.")],
) -> None:
    """List the files of a model or run artifact (from the cache when offline)."""
    api = _settings(ctx).api()
    files = api.list_run_artifacts(uri) if _is_run_uri(uri) else api.list_model_artifacts(uri)
    for item in files:
        out.print(f"{item.size:>12}  {item.path}", highlight=False, soft_wrap=True)


def _sort_spec(items: list[str]) -> list[tuple[str, int]]:
    spec = []
    for item in items:
        field, _, direction = item.partition(":")
        if direction not in ("", "1", "-1", "asc", "desc"):
            raise typer.BadParameter(f"sort {item!r}: use field, field:1, field:-1, field:asc or field:desc")
        spec.append((field, -1 if direction in ("-1", "desc") else 1))
    return spec


def _summary(kind: str, doc: dict[str, Any]) -> list[str]:
    if kind == "exps":
        return [doc["id"], doc["name"], doc.get("lifecycle_stage", "")]
    if kind == "runs":
        return [
            doc["id"],
            doc.get("name") or "",
            doc["exp"]["name"],
            str(doc.get("status")),
            json.dumps(doc["metrics"]),
        ]
    if kind == "models":
        return [doc["name"], json.dumps(doc.get("aliases", {})), json.dumps(doc.get("tags", {}))]
    if kind == "versions":
        return [doc["model"]["name"], doc["version"], ",".join(doc.get("aliases", [])), doc["source"]]
    return [doc["id"], doc["name"], doc["exp"]["name"], doc.get("source_run_id") or ""]


_HEADERS = {
    "exps": ["id", "name", "stage"],
    "runs": ["id", "name", "experiment", "status", "metrics"],
    "models": ["name", "aliases", "tags"],
    "versions": ["model", "version", "aliases", "source"],
    "logged": ["id", "name", "experiment", "run"],
}


@app.command()
def find(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="exps, runs, models, versions or logged")],
    query: Annotated[str, typer.Argument(help='MongoDB query as JSON, e.g. \'{"params.lr": {"$gt": 0.01}}\'')] = "{}",
    sort: Annotated[list[str] | None, typer.Option("--sort", help="field:1 or field:-1; repeat for more")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document per line.")] = False,
) -> None:
    """Find entities with a MongoDB query, online (pushed down to MLflow) or offline (cached)."""
    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r}: choose one of {', '.join(KINDS)}")
    try:
        parsed = json.loads(query)
    except ValueError as exc:
        raise typer.BadParameter(f"query is not valid JSON: {exc}") from exc
    api = _settings(ctx).api()
    found = getattr(api, KINDS[kind])(parsed, _sort_spec(sort or []))
    items = list(itertools.islice(found, limit))
    if as_json:
        for item in items:
            typer.echo(json.dumps(item.to_doc(), ensure_ascii=False))
        return
    table = Table(*_HEADERS[kind], show_lines=False)
    for item in items:
        table.add_row(*_summary(kind, item.to_doc()))
    out.print(table)
    err.print(f"{len(items)} {kind}")


@app.command()
def export(
    ctx: typer.Context,
    items: Annotated[
        list[str] | None, typer.Argument(help="models:/name/3, models:/name@alias, m-<id>, runs:/id/path, exp:<id>")
    ] = None,
    to: Annotated[Path, typer.Option("--to", help="Bundle folder, or a .tar / .tar.gz archive.")] = Path("bundle"),
    query: Annotated[
        str | None, typer.Option("--query", help="Also every model version matching this JSON query.")
    ] = None,
) -> None:
    """Export model versions, runs and experiments with everything needed offline into a bundle."""
    from .bundle import selection_from

    selection = selection_from(items or [])
    api = _settings(ctx).api()
    with err.status(f"exporting to {to}"):
        path = api.export_bundle(
            to, selection.model_versions, selection.runs, selection.experiments, json.loads(query) if query else None
        )
    typer.echo(str(path))


@app.command("import")
def import_(ctx: typer.Context, source: Annotated[Path, typer.Argument(help="Bundle folder or archive.")]) -> None:
    """Verify a bundle and bring it into the cache."""
    api = _settings(ctx).api()
    with err.status(f"importing {source}"):
        report = api.import_bundle(source)
    out.print(
        f"imported {len(report.entries_added)} artifact entries ({len(report.entries_present)} already present), "
        f"{report.metadata_written} metadata documents ({report.metadata_kept} kept)",
        highlight=False,
    )


@app.command()
def verify(
    ctx: typer.Context,
    path: Annotated[
        Path | None, typer.Argument(help="Bundle (folder or archive) or cache dir; default: the cache.")
    ] = None,
) -> None:
    """Re-hash every file of a bundle or cache; list each bad file; exit 1 if any."""
    from .bundle import verify as verify_path

    target = path or _settings(ctx).api().cache_dir
    with err.status(f"verifying {target}"):
        problems = verify_path(target)
    for problem in problems:
        out.print(f"BAD {problem}", highlight=False, soft_wrap=True)
    if problems:
        err.print(f"[red]{len(problems)} problem(s)[/red] in {target}")
        raise typer.Exit(1)
    out.print(f"OK {target}", highlight=False, soft_wrap=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command()
def du(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Usage of the cache: each artifact entry's size on disk, last use and source."""
    rows = _settings(ctx).api().usage()
    if as_json:
        for row in rows:
            record = {
                "entry": row.label,
                "size": row.size,
                "files": row.files,
                "last_used": row.last_used.isoformat(),
                "source": row.source,
                "damaged": row.damaged,
            }
            typer.echo(json.dumps(record))
        return
    table = Table("entry", "size", "files", "last used", "source")
    for row in rows:
        source = f"damaged: {row.damaged}" if row.damaged else row.source
        table.add_row(row.label, _size(row.size), str(row.files), f"{row.last_used:%Y-%m-%d %H:%M}", source)
    out.print(table)
    err.print(f"total {_size(sum(r.size for r in rows))} in {len(rows)} entries")


@app.command()
def prune(
    ctx: typer.Context,
    max_size: Annotated[str, typer.Option("--max-size", help="Budget for artifacts, e.g. 500M, 10G.")],
) -> None:
    """Remove least recently used artifact entries until the cache fits the budget."""
    from .cache_admin import parse_size

    try:
        budget = parse_size(max_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    report = _settings(ctx).api().prune(budget)
    for row in report.removed:
        out.print(f"removed {row.label} ({_size(row.size)})", highlight=False, soft_wrap=True)
    for row in report.busy:
        err.print(f"kept {row.label} ({_size(row.size)}): another process is using it", highlight=False)
    err.print(f"freed {_size(report.freed)}")


@app.command()
def clean(
    ctx: typer.Context,
    everything: Annotated[bool, typer.Option("--all", help="Empty the whole cache.")] = False,
    entry: Annotated[str | None, typer.Option("--entry", help="Drop one cached model or run artifact.")] = None,
) -> None:
    """Remove temporary leftovers (default), one entry (--entry) or everything (--all)."""
    api = _settings(ctx).api()
    if everything:
        report = api.clean_all_cache()
        out.print(
            f"removed {report.entries_removed} artifact entries, {report.metadata_removed} metadata documents and "
            f"{report.temp_removed} temporary item(s) from {api.cache_dir}",
            highlight=False,
        )
        for label in report.entries_busy:
            err.print(f"kept {label}: another process is using it", highlight=False)
    elif entry:
        removed = api.clean_cached_run_artifact(entry) if _is_run_uri(entry) else api.clean_cached_model_artifact(entry)
        out.print(f"{'removed' if removed else 'not cached:'} {entry}", highlight=False)
    else:
        out.print(f"removed {api.clean_temp_artifacts()} temporary item(s)", highlight=False)


@app.command()
def demo(ctx: typer.Context) -> None:
    """Run the whole loop on the embedded default: track, log, pull, bundle, import, load offline."""
    from .plugins.mlflow.demo import run_demo

    run_demo(_settings(ctx).api(plugin="mlflow"), say=lambda line: out.print(f"[green]✓[/green] {line}"))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def run() -> None:
    """Entry point: run the app, turning mlcache errors (and the system's: a full disk, a path that
    cannot be read) into one line on stderr and exit 1."""
    try:
        app()
    except (MlcacheError, OSError) as exc:
        err.print(f"[red]error:[/red] {_one_line(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
