"""Making a batch of freshly written files durable in one step where the OS allows it.

Linux's `syncfs(2)` flushes everything unwritten on one filesystem with a single journal commit;
for a page of a thousand small documents that is one call instead of a thousand fsyncs. It also
flushes whatever else is waiting on that filesystem, so it is used only while the machine holds
little unwritten data (`/proc/meminfo`); otherwise, and off Linux, each file is fsynced.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

SYNCFS_FROM = 32
"""From how many files a batch is made durable by one filesystem sync rather than one fsync each."""
UNWRITTEN_LIMIT = 64 << 20
"""At most this much unwritten data on the machine (dirty plus under writeback) before a batch's
filesystem sync: beyond it a batch would wait for other writers' bytes, so it fsyncs its own."""

_REFUSED = {errno.ENOSYS, errno.EPERM, errno.EINVAL, errno.EOPNOTSUPP}
"""What `syncfs` answers where it is not allowed or not implemented, rather than failing to flush."""
_syncfs: Callable[[int], int] | None = None
_probed = False


def _load_syncfs() -> Callable[[int], int] | None:
    """The C library's `syncfs`, or None where there is none."""
    global _syncfs, _probed
    if not _probed:
        _probed = True
        if sys.platform.startswith("linux"):
            try:
                found = ctypes.CDLL(None, use_errno=True).syncfs
            except (OSError, AttributeError):
                found = None
            if found is not None:
                found.argtypes = [ctypes.c_int]
                found.restype = ctypes.c_int
                _syncfs = found
    return _syncfs


def unwritten_bytes() -> int | None:
    """How many bytes the machine has yet to write to disk (`Dirty` + `Writeback`), None when unknown."""
    try:
        with open("/proc/meminfo", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    total = 0
    found = 0
    for line in text.splitlines():
        if line.startswith((b"Dirty:", b"Writeback:")):
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit():
                return None
            total += int(parts[1]) * 1024
            found += 1
    return total if found == 2 else None


def one_sync_for(count: int) -> bool:
    """Whether a batch of `count` new files is best made durable by one `sync_filesystem` rather
    than an fsync each: a batch large enough, on an OS that has `syncfs`, on a machine with little
    else waiting to be written."""
    if count < SYNCFS_FROM or _load_syncfs() is None:
        return False
    pending = unwritten_bytes()
    return pending is not None and pending <= UNWRITTEN_LIMIT


def sync_filesystem(directory: Path) -> bool:
    """Flush everything unwritten on the filesystem holding `directory`. False when this OS or
    sandbox refuses the call itself (seccomp, an old kernel): it is not tried again in this process,
    and the caller makes its files durable one by one. Other failures are the `OSError` they are."""
    global _syncfs
    syncfs = _load_syncfs()
    if syncfs is None:
        return False
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if syncfs(fd) == 0:
            return True
        code = ctypes.get_errno()
    finally:
        os.close(fd)
    if code in _REFUSED:
        _syncfs = None
        return False
    raise OSError(code, os.strerror(code), str(directory))
