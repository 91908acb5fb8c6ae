"""Big files pulled as byte ranges over several streams, resumable across processes.

On-disk protocol, in a folder the pull owns (`<stage>/ranged/`, kept when a pull fails or dies):
- `<id>.data` holds the file as it is assembled: chunk `i` (`chunk_size` bytes, the last one
  shorter) is written at offset `i * chunk_size`.
- `<id>.log` is append-only. Its first line is the JSON identity of the remote file (`url`, `size`,
  `mtime`, `store_hash`, `chunk_size`); each later line `<i> <crc32>` is appended once every byte of
  chunk `i` was written, with the CRC-32 of those bytes, or `<i> -` when the store listed an MD5
  (the whole file is then checked against it before it is installed, which covers every chunk).
`<id>` is the sha256 of the file's path in the tree, so no remote name becomes a file name here.

A later pull of the same file trusts nothing it finds: anything that is not a regular file of this
user is removed; a log whose identity differs from the new listing is dropped with its data; a
chunk counts as done only when its line is whole and its bytes, read again, give the same CRC-32
(or, for `-`, once the whole file's MD5 matches the store's; a mismatch drops every chunk).
Everything else is fetched again. The sha256 (and the MD5, where the listing has the store's) is
computed in file order as chunks complete, each chunk read back once while the page cache holds
it; the finished file is moved into the tree only once the store's MD5 agrees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import InvalidSetting, TransferError
from .staged_tree import listed_ns
from .transfer import OnFile, RemoteFile

__all__ = ["RangeStream", "RangedSettings", "pull_ranged"]

_PIECE = 1 << 20
_MIN_CHUNK = 4096
_LINE = re.compile(r"(\d{1,9}) ([0-9a-f]{8}|-)")


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


@dataclass(frozen=True)
class RangedSettings:
    """Which files go by ranges and how: at least `min_size` bytes, `streams` at once, resumable
    in chunks of `chunk_size` bytes."""

    min_size: int = 64 << 20
    streams: int = 8
    chunk_size: int = 4 << 20

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.streams < 1 or self.chunk_size < _MIN_CHUNK:
            raise InvalidSetting(
                f"RangedSettings needs min_size >= 1, streams >= 1 and chunk_size >= {_MIN_CHUNK} bytes; "
                f"got min_size={self.min_size}, streams={self.streams}, chunk_size={self.chunk_size}"
            )

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
) -> None:
    """Pull each `(file, url, dest)` into `dest` by ranges, resuming what `state_dir` holds of it;
    `on_file(rel, digest=sha256)` is told of each file done, `advanced(n)` of the bytes as they land.
    Setting `stop` ends the pull early with a `TransferError`."""
    state_dir.mkdir(mode=0o700, exist_ok=True)
    _private_dir(state_dir)
    for item, url, dest in files:
        assembly = _Assembly(item, url, state_dir, settings.chunk_size)
        try:
            digest = assembly.fetch(open_range, settings.streams, advanced, stop or threading.Event())
            assembly.install(dest)
        finally:
            assembly.close()
        if on_file is not None:
            on_file(item.path, digest=digest)


def _private_dir(folder: Path) -> None:
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise TransferError(f"{folder} is not a private folder of this user; not resuming into it")


def _open_own(path: Path, flags: int) -> int:
    """A regular file of this user at `path`, opened without following links; anything else there
    is removed first."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags | nofollow)
    except FileNotFoundError:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL | nofollow, 0o600)
    except OSError:
        fd = -1
    if fd >= 0:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            return fd
        os.close(fd)
    path.unlink()
    return os.open(path, flags | os.O_CREAT | os.O_EXCL | nofollow, 0o600)


