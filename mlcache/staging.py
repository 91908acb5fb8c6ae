"""Staging under `tmp/`: private folders of one process, and the rule for removing leftovers.

Protocol: a process takes the lock `locks/tmp/<name>.lock` *before* it creates `tmp/<name>`, holds
it while it works there, removes the folder, then releases the lock. A cleaner removes
`tmp/<name>` only after taking that same lock itself (so its owner is gone: locks die with their
process, soft locks once stale); a temp item without a lock file (an atomic write's temp file)
only once it is older than the cleaner's age limit. No cleaner ever removes what a live process
is writing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
import uuid
from pathlib import Path
from types import TracebackType

from filelock import BaseFileLock, FileLock, SoftFileLock, Timeout

from .errors import LockTimeout
from .layout import CacheLayout
from .locks import entry_lock, lock_path

LOCKLESS_MIN_AGE = 600.0
"""Temp items that have no owner lock (atomic writes' temp files) are left alone this long."""


def remove_tree(path: Path, strict: bool = False) -> None:
    """Delete a file or tree of the cache (read-only files included) without following links;
    `strict` raises what prevented it (else it is best effort, for cleanups after a failure)."""
    if path.is_symlink() or path.is_file():
        if strict:
            path.unlink(missing_ok=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=not strict)


class Stage:
    """A private folder `tmp/<prefix>-<uuid>` held by this process until `close`. As a context
    manager it is removed on exit; `close(keep=True)` leaves it for the user (a cleaner may take it
    once this process is gone).

    With `resumable`, the folder is `tmp/<prefix>-<resumable>` instead (a name the caller derives
    from what it stages, so the next attempt finds it): what a dead owner left there is taken over
    when it is a folder of this user that no one else may write to (`resumed`), else removed. When
    another live process holds that name, a fresh unique folder is used."""

    def __init__(self, layout: CacheLayout, prefix: str, resumable: str | None = None) -> None:
        layout.ensure()
        self._layout = layout
        self.resumed = False
        if resumable is not None and self._take(f"{prefix}-{resumable}"):
            self.path = layout.guard(layout.tmp / self.name)
            try:
                self._take_over_or_make()
            except BaseException:
                self._release()
                raise
            return
        self._take(f"{prefix}-{uuid.uuid4().hex}", wait=True)
        self.path = layout.guard(layout.tmp / self.name)
        try:
            self.path.mkdir()
        except BaseException:
            self._release()
            raise

    def _take(self, name: str, wait: bool = False) -> bool:
        """Take the owner lock of `tmp/<name>`; False when another live process holds it."""
        self.name = name
        self._lock_file = lock_path(self._layout, "tmp", name)
        self._lock_file.parent.mkdir(parents=True, exist_ok=True)
        self._lock: BaseFileLock = (SoftFileLock if self._layout.soft_locks else FileLock)(
            str(self._lock_file), timeout=0
        )
        try:
            self._lock.acquire()
        except Timeout:
            if wait:
                raise
            return False
        return True

    def _take_over_or_make(self) -> None:
        try:
            info = self.path.lstat()
        except FileNotFoundError:
            self.path.mkdir(mode=0o700)
            return
        if stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077:
            self.resumed = True
            return
        remove_tree(self.path, strict=True)
        self.path.mkdir(mode=0o700)

    def close(self, keep: bool = False) -> None:
        if not keep:
            remove_tree(self.path)
        self._release()

    def _release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()
            with contextlib.suppress(OSError):
                self._lock_file.unlink()

    def __enter__(self) -> Path:
        return self.path

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def clean_tmp(layout: CacheLayout, older_than: float = 0.0) -> tuple[int, int]:
    """Remove leftovers in `tmp/` whose owner is gone (and, for lockless temp files, that are older
    than `max(older_than, LOCKLESS_MIN_AGE)`); returns (removed, left because still in use)."""
    tmp = layout.tmp
    if not tmp.is_dir() or tmp.is_symlink():
        return 0, 0
    removed = busy = 0
    lockless_cutoff = time.time() - max(older_than, LOCKLESS_MIN_AGE)
    cutoff = time.time() - older_than
    for item in sorted(tmp.iterdir()):
        try:
            info = item.lstat()
        except FileNotFoundError:
            continue
        if info.st_mtime > cutoff:
            busy += 1
            continue
        owner = lock_path(layout, "tmp", item.name)
        if not owner.exists():
            if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
                if info.st_mtime > lockless_cutoff:
                    busy += 1
                    continue
                remove_tree(item, strict=True)
            else:
                item.unlink(missing_ok=True)
            removed += 1
            continue
        try:
            with entry_lock(layout, "tmp", item.name, timeout=0):
                remove_tree(item, strict=True)
            removed += 1
            with contextlib.suppress(OSError):
                os.unlink(owner)
        except LockTimeout:
            busy += 1
    return removed, busy
