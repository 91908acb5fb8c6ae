"""Content-addressed blobs: each distinct file of the cache stored once, under its sha256.

On-disk protocol (no lock is needed for any of it):
- `blobs/sha256/<2 hex>/<62 hex>` is a read-only regular file whose bytes hash to its name. It is
  only ever made from a staged file that was hashed, by `os.link(staged, blob)`; when the blob
  exists already, the staged file is replaced by a link to it (linked to a temp name in the stage,
  then renamed over), so an entry installed from a stage shares the blob's inode.
- A blob's link count is its reference count: the blob's own name plus one per entry or staged
  file holding it. Entries never need the blob's name to stay valid (they hold the inode), so no
  reader can be hurt by a blob's removal; the name only lets later pulls share the bytes.
- `collect` (gc, prune) removes a blob only at link count 1: it first renames it into a private
  stage (the name disappears at once, so a pull that links it afterwards fails and downloads
  instead), checks the count again there, and puts it back if a pull linked it meanwhile.
- `blobs/store/` holds packs of hints mapping a store's own hash of a file to the sha256 of the
  blob it was downloaded as (`blob_hints` states their protocol); a match is used only when that
  blob is held with the same size.

Where hardlinks cannot be made (another filesystem, no link support), entries hold their own
copies and `can_link` says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .blob_hints import SHA256, Hints, StoreHashHints
from .layout import CacheLayout
from .manifest import STORE_HASH
from .staging import Stage

_NO_LINKS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}
_ADOPT_ATTEMPTS = 8
"""How often `adopt` tries again when a collector takes the blob it found between two of its looks."""


@dataclass(frozen=True)
class CollectReport:
    """What one collection of unreferenced blobs removed, and what it kept because a pull linked it."""

    removed: int = 0
    freed: int = 0
    kept: int = 0


class BlobFolders:
    """The blob folders the files of one tree are linked into, checked before every link as
    `CacheLayout.guard` checks them (each folder from the cache's root down a real folder, never a
    link), in one `lstat` per folder on plain strings; a folder missing or in the way goes to
    `guarded_dir`, which makes it or says what is in the way."""

    def __init__(self, store: BlobStore) -> None:
        self._layout = store.layout
        self._base = store.sha256_root
        self._above = (str(store.root), self._base)

    def blob_path(self, digest: str) -> str:
        """Where the blob of `digest` goes (a checked 64-hex digest), once its folder is there and
        every folder on the way to it was found to be a real one."""
        folder = f"{self._base}/{digest[:2]}"
        try:
            for step in (*self._above, folder):
                if not stat.S_ISDIR(os.lstat(step).st_mode):
                    break
            else:
                return f"{folder}/{digest[2:]}"
        except FileNotFoundError:
            pass
        self._layout.guarded_dir(Path(folder))
        return f"{folder}/{digest[2:]}"


class BlobStore:
    """The blobs of one cache dir (or bundle folder)."""

    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout
        self.root = layout.root / "blobs"
        self.sha256_root = str(self.root / "sha256")
        """`blobs/sha256` as a string, the folder every blob's own folder is in."""
        self._linkable: bool | None = None
        self.hints = StoreHashHints(layout, self.root)

    def path(self, digest: str) -> Path:
        """Where the blob of `digest` lives; `digest` must be 64 lowercase hex digits."""
        if not SHA256.fullmatch(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return Path(f"{self.sha256_root}/{digest[:2]}/{digest[2:]}")

    def held(self, digest: str, size: int) -> Path | None:
        """The blob of `digest` when it exists as a regular file of `size` bytes (never a link)."""
        path = self.path(digest)
        try:
            info = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return path if stat.S_ISREG(info.st_mode) and info.st_size == size else None

    def can_link(self) -> bool:
        """Whether entries can be hardlinks into the blobs here (probed once, in `tmp/`)."""
        if self._linkable is None:
            self.layout.ensure()
            probe = self.layout.tmp / f"link-probe-{uuid.uuid4().hex}"
            try:
                probe.write_bytes(b"")
                self.layout.guarded_dir(self.root)
                twin = self.root / f".probe-{uuid.uuid4().hex}"
                os.link(probe, twin)
                twin.unlink()
                self._linkable = True
            except OSError:
                self._linkable = False
            finally:
                probe.unlink(missing_ok=True)
        return self._linkable

    def adopt(self, staged: Path, digest: str, size: int, folders: BlobFolders | None = None) -> bool:
        """Make the hashed, read-only staged file `staged` share the blob of `digest`: it becomes the
        blob, or is replaced by a link to the blob already held. A collector may take that blob
        between two looks (the name is then free, and the staged file becomes the blob). False when
        links cannot be made here, or something that is not this blob holds its name (the staged
        file is then left as it is). `folders` checks the blob folders for the files of one tree."""
        blob = self.path(digest)
        for _ in range(_ADOPT_ATTEMPTS):
            try:
                if folders is None:
                    self.layout.guarded_dir(blob.parent)
                    os.link(staged, blob)
                else:
                    os.link(staged, folders.blob_path(digest))
                return True
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno in _NO_LINKS:
                    self._linkable = False
                    return False
                raise
            held = self.held(digest, size)
            if held is None:
                if os.path.lexists(blob):
                    return False  # something that is not this blob holds its name: keep the copy
                continue  # a collector took the blob since the link was refused: its name is free
            twin = staged.with_name(f".{uuid.uuid4().hex}.blob")
            try:
                if os.path.samestat(os.stat(held), os.lstat(staged)):
                    return True
                os.link(held, twin)
            except FileNotFoundError:
                continue  # a collector took the blob between the two looks: its name is free
            except OSError as exc:
                if exc.errno in _NO_LINKS:
                    return False  # another user's blob this user may not link (protected_hardlinks): keep the copy
                raise
            os.replace(twin, staged)
            return True
        return False

    def link_into(self, digest: str, size: int, dest: Path) -> bool:
        """Hardlink the held blob of `digest` at `dest` (a new file in a stage); False when no such
        blob is held any more (a collector took it), so the caller downloads the file instead."""
        blob = self.held(digest, size)
        if blob is None:
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(blob, dest)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in _NO_LINKS:
                self._linkable = False
                return False
            raise
        return True

    # ----------------------------------------------------------------- store hashes
    def remember_many(self, items: Iterable[tuple[str, int, str]]) -> None:
        """Record, as one pack, that the files a store hashes as `store_hash` (of `size` bytes) are
        the blobs of the digests given: (store hash, size, sha256) each."""
        self.hints.record(
            {(h, size): digest for h, size, digest in items if STORE_HASH.fullmatch(h) and SHA256.fullmatch(digest)}
        )

    def store_hashes(self) -> Hints:
        """Every recorded hint, read from the packs present now (for a pull to look its files up in)."""
        return self.hints.load()

    def by_store_hash(self, store_hash: str, size: int, hints: Hints | None = None) -> str | None:
        """The sha256 of the held blob a store hash was recorded for, when that blob is still held."""
        digest = (self.store_hashes() if hints is None else hints).get((store_hash, size))
        return digest if digest is not None and self.held(digest, size) is not None else None

    def has_hints(self) -> bool:
        """Whether any store hash is recorded (else a pull need not list before it downloads)."""
        return self.hints.any()

    # ----------------------------------------------------------------- collection
    def all(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        """Every blob: digest, path and `lstat`; names that are not blob names are skipped."""
        top = self.root / "sha256"
        if not top.is_dir() or top.is_symlink():
            return
        for folder in sorted(top.iterdir()):
            if len(folder.name) != 2 or folder.is_symlink() or not folder.is_dir():
                continue
            for item in sorted(folder.iterdir()):
                digest = folder.name + item.name
                if not SHA256.fullmatch(digest):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    yield digest, item, item.lstat()

    def collect(self, digests: list[str] | None = None) -> CollectReport:
        """Remove the blobs (all, or those of `digests`) that nothing links any more, by the
        rename-then-recheck protocol of this module; hints whose blob is gone go too."""
        if digests is None:
            candidates = [(d, p, i) for d, p, i in self.all() if stat.S_ISREG(i.st_mode) and i.st_nlink == 1]
        else:
            candidates = []
            for digest in sorted(set(digests)):
                path = self.path(digest)
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                        candidates.append((digest, path, info))
        removed = freed = kept = 0
        if candidates:
            with Stage(self.layout, "gc") as aside:
                for digest, path, info in candidates:
                    doomed = aside / digest
                    try:
                        os.rename(self.layout.guard(path), doomed)
                    except FileNotFoundError:
                        continue
                    if os.lstat(doomed).st_nlink > 1:
                        with contextlib.suppress(FileExistsError):
                            os.link(doomed, path)
                        kept += 1
                    else:
                        removed += 1
                        freed += info.st_size
                    doomed.unlink()
        if digests is None:
            self._drop_stale_hints()
        return CollectReport(removed, freed, kept)

    def _drop_stale_hints(self) -> None:
        self.hints.prune(lambda digest, size: self.held(digest, size) is not None)
