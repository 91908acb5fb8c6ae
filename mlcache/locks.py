"""Per-entry locks under `locks/`: real mutual exclusion between writers (filelock).

Locks only prevent doing the same work twice; correctness comes from the on-disk protocol
(stage, rename into place). OS locks die with their process, so a crash never blocks others.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from .errors import LockTimeout
from .layout import CacheLayout, encode_part


def lock_path(layout: CacheLayout, *parts: str) -> Path:
    """The lock file of one entry, never inside an artifact or metadata tree."""
    *dirs, last = (encode_part(p) for p in parts)
    return layout.locks.joinpath(*dirs, f"{last}.lock")


@contextmanager
def entry_lock(layout: CacheLayout, *parts: str, timeout: float, soft: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of one entry; `LockTimeout` names it if it stays busy."""
    path = lock_path(layout, *parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = (filelock.SoftFileLock if soft else filelock.FileLock)(str(path), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise LockTimeout(f"lock {path} still held by another process after {timeout:g}s") from exc
    try:
        yield
    finally:
        lock.release()
