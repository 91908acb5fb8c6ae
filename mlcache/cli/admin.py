"""`du`, `prune`, `clean`, `doctor` and `demo`: looking after the cache."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import MlcacheError
from ..progress import human_size
from .core import JsonOption, app, data, is_run_uri, json_line, note, settings, table


@app.command()
def du(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Usage of the cache: each artifact entry, the model versions it holds, its size, the bytes
    only it holds (what removing it frees), and the cache's bytes on disk, shared blobs once."""
    usage = settings(ctx).api().cache_usage()
    rows = usage.entries
    if as_json:
        for row in rows:
            json_line(
                {
                    "entry": row.label,
                    "versions": list(row.versions),
                    "size": row.size,
                    "unique": row.unique,
                    "files": row.files,
                    "pinned": row.pinned,
                    "last_used": row.last_used.isoformat(),
                    "source": row.source,
                    "damaged": row.damaged,
                }
            )
        json_line({"total": {"on_disk": usage.on_disk, "loose_blobs": usage.loose_blobs, "dedup": usage.dedup}})
        return
    table(
        ["entry", "versions", "size", "unique", "files", "last used"],
        [
            [
                row.label + (" (pinned)" if row.pinned else ""),
                ", ".join(row.versions) or ("damaged: " + row.damaged if row.damaged else "-"),
                human_size(row.size),
                human_size(row.unique),
                str(row.files),
                f"{row.last_used:%Y-%m-%d %H:%M}",
            ]
            for row in rows
        ],
    )
    loose = f", {human_size(usage.loose_blobs)} in blobs no entry holds (`mlcache gc`)" if usage.loose_blobs else ""
    note(ctx, f"total {human_size(usage.on_disk)} on disk in {len(rows)} entries{loose}")
    if not usage.dedup and rows:
        note(ctx, "dedup is off here: hardlinks cannot be made in this cache dir, so entries hold their own copies")


