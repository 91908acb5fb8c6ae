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
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError

from .blobs import BlobFolders, BlobStore
from .errors import CorruptMetadata
from .hashing import StagedFile, sha256_files
from .layout import CacheLayout, read_regular, write_atomic, writing
from .locks import entry_lock, hold_shared, shared_entry_lock
from .manifest import EntryKey, Manifest, ManifestFile
from .names import UnsafePath, decode_part, file_name
from .pull_pipeline import Fetch, pull_entry
from .staged_tree import make_read_only, scan_tree
from .staging import Stage
from .timeutil import utcnow
from .transfer import Listing

TOUCH_INTERVAL = 60.0
"""Seconds between two writes of an entry's last-used stamp by one process."""
PATH_MEMO_LIMIT = 100_000
"""How many entries' paths (and stamps) a store remembers before it starts over."""


class ArtifactStore:
    """Entries of one cache dir: lookups, atomic pulls, adoption of local trees, removal."""

    def __init__(self, layout: CacheLayout, lock_timeout: float = 600.0) -> None:
        self.layout = layout
        self.lock_timeout = lock_timeout
        self.blobs = BlobStore(layout)
        self._paths: dict[EntryKey, tuple[Path, Path]] = {}
        self._touched: dict[EntryKey, float] = {}
        self._outer: dict[EntryKey, tuple[tuple[EntryKey, tuple[str, ...]], ...]] = {}

    # ----------------------------------------------------------------- paths
    def _paths_of(self, key: EntryKey) -> tuple[Path, Path]:
        """The entry's files and its manifest, worked out once per key."""
        found = self._paths.get(key)
        if found is None:
            if len(self._paths) >= PATH_MEMO_LIMIT:
                self._paths.clear()
            found = self._paths[key] = (self._entry_path(key), self._manifest_path(key))
        return found

    def entry_path(self, key: EntryKey) -> Path:
        """`artifacts/runs/<run_id>/<path_in_run>` (the path as in the run), else
        `artifacts/<kind>/<part>`; keys are validated when made, so this stays inside the cache."""
        return self._paths_of(key)[0]

    def manifest_path(self, key: EntryKey) -> Path:
        """`manifests/<kind>/<part>/.../<last>.json`, each part one file name (`names.file_name`)."""
        return self._paths_of(key)[1]

    def _entry_path(self, key: EntryKey) -> Path:
        if key.kind == "runs":
            run_id, path_in_run = key.parts
            return self.layout.artifacts.joinpath("runs", file_name(run_id), *path_in_run.split("/"))
        return self.layout.artifacts.joinpath(key.kind, *(file_name(p) for p in key.parts))

    def _manifest_path(self, key: EntryKey) -> Path:
        *dirs, last = (file_name(p) for p in key.parts)
        return self.layout.manifests.joinpath(key.kind, *dirs, f"{last}.json")

    def _used_path(self, key: EntryKey) -> Path:
        return self.manifest_path(key).with_suffix(".used")

    def _pin_path(self, key: EntryKey) -> Path:
        return self.manifest_path(key).with_suffix(".pin")

    # ----------------------------------------------------------------- pins
    def pin(self, key: EntryKey) -> None:
        """Keep the entry through every prune, across processes, until `unpin` or its removal."""
        self.layout.ensure()
        write_atomic(self.layout.guard(self._pin_path(key)), b"pinned\n", self.layout.tmp)

    def unpin(self, key: EntryKey) -> bool:
        """Drop the entry's pin; True when it was pinned."""
        pin = self.layout.guard(self._pin_path(key))
        existed = pin.is_file()
        pin.unlink(missing_ok=True)
        return existed

    def pinned(self, key: EntryKey) -> bool:
        return self._pin_path(key).is_file()

    # ----------------------------------------------------------------- reads
    def lookup(self, key: EntryKey) -> Path | None:
        """The entry's path when complete (manifest present), touching its last-used stamp."""
        path = self.lookup_quiet(key)
        if path is not None:
            self._touch(key)
        return path

    def lookup_quiet(self, key: EntryKey) -> Path | None:
        """Like `lookup`, without touching the last-used stamp (for reports)."""
        path, manifest = self._paths_of(key)
        try:
            os.stat(manifest)
            os.lstat(path)
        except (OSError, ValueError):
            return None
        return path

    def covering(self, key: EntryKey, touch: bool = True) -> tuple[EntryKey, Path] | None:
        """The complete entry holding `key`'s files (itself or, for runs, a parent path's entry) and
        the path of those files inside it; `touch=False` for reports, which are no use."""
        look = self.lookup if touch else self.lookup_quiet
        for outer, rest in self._outer_keys(key):
            hit = look(outer)
            if hit is None:
                continue
            if not rest:
                return outer, hit
            inner = hit.joinpath(*rest)
            if inner.exists():
                return outer, inner
        return None

    def _outer_keys(self, key: EntryKey) -> tuple[tuple[EntryKey, tuple[str, ...]], ...]:
        """The entries that may hold `key`'s files, outermost first, each with the path below it."""
        found = self._outer.get(key)
        if found is not None:
            return found
        if key.kind != "runs":
            found = ((key, ()),)
        else:
            run_id, path_in_run = key.parts
            parts = path_in_run.split("/")
            found = tuple(
                (EntryKey("runs", (run_id, "/".join(parts[:depth]))), tuple(parts[depth:]))
                for depth in range(1, len(parts) + 1)
            )
        if len(self._outer) >= PATH_MEMO_LIMIT:
            self._outer.clear()
        self._outer[key] = found
        return found

    def read_manifest(self, key: EntryKey) -> Manifest | None:
        """The entry's manifest, None when absent; `CorruptMetadata` when it is not a valid manifest
        of this very entry."""
        return self._load_manifest(self.manifest_path(key))

    def _load_manifest(self, path: Path) -> Manifest | None:
        read = read_regular(path)
        if read is None:
            return None
        try:
            manifest = Manifest.model_validate_json(read[0])
        except ValidationError as exc:
            raise CorruptMetadata(path, f"not a valid manifest: {exc.errors()[0]['msg']}") from exc
        try:
            expected = self.manifest_path(manifest.entry_key())
        except UnsafePath as exc:
            raise CorruptMetadata(path, f"names an unusable entry: {exc}") from exc
        if expected != path:
            raise CorruptMetadata(
                path, f"is the manifest of {manifest.entry_key().label}, whose manifest is {expected}"
            )
        return manifest

    def last_used(self, key: EntryKey) -> datetime:
        """When the entry was last read: its stamp's modification time, else its manifest's (the
        cache's own record; the dates written in a manifest are claims)."""
        for path in (self._used_path(key), self.manifest_path(key)):
            try:
                return datetime.fromtimestamp(path.lstat().st_mtime, tz=timezone.utc)
            except FileNotFoundError:
                continue
        return datetime.fromtimestamp(0, tz=timezone.utc)

    def _touch(self, key: EntryKey) -> None:
        """Stamp the entry used, at most once a minute per entry and process (a hit costs no write);
        best effort: a read-only cache simply keeps its old stamp."""
        now = time.monotonic()
        last = self._touched.get(key)
        if last is not None and now - last < TOUCH_INTERVAL:
            return
        if len(self._touched) >= PATH_MEMO_LIMIT:
            self._touched.clear()
        self._touched[key] = now
        stamp = self._used_path(key)
        with contextlib.suppress(OSError):
            try:
                os.utime(stamp, follow_symlinks=False)
            except FileNotFoundError:
                self.layout.guard(stamp).touch()

    def entries(self) -> Iterator[tuple[EntryKey | None, Manifest | CorruptMetadata]]:
        """Every manifest of the cache with the entry it describes; a bad one as the error naming
        it, with the entry its file name spells when that is a valid key (else None)."""
        self.layout.check_version()
        root = self.layout.manifests
        if not root.is_dir() or root.is_symlink():
            return
        for path in sorted(root.rglob("*.json")):
            try:
                manifest = self._load_manifest(path)
            except CorruptMetadata as exc:
                yield self._key_from_name(path), exc
                continue
            if manifest is not None:
                yield manifest.entry_key(), manifest

    def _key_from_name(self, path: Path) -> EntryKey | None:
        """The entry a manifest's file name spells (for a manifest too damaged to say), if any."""
        rel = path.relative_to(self.layout.manifests)
        names = (*rel.parts[1:-1], rel.name[: -len(".json")])
        parts = tuple(decode_part(name) for name in names)
        if len(rel.parts) < 2 or any(part is None for part in parts):
            return None
        try:
            key = EntryKey(rel.parts[0], parts)  # type: ignore[arg-type]
        except UnsafePath:
            return None
        return key if self.manifest_path(key) == path else None

    # ----------------------------------------------------------------- writes
    def lock(
        self, key: EntryKey, timeout: float | None = None, on_wait: Callable[[str | None], None] | None = None
    ) -> AbstractContextManager[None]:
        """The entry's exclusive lock (writers: pull, install, remove), within `timeout` seconds;
        `on_wait(holder)` is told when another process holds it first."""
        self.layout.ensure()
        wait = self.lock_timeout if timeout is None else timeout
        return entry_lock(self.layout, *self._lock_name(key), timeout=wait, on_wait=on_wait)

    def shared_lock(self, key: EntryKey, timeout: float) -> AbstractContextManager[None]:
        """The entry's shared lock, held by readers so that no prune or clean removes it meanwhile."""
        return shared_entry_lock(self.layout, *self._lock_name(key), timeout=timeout)

    def hold(self, key: EntryKey, timeout: float) -> None:
        """Hold the entry's shared lock until the process ends (`locks.release_holds`)."""
        hold_shared(self.layout, *self._lock_name(key), timeout=timeout)

    @staticmethod
    def _lock_name(key: EntryKey) -> tuple[str, ...]:
        return ("artifacts", key.kind, *key.parts)

    def new_stage(self, prefix: str) -> Stage:
        """A private, owner-locked folder under `tmp/` (see `staging`)."""
        return Stage(self.layout, prefix)

    def pull(self, key: EntryKey, fetch: Fetch, list_source: Callable[[], Listing], replace: bool = False) -> Path:
        """Stage with `fetch(tree, on_file, only, plan)` while `list_source()` lists the remote, verify
        the staged tree against that listing, hash, rename into place, write the manifest
        (`pull_pipeline`). When the cache knows store hashes, the listing comes first and every
        remote file whose (size, store hash) matches a held blob is linked instead of downloaded
        (`only` names the rest). Files reported through `on_file` are hashed while the rest still
        downloads. The caller holds the entry's lock; `replace` re-syncs a complete entry."""
        return pull_entry(self, key, fetch, list_source, replace)

    def adopt(self, key: EntryKey, src: Path, source_url: str, source_version: str, move: bool) -> Path:
        """Make a local file or tree a complete entry (after an upload), by move or copy."""
        with writing(self.layout.root, f"store {key.label}"), Stage(self.layout, "adopt") as stage:
            produced = stage / (src.name or "artifact")
            if move:
                shutil.move(str(src), produced)
            elif src.is_dir():
                shutil.copytree(src, produced, symlinks=True)
            else:
                shutil.copy2(src, produced)
            files = scan_tree(produced, produced.is_dir())
            return self.commit(key, produced, files, source_url, source_version, replace=True)

    def commit(
        self,
        key: EntryKey,
        produced: Path,
        files: dict[str, StagedFile],
        source: str,
        version: str,
        replace: bool,
        known: dict[str, str] | None = None,
        store_hashes: dict[str, str] | None = None,
        linked: frozenset[str] = frozenset(),
    ) -> Path:
        """Hash what is not hashed yet, make the files read-only, build the manifest and install (the
        last step of a pull or an adoption).
        `linked` files are hardlinks of held blobs already, found by their store hash: neither
        shared again nor remembered again."""
        digests = dict(known or {})
        hashes = store_hashes or {}
        digests.update(sha256_files({rel: f for rel, f in files.items() if rel not in digests}))
        for staged in files.values():
            if not staged.is_link:
                make_read_only(staged.path, staged.mode)
        now = utcnow()
        manifest = Manifest(
            kind=key.kind,
            key=list(key.parts),
            source=source,
            is_dir=produced.is_dir(),
            files=[
                ManifestFile(path=rel, size=f.size, sha256=digests[rel], store_hash=hashes.get(rel))
                for rel, f in sorted(files.items())
            ],
            size=sum(f.size for f in files.values()),
            source_version=version,
            pulled_at=now,
            last_used=now,
        )
        path = self.install(key, produced, manifest, replace, linked)
        self.blobs.remember_many(
            (item.store_hash, item.size, item.sha256)
            for item in manifest.files
            if item.store_hash and item.path not in linked and self.blobs.held(item.sha256, item.size) is not None
        )
        return path

    def install(
        self,
        key: EntryKey,
        produced: Path,
        manifest: Manifest,
        replace: bool = False,
        shared: frozenset[str] = frozenset(),
    ) -> Path:
        """Share the blobs of a verified tree (its files must hold the bytes its manifest names;
        those in `shared` are blob links already), rename it into place, then write its manifest.
        Unless `replace`, a complete entry another process finished meanwhile is kept; a leftover
        without manifest is replaced."""
        target = self.layout.guard(self.entry_path(key))
        manifest_path = self.layout.guard(self.manifest_path(key))
        replaced: list[str] = []
        if manifest_path.exists() and (target.exists() or target.is_symlink()):
            if not replace:
                return target
            with contextlib.suppress(CorruptMetadata):
                old = self.read_manifest(key)
                replaced = [item.sha256 for item in old.files] if old is not None else []
            manifest_path.unlink()
        self._share_blobs(produced, manifest, shared)
        target.parent.mkdir(parents=True, exist_ok=True)
        self.layout.guard(target)
        if target.exists() or target.is_symlink():
            self.discard_tree(target)
        os.replace(produced, target)
        write_atomic(manifest_path, manifest.model_dump_json(indent=1).encode(), self.layout.tmp)
        self.layout.guard(self._used_path(key)).touch()
        if replaced:
            self.blobs.collect(replaced)
        return target

    def _share_blobs(self, produced: Path, manifest: Manifest, shared: frozenset[str]) -> None:
        """Make each regular file of a verified tree a hardlink of its blob (where links work),
        but those in `shared`, which are already."""
        if not self.blobs.can_link():
            return
        folders = BlobFolders(self.blobs)
        for item in manifest.files:
            if item.path in shared:
                continue
            path = produced.joinpath(*item.path.split("/")) if manifest.is_dir else produced
            if not path.is_symlink() and not self.blobs.adopt(path, item.sha256, item.size, folders):
                return

    def discard_tree(self, path: Path) -> None:
        """Move a tree of the cache aside into a private stage, then delete it there: readers see it
        whole or gone, and a crash leaves it where a cleaner finds it."""
        with Stage(self.layout, "old") as aside:
            os.replace(self.layout.guard(path), aside / "old")

    def remove(self, key: EntryKey) -> bool:
        """Drop an entry: manifest first (no longer a hit), then its files (moved aside at once),
        then the blobs no other entry holds. A crash in between leaves a tree without manifest,
        which no read takes for a hit and `gc` removes. The caller holds the lock."""
        try:
            held = self.read_manifest(key)
        except CorruptMetadata:
            held = None
        manifest = self.layout.guard(self.manifest_path(key))
        existed = manifest.exists()
        manifest.unlink(missing_ok=True)
        self.layout.guard(self._used_path(key)).unlink(missing_ok=True)
        self.unpin(key)
        target = self.layout.guard(self.entry_path(key))
        if target.exists() or target.is_symlink():
            self.discard_tree(target)
            existed = True
        if held is not None:
            self.blobs.collect([item.sha256 for item in held.files])
        return existed
