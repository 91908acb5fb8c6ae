"""Per-entry locks under `locks/`: real mutual exclusion between writers (filelock).

Locks only prevent doing the same work twice; correctness comes from the on-disk protocol
(stage, rename into place). Two modes:
- `os` (default): OS file locks (`fcntl`); they die with their process, so a crash never blocks
  others. Right for local disks and for network filesystems whose locking works (NFSv4, most SMB).
- `soft` (`lock_mode="soft"` or `MLCACHE_LOCK_MODE=soft`): the existence of the lock file is the
  lock, for filesystems where OS locks silently do nothing. A lock file left by a crashed process
  is broken once it is older than the layout's `stale_lock_age`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from .errors import LockTimeout
from .layout import CacheLayout
from .names import file_name


def _is_stale(path: Path, max_age: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > max_age
    except FileNotFoundError:
        return True


def lock_path(layout: CacheLayout, *parts: str) -> Path:
    """The lock file of one entry, never inside an artifact or metadata tree; each part is one
    file name (`names.file_name`), so long names and paths get short lock names."""
    *dirs, last = (file_name(p, "lock name") for p in parts)
    return layout.guard(layout.locks.joinpath(*dirs, f"{last}.lock"))


def _owner(path: Path) -> str | None:
    """Who holds the lock at `path`, as its holder wrote it (`pid 123 on host`), if known."""
    note = path.with_name(path.name + ".owner")
    try:
        fd = os.open(note, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        text = os.read(fd, 200).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)
    return "".join(ch for ch in text if ch.isprintable()).strip() or None


def _write_owner(owner: Path) -> None:
    """Say who holds a lock: a new file renamed over the note, so neither a symlink nor a hardlink
    planted where the note goes is ever written through."""
    fresh = owner.with_name(f".{owner.name}.{os.getpid()}.{threading.get_ident()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    with contextlib.suppress(OSError):
        fd = os.open(fresh, flags, 0o644)
        try:
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        finally:
            os.close(fd)
        os.replace(fresh, owner)
    with contextlib.suppress(OSError):
        fresh.unlink()


@contextmanager
def entry_lock(
    layout: CacheLayout, *parts: str, timeout: float, on_wait: Callable[[str | None], None] | None = None
) -> Iterator[None]:
    """Hold the exclusive lock of one entry; `LockTimeout` names it if it stays busy. When it is
    busy at first, `on_wait(holder)` is told who holds it (`pid 123 on host`, None if unknown)."""
    path = lock_path(layout, *parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    soft = layout.soft_locks
    lock = (filelock.SoftFileLock if soft else filelock.FileLock)(str(path), timeout=timeout)
    owner = path.with_name(path.name + ".owner")
    try:
        if on_wait is not None:
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                on_wait(_owner(path))
                lock.acquire()
        else:
            lock.acquire()
    except filelock.Timeout as exc:
        if not (soft and _is_stale(path, layout.stale_lock_age)):
            raise LockTimeout(f"lock {path} still held by another process after {timeout:g}s") from exc
        path.unlink(missing_ok=True)
        try:
            lock.acquire(timeout=timeout)
        except filelock.Timeout as again:
            raise LockTimeout(f"lock {path} still held by another process after {timeout:g}s") from again
    if on_wait is not None:
        _write_owner(owner)
    try:
        yield
    finally:
        if on_wait is not None:
            with contextlib.suppress(OSError):
                owner.unlink()
        lock.release()


def _acquire_shared(path: Path, timeout: float) -> int | None:
    """An open descriptor holding `path`'s lock shared, None where it cannot be opened (read-only
    cache); `LockTimeout` when a writer keeps it exclusively for `timeout` seconds."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError:
        return None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(f"lock {path} still held exclusively after {timeout:g}s") from None
            time.sleep(0.01)


@contextmanager
def shared_entry_lock(layout: CacheLayout, *parts: str, timeout: float) -> Iterator[None]:
    """Hold the entry's lock shared (many readers; no writer, pruner or cleaner meanwhile), where
    OS locks are in use and the cache is writable; elsewhere this does nothing."""
    if layout.soft_locks or fcntl is None:
        yield
        return
    fd = _acquire_shared(lock_path(layout, *parts), timeout)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


_held: dict[Path, int] = {}
_held_guard = threading.Lock()


def hold_shared(layout: CacheLayout, *parts: str, timeout: float) -> None:
    """Keep the entry's lock shared until `release_holds` or the end of the process: for callers
    that hand out the cached path itself (the `mlcache://` loader), so that no prune or clean removes
    the files while the caller still reads them. Holding the same entry again costs nothing."""
    if layout.soft_locks or fcntl is None:
        return
    path = lock_path(layout, *parts)
    with _held_guard:
        if path in _held:
            return
        fd = _acquire_shared(path, timeout)
        if fd is not None:
            _held[path] = fd


def release_holds() -> int:
    """Release every hold this process keeps; returns how many were released."""
    with _held_guard:
        for fd in _held.values():
            os.close(fd)
        count = len(_held)
        _held.clear()
    return count
