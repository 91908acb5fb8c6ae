"""`pull`, `ls` and `info`: artifacts and what the cache knows of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import CacheMiss, MlcacheError
from ..placement import is_empty_folder
from ..progress import human_size
from .core import JsonOption, ProgressOption, app, data, is_run_uri, json_line, note, progress_factory, settings, table


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{what} is not valid JSON: {exc}") from exc


def _slug(uri: str) -> str:
    """A folder name for one of several pulled URIs: `models:/fraud@champion` -> `fraud@champion`."""
    name = re.sub(r"^[a-z]+:/+", "", uri)
    return re.sub(r"[^A-Za-z0-9@._-]+", "-", name).strip("-.") or "artifact"


def _place(api: Any, uri: str, cached: Path, dest: Path) -> Path:
    """Copy the cached files of `uri` into the folder `dest` (new or empty): a folder's files
    directly, a single file under its own name."""
    if cached.is_file():
        dest = dest / cached.name
    elif (dest.exists() or dest.is_symlink()) and not is_empty_folder(dest):
        raise MlcacheError(f"{dest} already exists and is not an empty folder; choose a new one")
    if is_run_uri(uri):
        return api.place_run_artifact(uri, None, dest, link=False)  # type: ignore[no-any-return]
    return api.place_model_artifact(uri, dest, link=False)  # type: ignore[no-any-return]


@app.command()
def pull(
    ctx: typer.Context,
    uris: Annotated[
        list[str] | None,
        typer.Argument(help="models:/name/3, models:/name@alias, models:/m-<id>, runs:/<id>/path (several allowed)"),
    ] = None,
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Also copy the files into this new folder (one subfolder per URI when several)."),
    ] = None,
    query: Annotated[
        str | None, typer.Option("--query", help="Also every model version matching this JSON query.")
    ] = None,
    progress: ProgressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Pull artifacts into the cache (when not there yet) and print each local path."""
    wanted = list(uris or [])
    base = settings(ctx).api()
    if query is not None:
        found = base.find_model_versions(parse_json(query, "--query"))
        wanted.extend(f"models:/{mv.model.name}/{mv.version}" for mv in found)
    if not wanted:
        if query is not None:
            note(ctx, "no model version matches the query")
            return
        raise typer.BadParameter("name at least one URI, or a --query")
    for uri in wanted:
        reporter = progress_factory(ctx, progress, uri)
        api = base.model_copy(update={"progress": reporter}) if reporter is not None else base
        path = api.get_run_artifact(uri) if is_run_uri(uri) else api.get_model_artifact(uri)
        if to is not None:
            path = _place(api, uri, path, to if len(wanted) == 1 else to / _slug(uri))
        if as_json:
            json_line({"uri": uri, "path": str(path)})
        else:
            data(str(path))
    if len(wanted) > 1:
        note(ctx, f"{len(wanted)} artifacts ready")


@app.command()
def pin(
    ctx: typer.Context,
    uri: Annotated[str, typer.Argument(help="models:/name/3, models:/name@alias, models:/m-<id>, runs:/<id>/path")],
) -> None:
    """Keep an artifact through every prune (pulled first if needed), until `mlcache unpin`."""
    api = settings(ctx).api()
    path = api.pin_artifact(uri)
    data(f"pinned {uri} ({path})")


@app.command()
def unpin(
    ctx: typer.Context,
    uri: Annotated[str, typer.Argument(help="A URI given to `mlcache pin`.")],
) -> None:
    """Let prune evict a pinned artifact again."""
    unpinned = settings(ctx).api().unpin_artifact(uri)
    data(f"unpinned {uri}" if unpinned else f"not pinned: {uri}")


@app.command("ls")
def list_files(
    ctx: typer.Context,
    uri: Annotated[str, typer.Argument(help="A model version, logged model or runs:/<id>/<path>.")],
    as_json: JsonOption = False,
) -> None:
    """List the files of a model or run artifact with their sizes (from the cache when offline)."""
    api = settings(ctx).api()
    files = api.list_run_artifacts(uri) if is_run_uri(uri) else api.list_model_artifacts(uri)
    if as_json:
        for item in files:
            json_line({"path": item.path, "size": item.size})
        return
    table(["size", "path"], [[human_size(item.size), item.path] for item in files])
    note(ctx, f"{len(files)} files, {human_size(sum(item.size for item in files))}")


def _cached(api: Any, uri: str) -> tuple[Path | None, int]:
    """Where the cache holds `uri`'s files (None when it does not) and their size."""
    offline = api if api.offline_mode else api.in_offline_mode
    try:
        path = offline.get_run_artifact(uri) if is_run_uri(uri) else offline.get_model_artifact(uri)
    except CacheMiss:
        return None, 0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return path, sum(p.stat().st_size for p in files)


@app.command()
def info(
    ctx: typer.Context,
    uri: Annotated[str, typer.Argument(help="models:/name/3, models:/name@alias, models:/m-<id> or runs:/<id>.")],
    as_json: JsonOption = False,
) -> None:
    """What a model version (or logged model, or run) is: aliases, run, params, source, and whether
    its files are in the cache."""
    api = settings(ctx).api()
    record: dict[str, Any]
    if is_run_uri(uri):
        run = api.get_run(uri)
        record = {
            "run": run.id,
            "name": run.name,
            "experiment": run.exp.name,
            "status": getattr(run.status, "value", str(run.status)),
            "params": run.params,
            "metrics": run.metrics,
            "artifacts": run.repo,
        }
    elif re.fullmatch(r"(models:/)?m-[0-9a-f]{32}", uri):
        logged = api.get_logged_model(uri)
        record = {
            "logged_model": logged.id,
            "name": logged.name,
            "experiment": logged.exp.name,
            "run": logged.source_run_id,
            "source": logged.artifact_location,
        }
    else:
        mv = api.get_model_version(uri)
        record = {
            "model": mv.model.name,
            "version": mv.version,
            "aliases": list(mv.aliases),
            "run": mv.run.id if mv.run is not None else None,
            "params": mv.run.params if mv.run is not None else {},
            "source": mv.source,
            "status": mv.status,
        }
    if not is_run_uri(uri) or uri.count("/") > 1:
        path, size = _cached(api, uri)
        record["cached"] = str(path) if path is not None else None
        record["size"] = size if path is not None else None
    if as_json:
        json_line(record)
        return
    for key, value in record.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        if key == "size" and isinstance(value, int):
            shown = human_size(value)
        data(f"{key + ':':<14}{'-' if shown is None else shown}")
