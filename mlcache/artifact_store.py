"""Artifact store: complete, verified, read-only entries under `artifacts/`, one manifest each.

The on-disk protocol alone keeps readers safe, with or without working locks: a pull stages into
a unique folder under `tmp/`, is verified against the remote listing and hashed, is renamed into
place, and only then is its manifest written. An entry is a hit only when its manifest exists, so
a process killed at any point leaves nothing that a later read mistakes for complete. The entry's
lock only keeps N readers from downloading the same thing N times.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from .errors import CorruptMetadata, MlcacheError
from .hashing import PullHasher, StagedFile, identity, sha256_file, sha256_files
from .layout import CacheLayout, decode_part, encode_part, write_atomic
from .locks import entry_lock
from .timeutil import utcnow
from .transfer import Listing

MANIFEST_VERSION = 1


class UnsafeArtifact(MlcacheError):
    """A pulled tree that holds links pointing outside it, or content that differs from its listing."""


@dataclass(frozen=True)
class EntryKey:
    """One cache entry: `("runs", (run_id, path_in_run))` or `("models", (model_id,))`."""

    kind: str
    parts: tuple[str, ...]

    @property
    def label(self) -> str:
        if self.kind == "runs":
            return f"runs:/{self.parts[0]}/{self.parts[1]}"
        return f"models:/{'/'.join(self.parts)}"


class ManifestFile(BaseModel):
    path: str
    size: int
    sha256: str


class Manifest(BaseModel):
    """What an entry holds and where it came from; written last, as the 'complete' marker."""

    version: int = MANIFEST_VERSION
    kind: str
    key: list[str]
    source: str
    is_dir: bool
    files: list[ManifestFile]
    size: int
    source_version: str
    pulled_at: datetime
    last_used: datetime


def _make_read_only(path: str, mode: int) -> None:
    """Drop the write bits of a regular file whose mode (from its scan) is `mode`."""
    if stat.S_ISREG(mode) and mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _link_or_copy(src: str, dst: str) -> str:
    """Hardlink when possible (same filesystem: no space, no time), else copy with metadata."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def remove_tree(path: Path) -> None:
    """Delete a file or tree of the cache (read-only files included) without following links."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def scan_tree(root: Path, is_dir: bool) -> dict[str, StagedFile]:
    """Relative POSIX path -> file of a staged tree; refuses links that leave the tree. Links to
    folders are not followed (as `os.walk`), links to files are listed."""
    if not is_dir:
        info = root.lstat()
        return {
            root.name: StagedFile(str(root), info.st_size, info.st_mode, stat.S_ISLNK(info.st_mode), identity(info))
        }
    files: dict[str, StagedFile] = {}
    top = root.resolve()

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if target != top and top not in target.parents:
                        raise UnsafeArtifact(f"link {rel} points outside the artifact ({os.readlink(entry.path)})")
                    if not target.exists():
                        raise UnsafeArtifact(f"link {rel} points to nothing ({os.readlink(entry.path)})")
                    if not target.is_dir():
                        info = entry.stat(follow_symlinks=False)
                        files[rel] = StagedFile(entry.path, target.stat().st_size, info.st_mode, True)
                elif entry.is_dir(follow_symlinks=False):
                    walk(entry.path, f"{rel}/")
                else:
                    info = entry.stat(follow_symlinks=False)
                    files[rel] = StagedFile(entry.path, info.st_size, info.st_mode, False, identity(info))

    walk(str(root), "")
    return files


class ArtifactStore:
    """Entries of one cache dir: lookups, atomic pulls, adoption of local trees, removal."""

    def __init__(self, layout: CacheLayout, lock_timeout: float = 600.0) -> None:
        self.layout = layout
        self.lock_timeout = lock_timeout

    # ----------------------------------------------------------------- paths
    def entry_path(self, key: EntryKey) -> Path:
        if key.kind == "runs":
            run_id, path_in_run = key.parts
            return self.layout.artifacts / "runs" / encode_part(run_id) / path_in_run
        return self.layout.artifacts.joinpath(key.kind, *(encode_part(p) for p in key.parts))

    def manifest_path(self, key: EntryKey) -> Path:
        *dirs, last = (encode_part(p) for p in key.parts)
        return self.layout.manifests.joinpath(key.kind, *dirs, f"{last}.json")

    def _used_path(self, key: EntryKey) -> Path:
        return self.manifest_path(key).with_suffix(".used")

    # ----------------------------------------------------------------- reads
    def lookup(self, key: EntryKey) -> Path | None:
        """The entry's path when complete (manifest present), touching its last-used stamp."""
        path = self.lookup_quiet(key)
        if path is not None:
            self._touch(key)
        return path

    def lookup_quiet(self, key: EntryKey) -> Path | None:
        """Like `lookup`, without touching the last-used stamp (for reports)."""
        path = self.entry_path(key)
        if self.manifest_path(key).exists() and (path.exists() or path.is_symlink()):
            return path
        return None

    def covering(self, key: EntryKey) -> tuple[EntryKey, Path] | None:
        """The complete entry holding `key`'s files (itself or, for runs, a parent path's entry) and
        the path of those files inside it."""
        if key.kind != "runs":
            hit = self.lookup(key)
            return (key, hit) if hit is not None else None
        run_id, path_in_run = key.parts
        parts = path_in_run.split("/")
        for depth in range(1, len(parts) + 1):
            outer = EntryKey("runs", (run_id, "/".join(parts[:depth])))
            hit = self.lookup(outer)
            if hit is not None:
                inner = hit.joinpath(*parts[depth:])
                if inner.exists():
                    return outer, inner
        return None

    def read_manifest(self, key: EntryKey) -> Manifest | None:
        path = self.manifest_path(key)
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            raise CorruptMetadata(path, f"not a valid manifest: {exc.errors()[0]['msg']}") from exc

    def last_used(self, key: EntryKey, manifest: Manifest) -> datetime:
        try:
            stamp = datetime.fromtimestamp(self._used_path(key).stat().st_mtime, tz=manifest.last_used.tzinfo)
        except FileNotFoundError:
            return manifest.last_used
        return max(stamp, manifest.last_used)

    def _touch(self, key: EntryKey) -> None:
        """Best effort: a read-only cache simply keeps its old stamp."""
        stamp = self._used_path(key)
        with contextlib.suppress(OSError):
            try:
                os.utime(stamp)
            except FileNotFoundError:
                stamp.touch()

    def entries(self) -> Iterator[tuple[EntryKey, Manifest | CorruptMetadata]]:
        """Every manifest of the cache (bad ones as the error that names them)."""
        if not self.layout.manifests.is_dir():
            return
        for path in sorted(self.layout.manifests.rglob("*.json")):
            rel = path.relative_to(self.layout.manifests)
            kind = rel.parts[0]
            parts = tuple(decode_part(p) for p in (*rel.parts[1:-1], rel.name[: -len(".json")]))
            key = EntryKey(kind, parts)
            try:
                manifest = self.read_manifest(key)
            except CorruptMetadata as exc:
                yield key, exc
                continue
            if manifest is not None:
                yield key, manifest

    # ----------------------------------------------------------------- writes
    def lock(self, key: EntryKey) -> AbstractContextManager[None]:
        self.layout.ensure()
        return entry_lock(self.layout, "artifacts", key.kind, *key.parts, timeout=self.lock_timeout)

    def new_stage(self, prefix: str) -> Path:
        self.layout.ensure()
        stage = self.layout.tmp / f"{prefix}-{uuid.uuid4().hex}"
        stage.mkdir(parents=True)
        return stage

    def pull(
        self,
        key: EntryKey,
        fetch: Callable[[Path, Callable[[str], None]], None],
        list_source: Callable[[], Listing],
        replace: bool = False,
    ) -> Path:
        """Stage with `fetch(stage_dir, on_file)` while `list_source()` lists the remote, verify the
        staged tree against that listing, hash, rename into place, write the manifest. Files reported
        through `on_file` are hashed while the rest still downloads. The caller holds the entry's
        lock; `replace` re-syncs a complete entry."""
        stage = self.new_stage("pull")
        with ThreadPoolExecutor(max_workers=1) as lister:
            hasher = PullHasher(stage)
            try:
                listed = lister.submit(list_source)
                try:
                    fetch(stage, hasher.on_file)
                finally:
                    listing = listed.result()
                produced = stage if listing.is_dir else stage / listing.files[0].path
                if not (produced.exists() or produced.is_symlink()):
                    raise UnsafeArtifact(f"pulling {listing.url} produced nothing")
                files = scan_tree(produced, listing.is_dir)
                expected = {f.path: f.size for f in listing.files}
                got = {rel: staged.size for rel, staged in files.items()}
                if got != expected:
                    missing = sorted(set(expected) - set(got))[:3]
                    extra = sorted(set(got) - set(expected))[:3]
                    wrong = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])[:3]
                    raise UnsafeArtifact(
                        f"pulled {listing.url} differs from its listing (missing {missing}, extra {extra}, "
                        f"size {wrong})"
                    )
                known = hasher.digests(files)
                return self._commit(key, produced, files, listing.url, listing.version(), replace, known)
            finally:
                hasher.close()
                remove_tree(stage)

    def adopt(self, key: EntryKey, src: Path, source_url: str, source_version: str, move: bool) -> Path:
        """Make a local file or tree a complete entry (after an upload), by move or copy."""
        stage = self.new_stage("adopt")
        try:
            produced = stage / (src.name or "artifact")
            if move:
                shutil.move(str(src), produced)
            elif src.is_dir():
                shutil.copytree(src, produced, symlinks=True)
            else:
                shutil.copy2(src, produced)
            files = scan_tree(produced, produced.is_dir())
            return self._commit(key, produced, files, source_url, source_version, replace=True)
        finally:
            remove_tree(stage)

    def _commit(
        self,
        key: EntryKey,
        produced: Path,
        files: dict[str, StagedFile],
        source: str,
        version: str,
        replace: bool,
        known: dict[str, str] | None = None,
    ) -> Path:
        digests = dict(known or {})
        digests.update(sha256_files({rel: f for rel, f in files.items() if rel not in digests}))
        for staged in files.values():
            if not staged.is_link:
                _make_read_only(staged.path, staged.mode)
        now = utcnow()
        manifest = Manifest(
            kind=key.kind,
            key=list(key.parts),
            source=source,
            is_dir=produced.is_dir(),
            files=[ManifestFile(path=rel, size=f.size, sha256=digests[rel]) for rel, f in sorted(files.items())],
            size=sum(f.size for f in files.values()),
            source_version=version,
            pulled_at=now,
            last_used=now,
        )
        return self.install(key, produced, manifest, replace)

    def install(self, key: EntryKey, produced: Path, manifest: Manifest, replace: bool = False) -> Path:
        """Rename a verified tree into place, then write its manifest. Unless `replace`, a complete
        entry another process finished meanwhile is kept; a leftover without manifest is replaced."""
        target = self.entry_path(key)
        if self.manifest_path(key).exists() and (target.exists() or target.is_symlink()):
            if not replace:
                return target
            self.manifest_path(key).unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            aside = self.layout.tmp / f"old-{uuid.uuid4().hex}"
            os.replace(target, aside)
            remove_tree(aside)
        os.replace(produced, target)
        write_atomic(self.manifest_path(key), manifest.model_dump_json(indent=1).encode(), self.layout.tmp)
        self._used_path(key).touch()
        return target

    def export_entry(self, key: EntryKey, target: ArtifactStore) -> Path:
        """Copy a complete entry into another cache dir: hardlinks on the same filesystem, else copies."""
        manifest = self.read_manifest(key)
        source = self.lookup(key)
        if manifest is None or source is None:
            raise MlcacheError(f"{key.label} is not complete in the cache at {self.layout.root}")
        with target.lock(key):
            if target.lookup(key) is not None:
                return target.entry_path(key)
            stage = target.new_stage("export")
            try:
                produced = stage / source.name
                if source.is_dir():
                    shutil.copytree(source, produced, symlinks=True, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(source), str(produced))
                return target.install(key, produced, manifest)
            finally:
                remove_tree(stage)

    def remove(self, key: EntryKey) -> bool:
        """Drop an entry: manifest first (no longer a hit), then its files. The caller holds the lock."""
        manifest = self.manifest_path(key)
        existed = manifest.exists()
        manifest.unlink(missing_ok=True)
        self._used_path(key).unlink(missing_ok=True)
        target = self.entry_path(key)
        if target.exists() or target.is_symlink():
            aside = self.layout.tmp / f"old-{uuid.uuid4().hex}"
            os.replace(target, aside)
            remove_tree(aside)
            existed = True
        return existed

    def verify(self, key: EntryKey, manifest: Manifest) -> list[str]:
        """Problems of one entry: missing, resized or changed files (empty when intact)."""
        root = self.entry_path(key)
        problems = []
        for item in manifest.files:
            path = root.joinpath(*item.path.split("/")) if manifest.is_dir else root
            if not path.exists():
                problems.append(f"{path}: missing")
            elif path.stat().st_size != item.size:
                problems.append(f"{path}: size {path.stat().st_size} != {item.size}")
            elif sha256_file(path) != item.sha256:
                problems.append(f"{path}: sha256 differs")
        return problems
