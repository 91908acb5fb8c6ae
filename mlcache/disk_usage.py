"""What a cache holds on disk, counted by inode: entries share blobs, so a file several entries
hold is counted once in the total, and an entry's *unique* bytes are those no other entry holds
(what removing it would free). Sizes are measured by `lstat`, never read from manifests."""

from __future__ import annotations

import contextlib
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

Inode = tuple[int, int]


def inodes_of(path: Path) -> tuple[dict[Inode, int], int]:
    """Inode -> size of the regular files of a file or tree (links not followed), and how many
    files there are (each hardlink of one inode counted where it appears)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {}, 0
    if not stat.S_ISDIR(info.st_mode):
        return ({(info.st_dev, info.st_ino): info.st_size}, 1) if stat.S_ISREG(info.st_mode) else ({}, 0)
    found: dict[Inode, int] = {}
    count = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                item = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(item.st_mode):
                    found[(item.st_dev, item.st_ino)] = item.st_size
                    count += 1
    return found, count


@dataclass
class Survey:
    """The inodes each entry holds (by label), and how many entries hold each inode."""

    held: dict[str, dict[Inode, int]] = field(default_factory=dict)
    refs: Counter[Inode] = field(default_factory=Counter)
    sizes: dict[Inode, int] = field(default_factory=dict)

    def add(self, label: str, inodes: dict[Inode, int]) -> None:
        self.held[label] = inodes
        self.refs.update(inodes.keys())
        self.sizes.update(inodes)

    def unique(self, label: str) -> int:
        """Bytes of `label`'s files that no other entry holds."""
        return sum(size for inode, size in self.held.get(label, {}).items() if self.refs[inode] == 1)

    def total(self) -> int:
        """Bytes of all entries on disk, each inode once."""
        return sum(self.sizes[inode] for inode, count in self.refs.items() if count > 0)

    def drop(self, label: str) -> int:
        """Forget an entry (it was removed); returns the bytes that freed."""
        freed = 0
        for inode, size in self.held.pop(label, {}).items():
            self.refs[inode] -= 1
            if self.refs[inode] == 0:
                freed += size
        return freed


def loose_blob_bytes(blobs: list[tuple[Inode, int]], survey: Survey) -> int:
    """Bytes of blobs no entry holds (garbage `gc` would remove)."""
    return sum(size for inode, size in blobs if survey.refs[inode] == 0)
