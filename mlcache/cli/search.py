"""`find` and `status`: metadata, searched and compared with the server."""

from __future__ import annotations

import itertools
import json
from typing import Annotated, Any

import typer

from ..errors import OfflineModeError
from .artifacts import parse_json
from .core import JsonOption, app, json_line, note, settings, table

KINDS = {
    "exps": "find_exps",
    "runs": "find_runs",
    "models": "find_models",
    "versions": "find_model_versions",
    "logged": "find_logged_models",
}

_HEADERS = {
    "exps": ["id", "name", "stage"],
    "runs": ["id", "name", "experiment", "status", "metrics"],
    "models": ["name", "aliases", "tags"],
    "versions": ["model", "version", "aliases", "source"],
    "logged": ["id", "name", "experiment", "run"],
}


def _summary(kind: str, doc: dict[str, Any]) -> list[str]:
    if kind == "exps":
        return [doc["id"], doc["name"], doc.get("lifecycle_stage", "")]
    if kind == "runs":
        status = str(doc.get("status") or "").removeprefix("RunStatus.")
        return [doc["id"], doc.get("name") or "", doc["exp"]["name"], status, json.dumps(doc["metrics"])]
    if kind == "models":
        return [doc["name"], json.dumps(doc.get("aliases", {})), json.dumps(doc.get("tags", {}))]
    if kind == "versions":
        return [doc["model"]["name"], doc["version"], ",".join(doc.get("aliases", [])), doc["source"]]
    return [doc["id"], doc["name"], doc["exp"]["name"], doc.get("source_run_id") or ""]


def _sort_spec(items: list[str]) -> list[tuple[str, int]]:
    spec = []
    for item in items:
        field, _, direction = item.partition(":")
        if direction not in ("", "1", "-1", "asc", "desc"):
            raise typer.BadParameter(f"sort {item!r}: use field, field:1, field:-1, field:asc or field:desc")
        spec.append((field, -1 if direction in ("-1", "desc") else 1))
    return spec


@app.command()
def find(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="exps, runs, models, versions or logged")],
    query: Annotated[str, typer.Argument(help='MongoDB query as JSON, e.g. \'{"params.lr": {"$gt": 0.01}}\'')] = "{}",
    sort: Annotated[list[str] | None, typer.Option("--sort", help="field:1 or field:-1; repeat for more")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1)] = None,
    as_json: JsonOption = False,
) -> None:
    """Find entities with a MongoDB query, online (pushed down to MLflow) or offline (cached)."""
    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r}: choose one of {', '.join(KINDS)}")
    parsed = parse_json(query, "the query")
    api = settings(ctx).api()
    found = getattr(api, KINDS[kind])(parsed, _sort_spec(sort or []))
    items = list(itertools.islice(found, limit))
    if as_json:
        for item in items:
            json_line(item.to_doc())
        return
    table(_HEADERS[kind], [_summary(kind, item.to_doc()) for item in items])
    note(ctx, f"{len(items)} {kind}")


@app.command()
def status(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Cached aliases next to the server's: which ones it has moved (or removed) since."""
    api = settings(ctx).api()
    if api.offline_mode:
        raise OfflineModeError("status compares the cache with the server; run it without --offline")
    rows = api.alias_status()
    if as_json:
        for row in rows:
            json_line(
                {"model": row.model, "alias": row.alias, "cached": row.cached, "server": row.server, "state": row.state}
            )
        return
    table(
        ["alias", "cached", "server", "state"],
        [[f"models:/{r.model}@{r.alias}", r.cached, r.server or "-", r.state] for r in rows],
    )
    changed = sum(1 for r in rows if r.state != "current")
    note(ctx, f"{len(rows)} cached aliases, {changed} moved or removed on the server")
