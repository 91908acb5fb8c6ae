"""Listing a kind's metadata files with their stamps, and reading a file's bytes, for the
index's staleness checks: one `scandir` and one `lstat` per file, links never followed."""

from __future__ import annotations

import errno
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

_UINT64 = (1 << 64) - 1
_STAMP = struct.Struct("<qqqQ")
_FD_LISTING = os.scandir in os.supports_fd and os.open in os.supports_dir_fd
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
"""Opening a folder, never through a link."""


class Listing(NamedTuple):
    """The files of one kind as a query found them: name (relative, `/`-separated) -> stamp."""

    base: Path
    stamps: dict[str, bytes]
    racy: set[str]


def list_files(base: Path, nested: bool, racy_ns: int) -> Listing:
    """Stamps of the kind's document files (`<name>.json`, or `<folder>/<name>.json` when nested).
    Folders are listed through open descriptors where the OS allows it (one path lookup per
    folder, not per file); links to folders are not followed, as the store does not read through them.
    Files modified within `racy_ns` of now are listed as racy: their stamps are not to be trusted yet."""
    since = time.time_ns() - racy_ns
    stamps: dict[str, bytes] = {}
    racy: set[str] = set()

    def visit(folder: int | str, prefix: str, depth: int) -> None:
        with os.scandir(folder) as entries:
            if not depth:
                stamp_files(entries, prefix)
                return
            for entry in entries:
                if entry.name.isascii() and entry.is_dir(follow_symlinks=False):
                    try:
                        descend(folder, entry, f"{entry.name}/")
                    except OSError as exc:
                        if not _gone(exc):
                            raise

    def stamp_files(entries: Iterator[os.DirEntry[str]], prefix: str) -> None:
        for entry in entries:
            name = entry.name
            if not is_document_name(name):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            rel = prefix + name
            stamps[rel] = stamp_of(info)
            if info.st_mtime_ns >= since or info.st_ctime_ns >= since:
                racy.add(rel)

    def descend(folder: int | str, entry: os.DirEntry, prefix: str) -> None:
        if isinstance(folder, str):
            visit(entry.path, prefix, 0)
            return
        fd = os.open(entry.name, DIR_FLAGS, dir_fd=folder)
        try:
            visit(fd, prefix, 0)
        finally:
            os.close(fd)

    depth = 1 if nested else 0
    try:
        if _FD_LISTING:
            fd = os.open(base, DIR_FLAGS)
            try:
                visit(fd, "", depth)
            finally:
                os.close(fd)
        elif not base.is_symlink():
            visit(str(base), "", depth)
    except OSError as exc:
        if not _gone(exc):
            raise
    return Listing(base, stamps, racy)


def is_document_name(name: str) -> bool:
    """Whether a name in a kind's folder is one of its document files: ASCII, `<name>.json`, not the index's own."""
    return name.isascii() and name.endswith(".json") and not name.startswith("index.")


def stamp_of(info: os.stat_result) -> bytes:
    """A file's stamp as `list_files` records it: modification and change times, size, inode."""
    return _STAMP.pack(info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino & _UINT64)


def _gone(exc: OSError) -> bool:
    """Whether listing a folder failed because it is not there (or is a link): no files, not an error."""
    return isinstance(exc, FileNotFoundError | NotADirectoryError) or exc.errno == errno.ELOOP


def read_bytes(path: Path) -> bytes | None:
    """The bytes of a regular file (links not followed), None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        with open(fd, "rb", closefd=False) as handle:
            return handle.read()
    except OSError:
        return None
    finally:
        os.close(fd)
