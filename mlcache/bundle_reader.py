"""Reading a bundle (a folder or a `.tar`/`.tar.gz` archive) in one pass, trusting nothing in it.

Each member is read once: its name goes through `names.safe_relative_path`, its bytes are hashed
as they stream by and, when a stage folder is given, written there (the only copy an import will
install). Only regular files and folders are accepted, and hardlinks to an artifact file read
earlier in the same bundle (each blob is stored once); other links, devices and pipes are refused,
and so are duplicate names, more members or bytes than the limits allow, and archives that are
truncated or not archives at all. Small documents (metadata, manifests, `bundle.json`) are kept in
memory for the checks; artifact bytes never are. No Python extraction filter is relied upon.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .errors import BundleError, MlcacheError
from .names import UnsafePath, safe_relative_path
from .signing import DOCUMENT_SIGNATURE, SIGNATURES

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
DOCUMENT_PREFIXES = ("metadata/", "manifests/", f"{SIGNATURES}/")
DOCUMENT_FILES = ("bundle.json", DOCUMENT_SIGNATURE, "layout.json")
_BLOCK = 1 << 20


@dataclass(frozen=True)
class BundleLimits:
    """Bounds on what one bundle may hold; `max_bytes=None` means the free space where it is staged."""

    max_files: int = 1_000_000
    max_bytes: int | None = None
    max_document: int = 64 << 20


@dataclass(frozen=True)
class Member:
    """One file of a bundle as read: its size and the sha256 of its bytes."""

    size: int
    sha256: str


@dataclass
class BundleTree:
    """What one pass over a bundle found: every file, the documents' bytes, and where the files
    were staged (None when only verified)."""

    source: Path
    members: dict[str, Member] = field(default_factory=dict)
    documents: dict[str, bytes] = field(default_factory=dict)
    staged: Path | None = None


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_document(rel: str) -> bool:
    return rel in DOCUMENT_FILES or rel.startswith(DOCUMENT_PREFIXES)


def is_derived(rel: str) -> bool:
    """State a reader of a bundle folder may have left in it (its search index, last-used stamps,
    lock and temp files): never part of a bundle, never read, never installed."""
    top = rel.split("/", 1)[0]
    return (
        top in ("tmp", "locks")
        or rel.startswith("metadata/index.sqlite")
        or (rel.startswith("manifests/") and rel.endswith(".used"))
    )


class _Reader:
    """Accumulates members within the limits, hashing and (optionally) staging each one."""

    def __init__(self, source: Path, limits: BundleLimits, stage: Path | None) -> None:
        self.tree = BundleTree(source, staged=stage)
        self.limits = limits
        self.total = 0
        self.max_bytes = limits.max_bytes
        if self.max_bytes is None and stage is not None:
            self.max_bytes = os.statvfs(stage).f_bavail * os.statvfs(stage).f_frsize

    def name(self, raw: str) -> str | None:
        """The normalized member name; None for the bundle's root folder itself."""
        if raw.strip("/") in ("", "."):
            return None
        try:
            return safe_relative_path(raw, "bundle member")
        except UnsafePath as exc:
            raise BundleError(f"{self.tree.source}: refused member {raw!r}: {exc}") from None

    def folder(self, rel: str) -> None:
        if self.tree.staged is not None:
            self._mkdirs(rel)

    def _mkdirs(self, rel: str) -> Path:
        assert self.tree.staged is not None
        target = self.tree.staged.joinpath(*rel.split("/"))
        try:
            target.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise BundleError(f"{self.tree.source}: member {rel!r} is both a file and a folder") from None
        return target

    def file(self, rel: str, data: IO[bytes], claimed: int) -> None:
        if rel in self.tree.members:
            raise BundleError(f"{self.tree.source}: member {rel!r} appears twice")
        if len(self.tree.members) >= self.limits.max_files:
            raise BundleError(f"{self.tree.source}: more than {self.limits.max_files} files; refused")
        keep = is_document(rel)
        if keep and claimed > self.limits.max_document:
            raise BundleError(f"{self.tree.source}: {rel} is {claimed} bytes, too large for a document")
        out = None
        if self.tree.staged is not None:
            parent, _, name = rel.rpartition("/")
            folder = self._mkdirs(parent) if parent else self.tree.staged
            try:
                out = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except (FileExistsError, IsADirectoryError):
                raise BundleError(f"{self.tree.source}: member {rel!r} is both a file and a folder") from None
        digest = hashlib.sha256()
        size = 0
        kept: list[bytes] = []
        try:
            while chunk := data.read(_BLOCK):
                size += len(chunk)
                self.total += len(chunk)
                if self.max_bytes is not None and self.total > self.max_bytes:
                    where = "the space free where it is staged" if self.limits.max_bytes is None else "the limit"
                    raise BundleError(f"{self.tree.source}: holds more than {self.max_bytes} bytes ({where}); refused")
                if keep:
                    if size > self.limits.max_document:
                        raise BundleError(f"{self.tree.source}: {rel} is too large for a document")
                    kept.append(chunk)
                digest.update(chunk)
                if out is not None:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
        finally:
            if out is not None:
                os.close(out)
        self.tree.members[rel] = Member(size, digest.hexdigest())
        if keep:
            self.tree.documents[rel] = b"".join(kept)

    def link(self, rel: str, first: str) -> None:
        """A member holding the same bytes as the earlier artifact member `first` (a hardlink in
        the archive or folder): recorded with its size and digest, staged as a link to its copy."""
        if rel in self.tree.members:
            raise BundleError(f"{self.tree.source}: member {rel!r} appears twice")
        if first not in self.tree.members or is_document(first) or is_document(rel):
            raise BundleError(
                f"{self.tree.source}: refused member {rel!r}: a link to {first!r}, which is no earlier artifact file"
            )
        if len(self.tree.members) >= self.limits.max_files:
            raise BundleError(f"{self.tree.source}: more than {self.limits.max_files} files; refused")
        if self.tree.staged is not None:
            parent, _, name = rel.rpartition("/")
            folder = self._mkdirs(parent) if parent else self.tree.staged
            try:
                os.link(self.tree.staged.joinpath(*first.split("/")), folder / name, follow_symlinks=False)
            except (FileExistsError, IsADirectoryError):
                raise BundleError(f"{self.tree.source}: member {rel!r} is both a file and a folder") from None
        self.tree.members[rel] = self.tree.members[first]