@app.command()
def prune(
    ctx: typer.Context,
    max_size: Annotated[str, typer.Option("--max-size", help="Budget on disk, e.g. 500M, 10G.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be removed.")] = False,
    keep_aliases: Annotated[
        bool, typer.Option("--keep-aliases", help="Never evict a version an alias points to.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Remove least recently used artifact entries until the cache fits the budget (a blob shared by
    entries counts once; pinned entries stay)."""
    from ..cache_admin import parse_size

    try:
        budget = parse_size(max_size)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    report = settings(ctx).api().prune(budget, dry_run=dry_run, keep_aliases=keep_aliases)
    verb = "would remove" if dry_run else "removed"
    for row in report.removed:
        if as_json:
            json_line({"entry": row.label, "size": row.size, "unique": row.unique, "removed": not dry_run})
        else:
            data(f"{verb} {row.label} ({human_size(row.size)})")
    for row in report.busy:
        note(ctx, f"kept {row.label} ({human_size(row.size)}): another process is using it")
    note(ctx, f"{'would free' if dry_run else 'freed'} {human_size(report.freed)}")


@app.command()
def gc(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Remove blobs no entry holds and staging left by killed processes (never what a running pull uses)."""
    report = settings(ctx).api().gc()
    if as_json:
        json_line(
            {
                "blobs_removed": report.blobs_removed,
                "freed": report.freed,
                "blobs_kept": report.blobs_kept,
                "temp_removed": report.temp_removed,
                "temp_busy": report.temp_busy,
            }
        )
        return
    data(
        f"removed {report.blobs_removed} blobs ({human_size(report.freed)}) and {report.temp_removed} temporary item(s)"
    )
    if report.blobs_kept or report.temp_busy:
        note(ctx, f"kept {report.blobs_kept} blobs and {report.temp_busy} temporary item(s) that pulls are using")


def _confirm_all(ctx: typer.Context, cache_dir: Path, yes: bool) -> None:
    """On a terminal, `clean --all` asks first; scripts (no terminal) and `--yes` do not."""
    if yes or not sys.stdin.isatty():
        return
    sys.stderr.write(f"remove everything in the cache at {cache_dir}? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        note(ctx, "nothing removed")
        raise typer.Exit(1)


@app.command()
def clean(
    ctx: typer.Context,
    everything: Annotated[bool, typer.Option("--all", help="Empty the whole cache (asks on a terminal).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --all.")] = False,
    entry: Annotated[str | None, typer.Option("--entry", help="Drop one cached model or run artifact.")] = None,
) -> None:
    """Remove temporary leftovers (default), one entry (--entry) or everything (--all)."""
    api = settings(ctx).api()
    if everything:
        _confirm_all(ctx, api.cache_dir, yes)
        report = api.clean_all_cache()
        data(
            f"removed {report.entries_removed} artifact entries, {report.metadata_removed} metadata documents and "
            f"{report.temp_removed} temporary item(s) from {api.cache_dir}"
        )
        for label in report.entries_busy:
            note(ctx, f"kept {label}: another process is using it")
    elif entry:
        removed = api.clean_cached_run_artifact(entry) if is_run_uri(entry) else api.clean_cached_model_artifact(entry)
        data(f"{'removed' if removed else 'not cached:'} {entry}")
    else:
        data(f"removed {api.clean_temp_artifacts()} temporary item(s)")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _rclone_version(api: Any) -> str:
    binary = getattr(api.transfer, "binary", None) or shutil.which("rclone")
    if not binary:
        return "not found"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        result = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=20)
        if result.returncode == 0 and result.stdout:
            return f"{result.stdout.splitlines()[0].removeprefix('rclone ').strip()} ({binary})"
    return f"not working ({binary})"


def _hardlinks(layout: Any) -> str:
    """Whether files of the cache can be hardlinked (what deduplicated storage needs)."""
    probe_dir = layout.tmp
    if not probe_dir.is_dir() or probe_dir.is_symlink():
        return "unknown (the cache has no tmp/ folder yet)"
    try:
        first = layout.guard(probe_dir / f".doctor-{uuid.uuid4().hex}")
    except MlcacheError as exc:
        return f"unknown ({exc})"
    second = first.with_name(first.name + ".link")
    try:
        os.close(os.open(first, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
        os.link(first, second)
        return "yes"
    except OSError as exc:
        return f"no ({exc.strerror or exc})"
    finally:
        for path in (first, second):
            with contextlib.suppress(OSError):
                path.unlink()


@app.command()
def doctor(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """What this mlcache would use and whether it works: cache dir, server, offline state, tools."""
    api = settings(ctx).api()
    cache_dir = api.cache_dir
    writable = os.access(cache_dir, os.W_OK) if cache_dir.exists() else os.access(cache_dir.parent, os.W_OK)
    facts: dict[str, Any] = {
        "mlcache": _package_version("mlcache"),
        "plugin": type(api).__name__,
        "cache dir": str(cache_dir),
        "cache writable": "yes" if writable else "no",
        "tracking uri": getattr(api, "resolved_tracking_uri", None) or "-",
        "offline": "yes" if api.offline_mode else "no",
        "server deadline": f"{api.timeout:g} s",
        "lock mode": api.lock_mode,
        "hardlinks": _hardlinks(api.layout),
        "rclone": _rclone_version(api),
        "mlflow": _package_version("mlflow"),
        "python": sys.version.split()[0],
    }
    if as_json:
        json_line(facts)
        return
    for key, value in facts.items():
        data(f"{key + ':':<17}{value}")


@app.command()
def demo(ctx: typer.Context) -> None:
    """Run the whole loop in a folder of its own (a local MLflow store and cache, kept afterwards):
    track, log, pull, bundle, import, load offline."""
    from ..plugins.mlflow.demo import run_demo_in

    given = settings(ctx)
    run_demo_in(None, given.tracking_uri, given.cache_dir, given.timeout, say=lambda line: data(f"✓ {line}"))
