"""Transfers: list, pull and push artifact trees. `rclone.RcloneTransfer` is the default; the
api's `transfer` field takes any `Transfer`. Progress of every transfer goes to a
`progress.TransferProgress` (always on stderr).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from .errors import TransferError
from .progress import TransferProgress, auto_progress
from .timeutil import canonical_rfc3339

__all__ = [
    "Listing",
    "OnFile",
    "Progress",
    "PullPlan",
    "RemoteFile",
    "Transfer",
    "TransferError",
    "file_by_file",
    "reporter",
]


class RemoteFile(NamedTuple):
    """One file of a remote tree: its path relative to the listed URL, size and modification time."""

    path: str
    size: int
    mtime: str = ""
    hash: str = ""
    """The store's own hash of the file when its listing gives one (`md5:<hex>`), else empty."""


@dataclass(frozen=True)
class Listing:
    """What a URL holds: one file, or a directory tree of files."""

    url: str
    is_dir: bool
    files: tuple[RemoteFile, ...]

    def selected(self, only: Sequence[str] | None) -> list[RemoteFile]:
        """The listed files, or those of them whose paths `only` names."""
        wanted = None if only is None else set(only)
        return [f for f in self.files if wanted is None or f.path in wanted]

    def version(self) -> str:
        """A cheap fingerprint of the remote content (paths, sizes, modification times; one spelling
        per instant, so listings made in different time zones compare)."""
        digest = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            digest.update(f"{f.path}\0{f.size}\0{canonical_rfc3339(f.mtime)}\n".encode())
        return digest.hexdigest()


Progress = bool | TransferProgress | None
"""What a transfer reports progress to: True for the default reporter on stderr, False/None for none."""


class OnFile(Protocol):
    """Told about each pulled file: `rel` is its path under the destination; `staged`, when given,
    is where its complete bytes already sit (its own name or a temporary one) while the transfer
    still checks them, so hashing can start early; `digest`, when given, is the sha256 the
    transfer computed of the file now at `rel` as its bytes landed."""

    def __call__(self, rel: str, staged: str | None = None, digest: str | None = None) -> None: ...


@dataclass(frozen=True)
class PullPlan:
    """What a pull may use beyond its URL: the listing the caller takes at the same time, and a
    private folder that outlives a failed or killed pull, where big files resume."""

    listing: Callable[[], Listing]
    resume_dir: Path


class Transfer(ABC):
    """Moves artifact trees between a URL and a local folder."""

    @abstractmethod
    def list(self, url: str) -> Listing:
        """What `url` holds; `EntityNotFound` if nothing."""

    @abstractmethod
    def pull(
        self,
        url: str,
        dest: Path,
        progress: Progress = False,
        on_file: OnFile | None = None,
        only: Sequence[str] | None = None,
        plan: PullPlan | None = None,
    ) -> None:
        """Copy what `url` holds into the folder `dest` (a single file lands as `dest/<name>`), or
        with `only` just those paths of a folder's listing (the cache holds the rest already);
        `on_file(relative_path)` may be called as each file completes, so hashing can overlap
        (and `on_file(relative_path, staged=name)` as soon as its bytes are complete at `name`).
        `progress` is told how the copy advances (True: the default reporter on stderr).
        The caller lists `url` at the same time and checks the result against it; a transfer may
        use that listing and a folder to resume in through `plan`."""

    @abstractmethod
    def push(self, src: Path, url: str, progress: Progress = False) -> None:
        """Upload a file or folder `src` so that it is found at `url`."""

    @abstractmethod
    def delete(self, url: str) -> None:
        """Remove what `url` holds (a file or a whole tree) from the store; `EntityNotFound` if nothing."""


@contextmanager
def file_by_file(
    progress: Progress, label: str, total: int, dest: Path | None = None
) -> Iterator[Callable[[int], None]]:
    """Progress of a transfer that moves whole files one after another: call what this yields with
    the size of each file done. With `dest`, the bytes already in it are measured twice a second
    meanwhile, so one big file shows progress too."""
    sink = reporter(progress, label)
    started = time.monotonic()
    lock = threading.Lock()
    finished = threading.Event()
    done = 0

    def report(measured: int) -> None:
        if sink is not None:
            elapsed = time.monotonic() - started
            with lock:
                sink.update(measured, total, measured / elapsed if elapsed > 0 else None)

    def advanced(size: int) -> None:
        nonlocal done
        done += size
        report(done)

    def watch() -> None:
        while not finished.wait(0.5) and dest is not None:
            report(max(done, min(total, _bytes_in(dest))))

    watcher = threading.Thread(target=watch, daemon=True) if sink is not None and dest is not None else None
    if watcher is not None:
        watcher.start()
    ok = False
    try:
        yield advanced
        ok = True
    finally:
        finished.set()
        if watcher is not None:
            watcher.join()
        if sink is not None:
            sink.close(ok)


def _bytes_in(folder: Path) -> int:
    """Bytes of the files under `folder` so far (links not followed; files vanishing are skipped)."""
    size = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(root, name)).st_size
    return size


def reporter(progress: Progress, label: str) -> TransferProgress | None:
    """The reporter a transfer feeds: the one given, the default one for True, none for False."""
    if progress is True:
        return auto_progress(label)
    if progress is False or progress is None:
        return None
    return progress
