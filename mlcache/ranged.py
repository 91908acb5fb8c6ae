"""Big files pulled as byte ranges over several streams, resumable across processes.

Chunks land in a `ChunkJournal` (`chunk_journal`: the data file and log a later pull resumes from,
trusting nothing it finds). The sha256 (and the MD5, where the listing has the store's) is computed
in file order as chunks complete, each chunk read back once while the page cache holds it; the
finished file is moved into the tree only once the store's MD5 agrees.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .chunk_journal import PIECE, ChunkJournal, pieces, private_dir
from .errors import InvalidSetting, TransferError
from .transfer import OnFile, RemoteFile

__all__ = ["RangeSource", "RangeStream", "RangedSettings", "pull_ranged"]

_MIN_CHUNK = 4096


class RangeStream(Protocol):
    """The bytes `[offset, offset + count)` of one remote file, as a stream."""

    def readinto(self, buffer: memoryview) -> int:
        """Fill the start of `buffer`; the number of bytes read, 0 at the end."""

    def finish(self) -> None:
        """The stream was read to its end: raise `TransferError` if the source failed."""

    def abort(self) -> None:
        """Stop the stream early (its bytes are not wanted any more)."""


OpenRange = Callable[[RemoteFile, int, int], RangeStream]
"""`open_range(file, offset, count)`: a stream of that range of a listed file."""


class RangeSource(Protocol):
    """Where the ranges of one pull come from (its range server)."""

    def open_range(self, item: RemoteFile, offset: int, count: int) -> RangeStream:
        """A stream of that range of a listed file."""

    def interrupt(self) -> None:
        """Make every request in progress, and every one after, fail at once (the pull stops)."""


@dataclass(frozen=True)
class RangedSettings:
    """Which files go by ranges and how: at least `min_size` bytes, `streams` at once, resumable
    in chunks of `chunk_size` bytes, at most `request_size` bytes asked for at a time (requests go
    in file order, so the hashes follow the streams closely)."""

    min_size: int = 64 << 20
    streams: int = 16
    chunk_size: int = 4 << 20
    request_size: int = 16 << 20

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.streams < 1 or self.chunk_size < _MIN_CHUNK or self.request_size < self.chunk_size:
            raise InvalidSetting(
                f"RangedSettings needs min_size >= 1, streams >= 1, chunk_size >= {_MIN_CHUNK} bytes and "
                f"request_size >= chunk_size; got min_size={self.min_size}, streams={self.streams}, "
                f"chunk_size={self.chunk_size}, request_size={self.request_size}"
            )

    @property
    def chunks_per_request(self) -> int:
        return self.request_size // self.chunk_size

    def wants(self, item: RemoteFile) -> bool:
        return item.size >= self.min_size


def pull_ranged(
    files: Sequence[tuple[RemoteFile, str, Path]],
    open_range: OpenRange,
    state_dir: Path,
    settings: RangedSettings,
    on_file: OnFile | None = None,
    advanced: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    interrupt: Callable[[], None] | None = None,
) -> None:
    """Pull each `(file, url, dest)` into `dest` by ranges, resuming what `state_dir` holds of it;
    `on_file(rel, digest=sha256)` is told of each file done, `advanced(n)` of the bytes as they land.
    Setting `stop` ends the pull early with a `TransferError`. `interrupt()` is called when a
    stream fails (the pull fails with that first error) or the pull is stopped, to wake the
    streams still waiting on the store."""
    state_dir.mkdir(mode=0o700, exist_ok=True)
    private_dir(state_dir)
    for item, url, dest in files:
        assembly = _Assembly(item, url, state_dir, settings.chunk_size)
        try:
            digest = assembly.fetch(open_range, settings, advanced, stop or threading.Event(), interrupt)
            assembly.journal.install(dest)
        finally:
            assembly.journal.close()
        if on_file is not None:
            on_file(item.path, digest=digest)


class _Assembly:
    """One file being put together from chunks on several streams, into its journal."""

    def __init__(self, item: RemoteFile, url: str, state_dir: Path, chunk_size: int) -> None:
        self.item = item
        self.journal = ChunkJournal(item, url, state_dir, chunk_size)
        self.changed = threading.Condition()
        self.failed: BaseException | None = None
        self._fetching = True

    def fetch(
        self,
        open_range: OpenRange,
        settings: RangedSettings,
        advanced: Callable[[int], None] | None,
        stop: threading.Event,
        interrupt: Callable[[], None] | None = None,
    ) -> str:
        """Fetch the missing chunks on `settings.streams` threads while the hashes follow in file
        order; the sha256 of the whole file."""
        streams = settings.streams
        segments = self.journal.missing_runs(streams, settings.chunks_per_request)
        queue = list(reversed(segments))
        lock = threading.Lock()

        def work() -> None:
            buffer = bytearray(PIECE)
            while not stop.is_set() and self.failed is None:
                with lock:
                    if not queue:
                        return
                    first, end = queue.pop()
                try:
                    self._fetch_segment(open_range, first, end, memoryview(buffer), advanced, stop)
                except BaseException as exc:  # handed to the caller once the streams are joined
                    with self.changed:
                        cause = self.failed is None and not stop.is_set()
                        if cause:  # later failures, and any once stopped, follow from it: not the cause
                            self.failed = exc
                        self.changed.notify_all()
                    if cause and interrupt is not None:
                        interrupt()
                    return

        sha256 = _Follower(self, hashlib.sha256)
        md5 = _Follower(self, hashlib.md5) if self.journal.checked_whole else None
        workers = [threading.Thread(target=work, daemon=True) for _ in range(min(streams, len(segments)))]
        for thread in workers:
            thread.start()
        woken = False
        for thread in workers:
            while thread.is_alive():  # a stop wakes the streams a stalled store holds
                thread.join(0.1)
                if stop.is_set() and interrupt is not None and not woken:
                    interrupt()
                    woken = True
        with self.changed:
            if self.failed is None and stop.is_set():
                self.failed = TransferError("the pull was stopped", retryable=False)
            self._fetching = False
            self.changed.notify_all()
        digest = sha256.result()
        store_md5 = md5.result() if md5 is not None else None
        if self.failed is not None:
            raise self.failed
        if store_md5 is not None and f"md5:{store_md5}" != self.item.hash:
            self.journal.forget()
            raise TransferError(
                f"{self.item.path}: the bytes received do not match the store's MD5 ({self.item.hash}); "
                "they were dropped and will be fetched again",
                retryable=True,
            )
        assert digest is not None
        return digest

    def _fetch_segment(
        self,
        open_range: OpenRange,
        first: int,
        end: int,
        buffer: memoryview,
        advanced: Callable[[int], None] | None,
        stop: threading.Event,
    ) -> None:
        chunk_size = self.journal.chunk_size
        offset = first * chunk_size
        count = min(end * chunk_size, self.item.size) - offset
        stream = open_range(self.item, offset, count)
        try:
            for index in range(first, end):
                if not self._fetch_chunk(stream, index, buffer, advanced, stop):
                    stream.abort()
                    return
            if stream.readinto(buffer[:1]):
                raise TransferError(f"{self.item.path}: the store sent more bytes than asked for", retryable=True)
            stream.finish()
        except BaseException:
            stream.abort()
            raise

    def _fetch_chunk(
        self,
        stream: RangeStream,
        index: int,
        buffer: memoryview,
        advanced: Callable[[int], None] | None,
        stop: threading.Event,
    ) -> bool:
        """Fetch and record chunk `index`; False, with the chunk not recorded, once the pull was
        stopped or another stream failed (looked at between reads, not only between chunks)."""
        journal = self.journal
        position, left = journal.span(index)
        crc: int | None = None if journal.checked_whole else 0
        while left > 0:
            if stop.is_set() or self.failed is not None:
                return False
            got = stream.readinto(buffer[: min(len(buffer), left)])
            if not got:
                stream.finish()
                raise TransferError(
                    f"{self.item.path}: the store ended the file before its listed size {self.item.size}",
                    retryable=True,
                )
            piece = buffer[:got]
            written = 0
            while written < got:
                written += os.pwrite(journal.data, piece[written:], position + written)
            if crc is not None:
                crc = zlib.crc32(piece, crc)
            position += got
            left -= got
            if advanced is not None:
                advanced(got)
        journal.record(index, crc)
        with self.changed:
            self.changed.notify_all()
        return True

    def wait_for(self, index: int) -> bool:
        """Block until chunk `index` is in (True) or the fetch failed or ended without it (False)."""
        with self.changed:
            while not self.journal.done[index]:
                if self.failed is not None or not self._fetching:
                    return False
                self.changed.wait(1.0)
            return True


class _Follower:
    """A hash of the whole file, fed chunk by chunk in file order as chunks complete, on a thread."""

    def __init__(self, assembly: _Assembly, algorithm: Callable[[], hashlib._Hash]) -> None:
        self._assembly = assembly
        self._hash = algorithm()
        self._complete = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assembly = self._assembly
        journal = assembly.journal
        for index in range(journal.count):
            if not assembly.wait_for(index):
                return
            start, length = journal.span(index)
            seen = 0
            for piece in pieces(journal.data, start, length):
                self._hash.update(piece)
                seen += len(piece)
            if seen < length:
                return
        self._complete = True

    def result(self) -> str | None:
        """The hex digest once every chunk was hashed; None if the fetch failed first."""
        self._thread.join()
        return self._hash.hexdigest() if self._complete else None