def read_bundle(source: Path, limits: BundleLimits | None = None, stage: Path | None = None) -> BundleTree:
    """Read every member of the bundle at `source` once (hash, and stage into `stage` if given)."""
    reader = _Reader(source, limits or BundleLimits(), stage)
    if is_archive(source) and not source.is_dir():
        _read_archive(source, reader)
    else:
        _read_folder(source, reader)
    return reader.tree


def _read_archive(source: Path, reader: _Reader) -> None:
    try:
        with tarfile.open(source, "r|*") as tar:
            for member in _members(tar):
                rel = reader.name(member.name)
                if rel is not None and is_derived(rel):
                    continue
                if member.isdir():
                    if rel is not None:
                        reader.folder(rel)
                    continue
                if member.islnk() and rel is not None:
                    first = reader.name(member.linkname)
                    if first is None:
                        raise BundleError(f"{source}: refused member {member.name!r}: a link to the bundle's root")
                    reader.link(rel, first)
                    continue
                if not member.isreg() or rel is None:
                    kind = "link" if member.issym() or member.islnk() else "special file"
                    raise BundleError(f"{source}: refused member {member.name!r}: a {kind}; bundles hold only files")
                data = tar.extractfile(member)
                if data is None:
                    raise BundleError(f"{source}: member {member.name!r} has no data")
                reader.file(rel, data, member.size)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, MlcacheError):
            raise
        raise BundleError(f"{source} is truncated or not a readable .tar/.tar.gz archive ({exc})") from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tar.next()) is not None:
        yield member


def _read_folder(source: Path, reader: _Reader) -> None:
    if not source.is_dir():
        raise BundleError(f"{source} is not a bundle folder or a .tar/.tar.gz archive")
    source = source.resolve()
    read: dict[tuple[int, int], str] = {}
    for folder, dirs, names in os.walk(source):
        base = Path(folder)
        dirs[:] = [name for name in dirs if not is_derived((base / name).relative_to(source).as_posix())]
        for name in sorted(dirs):
            path = base / name
            rel = reader.name(path.relative_to(source).as_posix())
            if path.is_symlink():
                raise BundleError(f"{source}: refused {rel}: a link; bundles hold only files")
            if rel is not None:
                reader.folder(rel)
        dirs.sort()
        for name in sorted(names):
            path = base / name
            rel = reader.name(path.relative_to(source).as_posix())
            if rel is not None and is_derived(rel):
                continue
            info = path.lstat()
            if not stat.S_ISREG(info.st_mode) or rel is None:
                kind = "link" if stat.S_ISLNK(info.st_mode) else "special file"
                raise BundleError(f"{source}: refused {rel}: a {kind}; bundles hold only files")
            first = read.get((info.st_dev, info.st_ino)) if info.st_nlink > 1 else None
            if first is not None and not is_document(rel):
                reader.link(rel, first)
                continue
            if info.st_nlink > 1 and not is_document(rel):
                read[(info.st_dev, info.st_ino)] = rel
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                raise BundleError(f"{source}: cannot read {rel} ({exc.strerror})") from None
            with os.fdopen(fd, "rb") as data:
                reader.file(rel, data, info.st_size)
