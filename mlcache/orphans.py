"""What a killed process can leave in `artifacts/` and `manifests/`: a tree renamed into place
whose manifest was never written (a pull killed between the two), and a manifest whose files are
gone (a removal killed between the two). Neither is ever served; `gc` finds and removes both.

A tree without manifest is removed only when its change time (set by the rename that put it
there) is older than the age limit and its entry's lock is free, so a pull that is about to write
the manifest keeps it even where locks do nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .artifact_store import ArtifactStore
from .errors import CorruptMetadata, LockTimeout
from .manifest import EntryKey
from .names import UnsafePath, decode_part

ORPHAN_MIN_AGE = 600.0
"""Trees without manifest younger than this (seconds since they were renamed into place) stay."""


@dataclass
class OrphanReport:
    """Trees and manifests removed, and trees left because they are young or their entry is busy."""

    trees: int = 0
    manifests: int = 0
    kept: int = 0


def _key(kind: str, name: str) -> EntryKey | None:
    part = decode_part(name)
    if part is None:
        return None
    try:
        return EntryKey(kind, (part,))
    except UnsafePath:
        return None


def _run_orphans(store: ArtifactStore, run_dir: Path, complete: set[str]) -> Iterator[tuple[EntryKey, Path]]:
    """Paths under one run's folder that no complete entry holds (the largest such paths)."""
    run_id = decode_part(run_dir.name)

    def walk(folder: Path, prefix: str) -> Iterator[tuple[EntryKey, Path]]:
        for child in sorted(folder.iterdir()):
            rel = f"{prefix}{child.name}"
            if rel in complete:
                continue
            if child.is_dir() and not child.is_symlink() and any(c.startswith(f"{rel}/") for c in complete):
                yield from walk(child, f"{rel}/")
                continue
            try:
                key = EntryKey("runs", (run_id or "", rel))
            except UnsafePath:
                continue
            if store.entry_path(key) == child:
                yield key, child

    yield from walk(run_dir, "")


def orphan_trees(store: ArtifactStore) -> list[tuple[EntryKey, Path]]:
    """Trees under `artifacts/` that no manifest makes complete."""
    complete: dict[str, set[str]] = {}
    for key, _manifest in store.entries():
        if key is not None and key.kind == "runs":
            complete.setdefault(key.parts[0], set()).add(key.parts[1])
    found: list[tuple[EntryKey, Path]] = []
    root = store.layout.artifacts
    for kind in ("models", "urls", "runs"):
        folder = root / kind
        if not folder.is_dir() or folder.is_symlink():
            continue
        for child in sorted(folder.iterdir()):
            if kind == "runs":
                if child.is_dir() and not child.is_symlink():
                    found.extend(_run_orphans(store, child, complete.get(child.name, set())))
                continue
            key = _key(kind, child.name)
            if key is not None and store.entry_path(key) == child and not store.manifest_path(key).exists():
                found.append((key, child))
    return found


def remove_orphans(store: ArtifactStore, min_age: float = ORPHAN_MIN_AGE) -> OrphanReport:
    """Remove trees without manifest (older than `min_age`, entry lock free) and manifests without
    files, each under its entry's lock."""
    report = OrphanReport()
    cutoff = time.time() - min_age
    for key, path in orphan_trees(store):
        try:
            if os.lstat(path).st_ctime > cutoff:
                report.kept += 1
                continue
            with store.lock(key, timeout=0):
                if not store.manifest_path(key).exists() and (path.exists() or path.is_symlink()):
                    store.discard_tree(path)
                    report.trees += 1
        except (LockTimeout, FileNotFoundError):
            report.kept += 1
    for listed, manifest in list(store.entries()):
        if listed is None or store.lookup_quiet(listed) is not None or isinstance(manifest, CorruptMetadata):
            continue
        try:
            with store.lock(listed, timeout=0):
                if store.lookup_quiet(listed) is None and store.manifest_path(listed).exists():
                    store.remove(listed)
                    report.manifests += 1
        except LockTimeout:
            report.kept += 1
    return report
