"""The on-disk cache layout: where everything lives, and the marker files of a cache dir."""

from __future__ import annotations

import errno
import functools
import json
import os
import stat
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from .durability import one_sync_for, sync_filesystem
from .errors import CacheNotWritable, CorruptMetadata, IncompatibleCache, MlcacheError
from .names import UnsafePath

LAYOUT_VERSION = 2
"""2: files of complete entries may be hardlinks into `blobs/`. Version 1 (entries are copies) is
read and written as it is: its marker is raised to 2 on the first write, and its entries stay
valid copies until they are pulled again."""
READABLE_VERSIONS = (1, 2)
_T = TypeVar("_T")

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by mlcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


SYNC_WORKERS = 16
"""Files made durable side by side by `write_atomic_many`: the filesystem commits fsyncs that
arrive together in one journal transaction, where one after the other each pays its own."""


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _write_temps(jobs: list[tuple[Path, bytes]], durable: bool) -> None:
    """Each temp file created (never an existing one) and written whole with bare descriptor
    calls: a buffered `open` adds an fstat and an ioctl per file, and each call it makes gives the
    interpreter lock up and waits to take it back beside a busy thread."""
    for tmp, data in jobs:
        fd = os.open(tmp, _NEW_FILE, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_files(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _side_by_side(work: Callable[[list[_T]], None], items: list[_T]) -> None:
    """`work` on `SYNC_WORKERS` interleaved slices of `items` at once, so their fsyncs arrive together."""
    workers = min(SYNC_WORKERS, len(items))
    with ThreadPoolExecutor(workers, thread_name_prefix="mlcache-sync") as pool:
        list(pool.map(work, (items[i::workers] for i in range(workers))))


def write_atomic(path: Path, data: bytes, tmp_dir: Path, durable: bool = True) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one;
    `durable=False` skips the fsync, for files whose loss in a power cut costs nothing but time."""
    write_atomic_many([(path, data)], tmp_dir, durable)


def write_atomic_many(files: Sequence[tuple[Path, bytes]], tmp_dir: Path, durable: bool = True) -> None:
    """`write_atomic` of several files: each written to a temp file, all of them made durable
    together (one filesystem sync for a large batch, `durability.one_sync_for`; else an fsync
    each, side by side), then each renamed into place in the order given. A process killed at
    any point leaves every one of them whole, old or new."""
    if not files:
        return
    tmp_dir.mkdir(parents=True, exist_ok=True)
    temps = [tmp_dir / f"{path.name[:40]}.{uuid.uuid4().hex}.tmp" for path, _ in files]
    try:
        jobs = [(tmp, data) for tmp, (_, data) in zip(temps, files, strict=True)]
        if durable and one_sync_for(len(jobs)):
            _write_temps(jobs, False)
            if not sync_filesystem(tmp_dir):
                _side_by_side(_fsync_files, temps)
        elif not durable or len(jobs) == 1:
            _write_temps(jobs, durable)
        else:
            _side_by_side(functools.partial(_write_temps, durable=True), jobs)
        made: set[Path] = set()
        for tmp, (path, _) in zip(temps, files, strict=True):
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def writing(root: Path, what: str) -> Iterator[None]:
    """Turn a full disk or a read-only cache met while doing `what` into one `CacheNotWritable`
    saying so and what to do; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, MlcacheError) or exc.errno not in _FULL | _READ_ONLY:
            raise
        if exc.errno in _FULL:
            raise CacheNotWritable(
                exc.errno,
                f"cannot {what}: no space left on the filesystem of {root}; free some space "
                "(`mlcache prune --max-size SIZE`, `mlcache clean`) and try again",
            ) from exc
        raise CacheNotWritable(
            exc.errno,
            f"cannot {what}: {root} is not writable ({exc.strerror}); use a writable cache dir "
            "(--cache-dir / MLCACHE_CACHE_DIR), or read it with --offline",
        ) from exc


def read_regular(path: Path, limit: int = 256 << 20) -> tuple[bytes, int] | None:
    """The bytes and modification time (ns) of a small file mlcache wrote (a document, a manifest),
    None when absent. Links are not followed; anything but a regular file of at most `limit` bytes
    is `CorruptMetadata` naming it."""
    read = read_regular_identified(path, limit)
    return None if read is None else (read[0], read[1][3])


FileIdentity = tuple[int, int, int, int, int]
"""(device, inode, size, mtime ns, ctime ns) of a file: the same identity means the same bytes for a
file that is only ever replaced by rename, as mlcache replaces what it writes."""


def identity_of(info: os.stat_result) -> FileIdentity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def regular_identity(path: Path) -> FileIdentity | None:
    """The identity of a regular file at `path` (links not followed); None for anything else."""
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return identity_of(info) if stat.S_ISREG(info.st_mode) else None


def read_regular_identified(path: Path, limit: int = 256 << 20) -> tuple[bytes, FileIdentity] | None:
    """`read_regular`, with the identity of the very file the bytes were read from."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CorruptMetadata(path, f"cannot be read ({exc.strerror or exc})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptMetadata(path, "is not a regular file")
        if info.st_size > limit:
            raise CorruptMetadata(path, f"is {info.st_size} bytes, more than a file of this kind can be ({limit})")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limit + 1), identity_of(info)
    finally:
        os.close(fd)


def _marked_version(marker: Path) -> object:
    try:
        return json.loads(marker.read_bytes()[:4096]).get("version")
    except (OSError, ValueError, AttributeError):
        return None


class CacheLayout:
    """Paths of one cache dir (or bundle); creates its skeleton only when first written to."""

    def __init__(self, root: Path | str, soft_locks: bool = False, stale_lock_age: float = 900.0) -> None:
        self.root = Path(root).expanduser().absolute()
        self.soft_locks = soft_locks
        self.stale_lock_age = stale_lock_age
        self.metadata = self.root / "metadata"
        self.blobs = self.root / "blobs"
        self.artifacts = self.root / "artifacts"
        self.manifests = self.root / "manifests"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self._ready = False
        self._version_checked = False

    def __repr__(self) -> str:
        return f"CacheLayout({str(self.root)!r})"

    def check_version(self) -> None:
        """Refuse a cache written in another layout version, for reads and writes alike (checked
        once per layout object; a cache without marker is new, or a bundle of this version)."""
        if self._version_checked:
            return
        marker = self.root / "layout.json"
        try:
            found = json.loads(marker.read_bytes()[:4096])["version"]
        except (FileNotFoundError, NotADirectoryError):
            self._version_checked = True
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IncompatibleCache(
                f'malformed cache file {marker} ({exc}); it should hold {{"version": {LAYOUT_VERSION}}}'
            ) from exc
        if found not in READABLE_VERSIONS or isinstance(found, bool):
            raise IncompatibleCache(
                f"cache at {self.root} has layout version {found!r}; this mlcache reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}: "
                "use the mlcache release that wrote it, or point cache_dir (MLCACHE_CACHE_DIR) at another folder"
            )
        self._version_checked = True

    def guard(self, path: Path) -> Path:
        """`path`, once checked to lie inside the cache with every existing folder between the root
        and it a real folder (not a link): mlcache never writes, renames or deletes through a link
        someone planted in a shared cache."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            raise UnsafePath(f"{path} is outside the cache at {self.root}; refusing to touch it") from None
        node = self.root
        for part in rel.parts[:-1]:
            if part in ("", ".", ".."):
                raise UnsafePath(f"{path} climbs out of the cache at {self.root}; refusing to touch it")
            node = node / part
            try:
                info = os.lstat(node)
            except FileNotFoundError:
                break
            if not stat.S_ISDIR(info.st_mode):
                raise UnsafePath(
                    f"{node} is a link or a file where mlcache keeps its own folder; refusing to write through it "
                    "(remove it, or point cache_dir at another folder)"
                )
        return path

    def guarded_dir(self, folder: Path) -> None:
        """Make `folder` of the cache (and the folders above it), once `guard` has found no link on
        the way there."""
        self.guard(folder / "x")
        folder.mkdir(parents=True, exist_ok=True)

    def ensure(self) -> None:
        """Create the skeleton (tag, layout version, folders) before the first write."""
        if self._ready:
            return
        self.check_version()
        for folder in (self.metadata, self.artifacts, self.manifests, self.tmp, self.locks):
            folder.mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            write_atomic(tag, CACHEDIR_TAG.encode(), self.tmp)
        marker = self.root / "layout.json"
        if _marked_version(marker) != LAYOUT_VERSION:
            write_atomic(marker, json.dumps({"version": LAYOUT_VERSION}).encode(), self.tmp)
        self._ready = True
