"""Keeping a cache healthy: usage report, prune to a size budget (least recently used first),
clean and verify. Entries are removed one by one under their exclusive lock, so what another
process reads or writes is left alone, and reported."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CorruptMetadata, LockTimeout, MlcacheError
from .layout import writing
from .manifest import EntryKey, Manifest
from .staging import clean_tmp

if TYPE_CHECKING:
    from .artifact_store import ArtifactStore
    from .layout import CacheLayout
    from .metadata_store import MetadataStore

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str | int) -> int:
    """`10G`, `500MiB`, `1.5gb`, `1024` -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 500M, 10G, 1.5GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class EntryUsage:
    """One artifact entry of the cache, as the usage report shows it. `size` and `files` are
    measured on disk (a manifest's own numbers are claims); `damaged` says why an entry whose
    manifest cannot be read is listed anyway (its space is reclaimable by `prune`)."""

    label: str
    key: EntryKey | None
    size: int
    files: int
    last_used: datetime
    pulled_at: datetime | None
    source: str
    damaged: str | None = None
    manifest_path: Path | None = None
    versions: tuple[str, ...] = ()
    """The cached model versions whose files this entry holds: `fraud/3@champion`."""


@dataclass(frozen=True)
class AliasStatus:
    """A cached alias next to the server's: `state` is `current`, `moved` or `removed`."""

    model: str
    alias: str
    cached: str
    server: str | None

    @property
    def state(self) -> str:
        return "current" if self.server == self.cached else "removed" if self.server is None else "moved"


@dataclass
class PruneReport:
    """What `prune` removed, and what it left because other processes were reading it."""

    removed: list[EntryUsage] = field(default_factory=list)
    busy: list[EntryUsage] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(row.size for row in self.removed)


@dataclass
class RepairReport:
    """What `repair_cache` did with each damaged entry: pulled or imported again, or not."""

    repaired: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass
class CleanReport:
    """What `clean_all_cache` removed, and what it left because other processes were using it."""

    entries_removed: int = 0
    entries_busy: list[str] = field(default_factory=list)
    metadata_removed: int = 0
    temp_removed: int = 0
    temp_busy: int = 0


