"""Repairing a cache: entries that fail verification are removed and filled again, pulled from
their source (online) or imported from a bundle that holds them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .artifact_cache import ArtifactCache, Target
from .cache_admin import CacheAdmin, EntryUsage, RepairReport
from .errors import MlcacheError, OfflineModeError

BUSY = "another process is using it"


def repair(
    admin: CacheAdmin,
    files: ArtifactCache,
    usage: list[EntryUsage],
    importer: Callable[[], Any] | None,
    bundle: str | None,
) -> RepairReport:
    """Repair the damaged entries among `usage` (rows with the versions each holds); `importer`
    imports the bundle named `bundle`, else entries are pulled again through `files`."""
    report = RepairReport()
    rows = admin.damaged(usage)
    if importer is None and files.settings.offline and rows:
        error = OfflineModeError("repairing needs the server to pull again, or a bundle to import from")
        error.cli_text = "repairing needs the server (leave out --offline), or a bundle: verify --repair --from BUNDLE"
        raise error
    targets: dict[str, Target] = {}
    busy: set[str] = set()
    for row in rows:
        if row.key is not None:
            with contextlib.suppress(MlcacheError):
                targets[row.label] = files.target_of(row.key, row.versions)
        if not admin.remove(row):
            busy.add(row.label)
            report.failed.append(f"{row.label}: {BUSY}")
    if importer is not None and rows:
        importer()
    for row in rows:
        if row.label in busy:
            continue
        try:
            if importer is None:
                target = targets.get(row.label)
                if target is None:
                    raise MlcacheError("its source is not known from the cached metadata")
                files.ensure(target)
            elif row.key is None or files.store.lookup(row.key) is None:
                raise MlcacheError(f"{bundle} does not hold it")
            report.repaired.append(row.label)
        except MlcacheError as exc:
            report.failed.append(f"{row.label}: {exc}")
    return report
