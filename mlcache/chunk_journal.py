"""The on-disk state of a big file pulled by ranges, which lets a later process resume it.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

from .errors import TransferError
from .staged_tree import listed_ns
from .transfer import RemoteFile

PIECE = 1 << 20
"""Bytes read or written at a time."""
_LINE = re.compile(r"(\d{1,9}) ([0-9a-f]{8}|-)")


class ChunkJournal:
    """One file's data file and log: which chunks are done (and proven so), recording new ones,
    and installing the finished file."""

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
        """The store listed an MD5: chunks carry no CRC, the whole file is checked against it."""
        self.data = open_own(self.data_path, os.O_RDWR)
        self.log = -1
        self._resume()

    def span(self, index: int) -> tuple[int, int]:
        """`(offset, length)` of chunk `index`."""
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
        self.log = open_own(self.log_path, os.O_WRONLY | os.O_APPEND)

    def _claimed(self) -> dict[int, int | None]:
        """Chunk -> CRC-32 from an earlier log of this very file; nothing from any other."""
        try:
            fd = open_own(self.log_path, os.O_RDONLY)
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
        start, length = self.span(index)
        for piece in pieces(self.data, start, length):
            crc = zlib.crc32(piece, crc)
            seen += len(piece)
        return crc if seen == length else -1

    def missing_runs(self, streams: int, longest: int) -> list[tuple[int, int]]:
        """Runs `(first, last + 1)` of missing chunks, in file order, cut so that `streams` streams
        share them and none is longer than `longest` chunks."""
        missing = [i for i, done in enumerate(self.done) if not done]
        if not missing:
            return []
        longest = max(1, min(longest, -(-len(missing) // streams)))
        runs: list[tuple[int, int]] = []
        start = previous = missing[0]
        for index in [*missing[1:], -1]:
            if index != previous + 1 or previous + 1 - start >= longest:
                runs.append((start, previous + 1))
                start = index
            previous = index
        return runs

    def record(self, index: int, crc: int | None) -> None:
        """Every byte of chunk `index` is written (`crc` is theirs, None when the MD5 covers them)."""
        os.write(self.log, f"{index} {_crc_text(crc)}\n".encode())
        self.done[index] = True

    def forget(self) -> None:
        """Drop every chunk (their bytes failed the whole-file check)."""
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


def private_dir(folder: Path) -> None:
    """Refuse to resume into `folder` unless it is a directory of this user that others cannot write."""
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise TransferError(f"{folder} is not a private folder of this user; not resuming into it")


def open_own(path: Path, flags: int) -> int:
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


def pieces(fd: int, start: int, length: int) -> Iterator[bytes]:
    """The bytes `[start, start + length)` of a file, read in pieces; fewer when the file ends first."""
    while length > 0:
        piece = os.pread(fd, min(PIECE, length), start)
        if not piece:
            return
        yield piece
        start += len(piece)
        length -= len(piece)


def _crc_text(crc: int | None) -> str:
    return "-" if crc is None else f"{crc:08x}"
