"""sha256 of staged files: one file, a whole staged tree, or a pull's files while it still runs.

A digest taken before a pull ends is only used for the final file when that file is provably the
one that was read: same device, inode, size and modification time for files hashed once reported;
for big files hashed while their transfer still checks them, the same pinned inode, with as many
bytes as were hashed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

Identity = tuple[int, int, int, int]
"""What identifies the bytes of a file on disk: device, inode, size, modification time (ns)."""

_BLOCK = 1 << 20
BIG_FILE = 4 * _BLOCK
"""Files from this size on are hashed on worker threads (hashlib releases the GIL on big blocks);
smaller ones cost more in thread hand-offs than in hashing, so one thread does them in turn."""


class StagedFile(NamedTuple):
    """One file of a staged tree, stat'ed once when the tree is scanned."""

    path: str
    size: int
    mode: int
    is_link: bool
    identity: Identity = (0, 0, 0, 0)


def identity(info: os.stat_result) -> Identity:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def sha256_file(path: Path | str) -> str:
    with open(path, "rb", buffering=0) as handle:
        return _sha256_counted(handle)[0]


def copy_hashed(src: Path | str, dst: Path | str) -> tuple[int, str]:
    """Copy the regular file `src` to a new file `dst` (never following links, never replacing a
    file) and return the size and sha256 of the bytes written, read once."""
    digest = hashlib.sha256()
    size = 0
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    source = os.open(src, os.O_RDONLY | nofollow)
    try:
        if not stat.S_ISREG(os.fstat(source).st_mode):
            raise OSError(f"{src} is not a regular file")
        target = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o644)
        try:
            while chunk := os.read(source, _BLOCK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(target, view) :]
                size += len(chunk)
        finally:
            os.close(target)
    finally:
        os.close(source)
    return size, digest.hexdigest()


def _sha256_counted(handle: BinaryIO) -> tuple[str, int]:
    """sha256 of an open unbuffered file from its start, and how many bytes it covers: one read
    when small, else 1 MiB blocks into one buffer."""
    if os.fstat(handle.fileno()).st_size <= _BLOCK:
        data = handle.readall()  # type: ignore[attr-defined]
        return hashlib.sha256(data).hexdigest(), len(data)
    digest = hashlib.sha256()
    buffer = bytearray(_BLOCK)
    view = memoryview(buffer)
    length = 0
    while size := handle.readinto(buffer):  # type: ignore[attr-defined]
        digest.update(view[:size])
        length += size
    return digest.hexdigest(), length


def _sha256_if_file(path: str) -> tuple[str, Identity] | None:
    """sha256 of a regular file (not a link) and the identity of what was read, or None when there
    is none at `path`. Plain descriptors: this runs once per small file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, _BLOCK):
            digest.update(chunk)
        return digest.hexdigest(), identity(os.fstat(fd))
    except OSError:
        return None
    finally:
        os.close(fd)


def sha256_files(files: Mapping[str, StagedFile]) -> dict[str, str]:
    """rel -> sha256 of staged files: big ones on two threads, small ones in turn on this one."""
    large = [rel for rel, f in files.items() if f.size >= BIG_FILE]
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashed = zip(large, pool.map(sha256_file, (files[rel].path for rel in large)), strict=True)
        digests = {rel: sha256_file(f.path) for rel, f in files.items() if f.size < BIG_FILE}
        digests.update(hashed)
    return digests


@dataclass(frozen=True)
class _EarlyHash:
    """A file hashed while its transfer still checks it. Its handle stays open until the pull ends,
    so the inode cannot be reused: the digest holds for the final file only if that is the same inode
    and the bytes hashed are as many as it holds (a write still under way when the transfer counted
    the file's bytes all read would leave it longer)."""

    handle: BinaryIO
    inode: tuple[int, int]
    digest: Future[tuple[str, int]]

    def matches(self, file: StagedFile) -> bool:
        info = os.lstat(file.path)
        return (info.st_dev, info.st_ino) == self.inode and self.digest.result()[1] == info.st_size


class _SmallFileHasher:
    """Hashes files of a staging folder in turn on one thread, as they are reported. The reader only
    appends to a list; the thread picks up what has piled up, so the two rarely contend for the GIL."""

    def __init__(self, root: Path) -> None:
        self._root = str(root)
        self._pending: list[str] = []
        self._results: dict[str, tuple[str, Identity] | None] = {}
        self._done = threading.Event()
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="mlcache-hash", daemon=True)
        self._starting = threading.Lock()

    def add(self, rel: str) -> None:
        """Hash `rel` in turn; the thread starts with the first file."""
        self._pending.append(rel)
        if self._thread.ident is None:
            with self._starting:
                if self._thread.ident is None and not self._done.is_set():
                    self._thread.start()

    def _run(self) -> None:
        while not self._cancelled:
            finished = self._done.is_set()
            batch, self._pending = self._pending, []
            for rel in batch:
                if self._cancelled:
                    return
                self._results[rel] = _sha256_if_file(os.path.join(self._root, rel))
            if finished and not self._pending:
                return
            if not batch:
                self._done.wait(0.01)

    def results(self) -> dict[str, tuple[str, Identity] | None]:
        """Every reported file's (sha256, identity), once all are hashed."""
        self._done.set()
        self._join()
        return self._results

    def cancel(self) -> None:
        self._cancelled = True
        self._done.set()
        self._join()

    def _join(self) -> None:
        with self._starting:
            started = self._thread.ident is not None
        if started:
            self._thread.join()


class PullHasher:
    """Hashes a pull's files while it runs; `on_file` is the transfer's callback. Small files are
    hashed in turn once reported, big ones as soon as their bytes are complete (`staged`). `close`
    (always, before the stage is removed) waits for running hashes and releases every pinned file."""

    def __init__(self, stage: Path) -> None:
        self._stage = stage
        self._small = _SmallFileHasher(stage)
        self._big = ThreadPoolExecutor(max_workers=2)
        self._reported: set[str] = set()
        self._early: dict[str, _EarlyHash] = {}
        self._given: dict[str, tuple[str, Identity]] = {}

    def on_file(self, rel: str, staged: str | None = None, digest: str | None = None) -> None:
        if rel in self._reported or rel in self._early or rel in self._given:
            return
        if digest is not None:
            with contextlib.suppress(OSError):
                self._given[rel] = (digest, identity(os.lstat(self._stage / rel)))
            return
        if staged is None:
            self._reported.add(rel)
            self._small.add(rel)
            return
        try:
            handle = open(self._stage / staged, "rb", buffering=0)  # noqa: SIM115 (closed by `close`)
        except OSError:
            return
        info = os.fstat(handle.fileno())
        self._early[rel] = _EarlyHash(handle, (info.st_dev, info.st_ino), self._big.submit(_sha256_counted, handle))

    def digests(self, files: Mapping[str, StagedFile]) -> dict[str, str]:
        """rel -> sha256 of the final staged files whose bytes are provably the ones hashed."""
        known = {
            rel: done[0]
            for rel, done in (*self._small.results().items(), *self._given.items())
            if rel in files and done is not None and done[1] == files[rel].identity
        }
        known.update(
            (rel, hashed.digest.result()[0])
            for rel, hashed in self._early.items()
            if rel in files and rel not in known and hashed.matches(files[rel])
        )
        return known

    def close(self) -> None:
        self._small.cancel()
        for hashed in self._early.values():
            if not hashed.digest.cancel():
                hashed.digest.exception()  # a running hash still reads the handle: let it end first
            hashed.handle.close()
        self._big.shutdown(wait=True)