def _measure(path: Path) -> tuple[int, int]:
    """(bytes, files) of the regular files of a tree, by `lstat`, links not followed."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0, 0
    if not stat.S_ISDIR(info.st_mode):
        return (info.st_size, 1) if stat.S_ISREG(info.st_mode) else (0, 0)
    size = count = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                item = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(item.st_mode):
                    size += item.st_size
                    count += 1
    return size, count


class CacheAdmin:
    """Usage, prune, clean and verify of one cache dir."""

    def __init__(self, layout: CacheLayout, meta: MetadataStore, artifacts: ArtifactStore) -> None:
        self._layout = layout
        self._meta = meta
        self._artifacts = artifacts

    def usage(self) -> list[EntryUsage]:
        """Every artifact entry with its size on disk, last use and source, largest first; entries
        whose manifest is damaged are listed with the reason."""
        rows = []
        for key, manifest in self._artifacts.entries():
            if isinstance(manifest, CorruptMetadata):
                rows.append(self._damaged_row(key, manifest))
            elif self._artifacts.lookup_quiet(key) is not None:  # type: ignore[arg-type]
                rows.append(self._usage_row(key, manifest))  # type: ignore[arg-type]
        return sorted(rows, key=lambda row: (-row.size, row.label))

    def _usage_row(self, key: EntryKey, manifest: Manifest) -> EntryUsage:
        size, files = _measure(self._artifacts.entry_path(key))
        last = self._artifacts.last_used(key)
        return EntryUsage(key.label, key, size, files, last, manifest.pulled_at, manifest.source)

    def _damaged_row(self, key: EntryKey | None, error: CorruptMetadata) -> EntryUsage:
        size, files = _measure(self._artifacts.entry_path(key)) if key is not None else (0, 0)
        with contextlib.suppress(OSError):
            size += error.path.lstat().st_size
        label = key.label if key is not None else str(error.path.relative_to(self._layout.root))
        epoch = datetime.fromtimestamp(0, tz=timezone.utc)
        return EntryUsage(label, key, size, files, epoch, None, "", str(error), error.path)

    def prune(self, max_size: int | str, dry_run: bool = False) -> PruneReport:
        """Remove least recently used entries (damaged ones first) until the artifacts fit in
        `max_size` bytes. Each entry is removed under its exclusive lock; one that a reader or
        writer holds is left alone and reported as busy. `dry_run` only says what would go."""
        budget = parse_size(max_size)
        rows = sorted(self.usage(), key=lambda row: (row.damaged is None, row.last_used))
        total = sum(row.size for row in rows)
        report = PruneReport()
        if dry_run:
            for row in rows:
                if total <= budget:
                    break
                report.removed.append(row)
                total -= row.size
            return report
        with writing(self._layout.root, "prune the cache"):
            for row in rows:
                if total <= budget:
                    break
                if self._remove_row(row):
                    report.removed.append(row)
                    total -= row.size
                else:
                    report.busy.append(row)
        return report

    def _remove_row(self, row: EntryUsage) -> bool:
        """Remove one entry under its exclusive lock; False when another process holds it."""
        if row.key is None:
            if row.manifest_path is not None:
                self._layout.guard(row.manifest_path).unlink(missing_ok=True)
            return True
        try:
            with self._artifacts.lock(row.key, timeout=0):
                self._artifacts.remove(row.key)
                if row.manifest_path is not None:
                    self._layout.guard(row.manifest_path).unlink(missing_ok=True)
        except LockTimeout:
            return False
        return True

    def clean_temp_artifacts(self, older_than: float = 0.0) -> int:
        """Remove staging leftovers in `tmp/` whose owner process is gone (temp files without an
        owner once older than `older_than` seconds, and never younger than ten minutes); returns how
        many were removed."""
        with writing(self._layout.root, "clean the cache's temporary files"):
            return clean_tmp(self._layout, older_than)[0]

    def clean_all_cache(self) -> CleanReport:
        """Empty the cache: every artifact entry (each under its exclusive lock: entries other
        processes are reading stay, and are reported), every metadata document, and the temporary
        files no live process owns."""
        root = self._layout.root
        report = CleanReport()
        if not root.exists():
            return report
        if not (root / "layout.json").exists() and any(root.iterdir()):
            raise MlcacheError(f"{root} does not look like an mlcache cache dir (no layout.json); not cleaning it")
        self._layout.check_version()
        with writing(root, "clean the cache"):
            for row in self.usage():
                if self._remove_row(row):
                    report.entries_removed += 1
                else:
                    report.entries_busy.append(row.label)
            report.metadata_removed = self._meta.clear()
            report.temp_removed, report.temp_busy = clean_tmp(self._layout)
        return report

    def damaged(self, usage: list[EntryUsage] | None = None) -> list[EntryUsage]:
        """The entries (of `usage`, the report already made, else a new one) that fail
        verification: a file missing, resized, changed or unlisted, or a manifest that cannot be read."""
        rows = []
        for row in self.usage() if usage is None else usage:
            if row.damaged is not None or row.key is None:
                rows.append(row)
                continue
            manifest = self._artifacts.read_manifest(row.key)
            if manifest is None or self._artifacts.verify(row.key, manifest):
                rows.append(row)
        return rows

    def remove(self, row: EntryUsage) -> bool:
        """Remove one entry (a damaged one too) under its exclusive lock; False when it is busy."""
        with writing(self._layout.root, f"remove {row.label}"):
            return self._remove_row(row)

    def verify_cache(self) -> list[str]:
        """Re-hash every entry and re-read every metadata file; each problem as one line."""
        from .bundle import verify

        return verify(self._layout.root) if self._layout.root.exists() else []
