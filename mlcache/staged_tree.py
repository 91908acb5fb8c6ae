"""A staged tree before it becomes an entry: scanned without following links out of it, checked
against the remote listing, made read-only, and the pull's report of what it linked and fetched."""

from __future__ import annotations

import logging
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

from .errors import UnsafeArtifact
from .hashing import StagedFile, identity
from .manifest import EntryKey
from .progress import human_size
from .timeutil import canonical_rfc3339
from .transfer import Listing

log = logging.getLogger("mlcache.pulls")


def make_read_only(path: str, mode: int) -> None:
    """Drop the write bits of a regular file whose mode (from its scan) is `mode`."""
    if stat.S_ISREG(mode) and mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def scan_tree(root: Path, is_dir: bool) -> dict[str, StagedFile]:
    """Relative POSIX path -> file of a staged tree; refuses links that leave the tree. Links to
    folders are not followed (as `os.walk`), links to files are listed."""
    if not is_dir:
        info = root.lstat()
        return {
            root.name: StagedFile(str(root), info.st_size, info.st_mode, stat.S_ISLNK(info.st_mode), identity(info))
        }
    files: dict[str, StagedFile] = {}
    top = root.resolve()

    def walk(folder: str, prefix: str) -> None:
        with os.scandir(folder) as entries:
            for entry in entries:
                rel = prefix + entry.name
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if target != top and top not in target.parents:
                        raise UnsafeArtifact(f"link {rel} points outside the artifact ({os.readlink(entry.path)})")
                    if not target.exists():
                        raise UnsafeArtifact(f"link {rel} points to nothing ({os.readlink(entry.path)})")
                    if not target.is_dir():
                        info = entry.stat(follow_symlinks=False)
                        files[rel] = StagedFile(entry.path, target.stat().st_size, info.st_mode, True)
                elif entry.is_dir(follow_symlinks=False):
                    walk(entry.path, f"{rel}/")
                else:
                    info = entry.stat(follow_symlinks=False)
                    files[rel] = StagedFile(entry.path, info.st_size, info.st_mode, False, identity(info))

    walk(str(root), "")
    return files


def check_against(listing: Listing, files: dict[str, StagedFile]) -> None:
    """Refuse a staged tree whose paths or sizes differ from the remote listing."""
    expected = {f.path: f.size for f in listing.files}
    got = {rel: staged.size for rel, staged in files.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))[:3]
        extra = sorted(set(got) - set(expected))[:3]
        wrong = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])[:3]
        raise UnsafeArtifact(
            f"pulled {listing.url} differs from its listing (missing {missing}, extra {extra}, size {wrong})"
        )


def _files(count: int) -> str:
    return f"{count:,} file" if count == 1 else f"{count:,} files"


def report_pull(key: EntryKey, listing: Listing, linked: dict[str, str]) -> None:
    """Say how much of a pull came from blobs the cache held and how much was downloaded (at INFO
    when something was linked; a plain download at DEBUG, its progress already said it)."""
    linked_bytes = sum(f.size for f in listing.files if f.path in linked)
    total = sum(f.size for f in listing.files)
    downloaded = f"downloaded {_files(len(listing.files) - len(linked))}, {human_size(total - linked_bytes)}"
    if linked:
        log.info(
            "%s: linked %s, %s, from the cache; %s",
            key.label,
            _files(len(linked)),
            human_size(linked_bytes),
            downloaded,
        )
    else:
        log.debug("%s: %s", key.label, downloaded)


def listed_ns(mtime: str) -> int | None:
    """A listing's modification time (RFC 3339, any offset and precision) in ns since the epoch."""
    text = canonical_rfc3339(mtime)
    if not text.endswith("Z") or "." not in text:
        return None
    whole, _, fraction = text[:-1].partition(".")
    try:
        seconds = datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None
    return int(seconds) * 1_000_000_000 + int(fraction.ljust(9, "0")[:9])


def _same_second(staged_ns: int, listed: int) -> bool:
    """Whether two times name one write, as stores report it: HTTP dates are whole seconds, and a
    store's header may fall in the second before its listed time."""
    return abs(staged_ns - listed) < 2_100_000_000


def trusted_store_hashes(listing: Listing, files: dict[str, StagedFile], linked: dict[str, str]) -> dict[str, str]:
    """The store hashes a manifest may record: of files linked by that very hash, and of downloaded
    files whose modification time (set from the store's) is the one listed, within two seconds
    (stores give some times as whole-second HTTP dates, rounded either way), so the bytes are the
    object the listing hashed, not one rewritten between the listing and the copy (an object
    rewritten within two seconds of its previous write is the case this cannot tell)."""
    hashes = {}
    for item in listing.files:
        if not item.hash:
            continue
        staged = files.get(item.path)
        listed = listed_ns(item.mtime)
        if item.path in linked or (
            staged is not None and listed is not None and _same_second(staged.identity[3], listed)
        ):
            hashes[item.path] = item.hash
    return hashes
