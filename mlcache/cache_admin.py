"""Keeping a cache healthy: usage report, prune to a size budget (least recently used first),
clean, verify, and the bundle operations, as methods of `BaseMlflowApi`."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock

from .artifact_store import EntryKey, Manifest, remove_tree
from .errors import CorruptMetadata, LockTimeout, MlcacheError
from .locks import entry_lock

if TYPE_CHECKING:
    from .artifact_store import ArtifactStore
    from .bundle import ImportReport
    from .layout import CacheLayout

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
    """One artifact entry of the cache, as the usage report shows it."""

    label: str
    key: EntryKey
    size: int
    files: int
    last_used: datetime
    pulled_at: datetime
    source: str


class CacheAdminMixin:
    """usage / prune / clean / verify / bundles."""

    if TYPE_CHECKING:
        _layout: CacheLayout
        _artifacts: ArtifactStore
        lock_timeout: float

    def usage(self) -> list[EntryUsage]:
        """Every complete artifact entry with its size, last use and source, largest first."""
        rows = []
        for key, manifest in self._artifacts.entries():
            if isinstance(manifest, CorruptMetadata) or self._artifacts.lookup_quiet(key) is None:
                continue
            rows.append(self._usage_row(key, manifest))
        return sorted(rows, key=lambda row: (-row.size, row.label))

    def _usage_row(self, key: EntryKey, manifest: Manifest) -> EntryUsage:
        return EntryUsage(
            key.label,
            key,
            manifest.size,
            len(manifest.files),
            self._artifacts.last_used(key, manifest),
            manifest.pulled_at,
            manifest.source,
        )

    def prune(self, max_size: int | str) -> list[EntryUsage]:
        """Remove least recently used entries until the artifacts fit in `max_size` bytes; an entry
        whose lock another process holds is left alone. Returns what was removed."""
        budget = parse_size(max_size)
        rows = sorted(self.usage(), key=lambda row: row.last_used)
        total = sum(row.size for row in rows)
        removed = []
        for row in rows:
            if total <= budget:
                break
            try:
                with entry_lock(self._layout, "artifacts", row.key.kind, *row.key.parts, timeout=0):
                    if self._artifacts.remove(row.key):
                        removed.append(row)
                        total -= row.size
            except (LockTimeout, filelock.Timeout):
                continue
        return removed

    def clean_temp_artifacts(self, older_than: float = 3600.0) -> int:
        """Remove staging leftovers in `tmp/` older than `older_than` seconds; returns how many."""
        tmp = self._layout.tmp
        if not tmp.is_dir():
            return 0
        cutoff = time.time() - older_than
        count = 0
        for item in tmp.iterdir():
            try:
                if item.lstat().st_mtime <= cutoff:
                    remove_tree(item)
                    count += 1
            except FileNotFoundError:
                continue
        return count

    def clean_all_cache(self) -> None:
        """Empty the cache: metadata, artifacts, manifests and temporary files."""
        root = self._layout.root
        if not root.exists():
            return
        if not (root / "layout.json").exists() and any(root.iterdir()):
            raise MlcacheError(f"{root} does not look like an mlcache cache dir (no layout.json); not cleaning it")
        for folder in (self._layout.metadata, self._layout.artifacts, self._layout.manifests, self._layout.tmp):
            shutil.rmtree(folder, ignore_errors=True)

    def verify_cache(self) -> list[str]:
        """Re-hash every entry and re-read every metadata file; each problem as one line."""
        from .bundle import verify

        return verify(self._layout.root) if self._layout.root.exists() else []

    def export_bundle(
        self,
        target: Path | str,
        model_versions: Iterable[Any] = (),
        runs: Iterable[Any] = (),
        experiments: Iterable[Any] = (),
        version_query: dict[str, Any] | None = None,
    ) -> Path:
        """A bundle (folder, `.tar` or `.tar.gz`) holding the selection and all it needs offline."""
        from .bundle import Selection, export_bundle

        selection = Selection(list(model_versions), list(runs), list(experiments), version_query)
        return export_bundle(self, selection, target)  # type: ignore[arg-type]

    def import_bundle(self, source: Path | str) -> ImportReport:
        """Verify a bundle and bring it into this cache (idempotent, never replacing other content)."""
        from .bundle import import_bundle

        return import_bundle(self, source)  # type: ignore[arg-type]