class _Assembly:
    """One file being put together from chunks: its data file, its log, which chunks are done."""

    def __init__(self, item: RemoteFile, url: str, state_dir: Path, chunk_size: int) -> None:
        self.item = item
        self.chunk_size = chunk_size
        self.count = max(1, -(-item.size // chunk_size))
        name = hashlib.sha256(item.path.encode()).hexdigest()[:32]
        self.data_path = state_dir / f"{name}.data"
        self.log_path = state_dir / f"{name}.log"
        self.identity = json.dumps(
            {"url": url, "size": item.size, "mtime": item.mtime, "store_hash": item.hash, "chunk_size": chunk_size},
            sort_keys=True,
        )
        self.done = [False] * self.count
        self.checked_whole = item.hash.startswith("md5:")
        self.changed = threading.Condition()
        self.failed: BaseException | None = None
        self._fetching = True
        self.data = _open_own(self.data_path, os.O_RDWR)
        self.log = -1
        self._resume()

    def _span(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(self.chunk_size, self.item.size - start)

    def _resume(self) -> None:
        """Keep the chunks the log vouches for and whose bytes still match; start the log anew
        with exactly those."""
        claimed = self._claimed()
        if os.fstat(self.data).st_size != self.item.size:
            os.ftruncate(self.data, self.item.size)
        lines = [self.identity]
        for index, crc in sorted(claimed.items()):
            if crc is None or self._crc(index) == crc:
                self.done[index] = True
                lines.append(f"{index} {_crc_text(crc)}")
        fresh = self.log_path.with_name(self.log_path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            fresh.unlink()
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            os.write(fd, "".join(f"{line}\n" for line in lines).encode())
        finally:
            os.close(fd)
        os.replace(fresh, self.log_path)
        self.log = _open_own(self.log_path, os.O_WRONLY | os.O_APPEND)

    def _claimed(self) -> dict[int, int | None]:
        """Chunk -> CRC-32 from an earlier log of this very file; nothing from any other."""
        try:
            fd = _open_own(self.log_path, os.O_RDONLY)
        except OSError:
            return {}
        try:
            text = os.read(fd, 64 + len(self.identity) + 20 * self.count).decode("utf-8", "replace")
        finally:
            os.close(fd)
        lines = text.split("\n")
        if lines[0] != self.identity:
            return {}
        claimed: dict[int, int | None] = {}
        for line in lines[1:-1]:  # the last piece has no newline: torn or empty
            match = _LINE.fullmatch(line)
            if match and int(match[1]) < self.count and (match[2] != "-" or self.checked_whole):
                claimed[int(match[1])] = None if match[2] == "-" else int(match[2], 16)
        return claimed

    def _crc(self, index: int) -> int:
        """The CRC-32 of chunk `index` as the data file holds it; -1 when the file ends inside it."""
        crc, seen = 0, 0
        start, length = self._span(index)
        for piece in _pieces(self.data, start, length):
            crc = zlib.crc32(piece, crc)
            seen += len(piece)
        return crc if seen == length else -1

    # ----------------------------------------------------------------- fetching
    def _segments(self, streams: int) -> list[tuple[int, int]]:
        """Runs `(first, last + 1)` of missing chunks, cut so that `streams` streams share them."""
        missing = [i for i, done in enumerate(self.done) if not done]
        if not missing:
            return []
        longest = max(1, -(-len(missing) // streams))
        runs: list[tuple[int, int]] = []
        start = previous = missing[0]
        for index in [*missing[1:], -1]:
            if index != previous + 1 or previous + 1 - start >= longest:
                runs.append((start, previous + 1))
                start = index
            previous = index
        return runs

    def fetch(
        self, open_range: OpenRange, streams: int, advanced: Callable[[int], None] | None, stop: threading.Event
    ) -> str:
        """Fetch the missing chunks on `streams` threads while the hashes follow in file order;
        the sha256 of the whole file."""
        segments = self._segments(streams)
        queue = list(reversed(segments))
        lock = threading.Lock()

        def work() -> None:
            buffer = bytearray(_PIECE)
            while not stop.is_set() and self.failed is None:
                with lock:
                    if not queue:
                        return
                    first, end = queue.pop()
                try:
                    self._fetch_segment(open_range, first, end, memoryview(buffer), advanced, stop)
                except BaseException as exc:  # handed to the caller once the streams are joined
                    with self.changed:
                        self.failed = self.failed or exc
                        self.changed.notify_all()

        sha256 = _Follower(self, hashlib.sha256)
        md5 = _Follower(self, hashlib.md5) if self.checked_whole else None
        workers = [threading.Thread(target=work, daemon=True) for _ in range(min(streams, len(segments)))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
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
            self._forget()
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
        offset = first * self.chunk_size
        count = min(end * self.chunk_size, self.item.size) - offset
        stream = open_range(self.item, offset, count)
        try:
            for index in range(first, end):
                if stop.is_set() or self.failed is not None:
                    stream.abort()
                    return
                self._fetch_chunk(stream, index, buffer, advanced)
            if stream.readinto(buffer[:1]):
                raise TransferError(f"{self.item.path}: the store sent more bytes than asked for", retryable=True)
            stream.finish()
        except BaseException:
            stream.abort()
            raise

    def _fetch_chunk(
        self, stream: RangeStream, index: int, buffer: memoryview, advanced: Callable[[int], None] | None
    ) -> None:
        position, left = self._span(index)
        crc: int | None = None if self.checked_whole else 0
        source = _pipe_of(stream) if crc is None else None
        while left > 0:
            if source is not None:
                got = os.splice(source, self.data, min(_PIECE, left), offset_dst=position)
            else:
                got = stream.readinto(buffer[: min(len(buffer), left)])
            if not got:
                stream.finish()
                raise TransferError(
                    f"{self.item.path}: the store ended the file before its listed size {self.item.size}",
                    retryable=True,
                )
            if source is None:
                piece = buffer[:got]
                written = 0
                while written < got:
                    written += os.pwrite(self.data, piece[written:], position + written)
                if crc is not None:
                    crc = zlib.crc32(piece, crc)
            position += got
            left -= got
            if advanced is not None:
                advanced(got)
        os.write(self.log, f"{index} {_crc_text(crc)}\n".encode())
        with self.changed:
            self.done[index] = True
            self.changed.notify_all()

    def wait_for(self, index: int) -> bool:
        """Block until chunk `index` is in (True) or the fetch failed or ended without it (False)."""
        with self.changed:
            while not self.done[index]:
                if self.failed is not None or not self._fetching:
                    return False
                self.changed.wait(1.0)
            return True

    def _forget(self) -> None:
        os.ftruncate(self.data, 0)
        os.ftruncate(self.log, 0)

    def install(self, dest: Path) -> None:
        """Move the finished file to `dest` with the listed modification time (its bytes are the
        listed object's: their size is the listed one, and the store's MD5 agreed where given)."""
        os.fchmod(self.data, 0o644)
        when = listed_ns(self.item.mtime)
        if when is not None:
            os.utime(self.data, ns=(when, when))
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.data_path, dest)
        with contextlib.suppress(FileNotFoundError):
            self.log_path.unlink()

    def close(self) -> None:
        for fd in (self.data, self.log):
            if fd >= 0:
                os.close(fd)
        self.data = self.log = -1


def _pipe_of(stream: RangeStream) -> int | None:
    """The pipe a stream reads from, when bytes can move from it to the file inside the kernel
    (`os.splice`, Linux) because nothing needs to see them on the way (no CRC)."""
    fileno = getattr(stream, "fileno", None)
    if fileno is None or not hasattr(os, "splice"):
        return None
    fd = fileno()
    return fd if isinstance(fd, int) and stat.S_ISFIFO(os.fstat(fd).st_mode) else None


def _pieces(fd: int, start: int, length: int) -> Iterator[bytes]:
    """The bytes `[start, start + length)` of a file, read in pieces; fewer when the file ends first."""
    while length > 0:
        piece = os.pread(fd, min(_PIECE, length), start)
        if not piece:
            return
        yield piece
        start += len(piece)
        length -= len(piece)


def _crc_text(crc: int | None) -> str:
    return "-" if crc is None else f"{crc:08x}"


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
        for index in range(assembly.count):
            if not assembly.wait_for(index):
                return
            start, length = assembly._span(index)
            seen = 0
            for piece in _pieces(assembly.data, start, length):
                self._hash.update(piece)
                seen += len(piece)
            if seen < length:
                return
        self._complete = True

    def result(self) -> str | None:
        """The hex digest once every chunk was hashed; None if the fetch failed first."""
        self._thread.join()
        return self._hash.hexdigest() if self._complete else None
