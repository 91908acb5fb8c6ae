"""Store-hash hints: which held blob a store's own hash of a file (S3 ETag MD5, Azure Content-MD5,
GCS MD5) was downloaded as, so a later pull links the file instead of downloading it again.

On-disk protocol (no lock is needed for any of it):
- `blobs/store/<32 hex>.hints` is a pack: one line `<store hash> <size> <sha256>` per file of
  one pull, written whole under a fresh name (`write_atomic`, not fsynced: losing a pack in a
  power cut costs a download, nothing else) and never changed afterwards.
- Every line is a claim: a line that does not parse is skipped, and a match is used only when
  the blob it names is held with the listed size (`BlobStore.held`).
- Once more than `COMPACT_AFTER` small packs exist, a pull merges them: the merged pack is
  written first, then the packs it merged are unlinked, so a reader sees each hint at least once
  whatever moment a process dies. Two merging side by side leave duplicates, which are harmless.
- `gc` rewrites what survives (hints whose blob is held) into one pack and unlinks the packs it
  read and anything else it finds there; a pack written meanwhile by a pull is not touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import CorruptMetadata
from .layout import CacheLayout, read_regular, write_atomic
from .manifest import STORE_HASH
from .staging import remove_tree

SHA256 = re.compile(r"[0-9a-f]{64}")
PACK_NAME = re.compile(r"[0-9a-f]{32}\.hints")
PACK_ENTRIES = 65_536
"""Hints per pack at most (about 7 MiB); a bigger set is written as several packs."""
PACK_LIMIT = 16 << 20
"""A pack bigger than this is not read (mlcache never writes one)."""
COMPACT_AFTER = 32
"""How many packs of fewer than `PACK_ENTRIES` hints may exist before a pull merges them."""

HintKey = tuple[str, int]
"""(store hash, size) of a file as a store lists it."""
Hints = dict[HintKey, str]
"""What a set of packs claims: (store hash, size) -> sha256 of the blob it was downloaded as."""
_Identity = tuple[int, int, int]


def parse_pack(data: bytes) -> Hints:
    """The hints of a pack's bytes; lines that are not a store hash, a size and a sha256 are skipped."""
    hints: Hints = {}
    for line in data.decode("ascii", errors="replace").splitlines():
        parts = line.split(" ")
        if len(parts) == 3 and STORE_HASH.fullmatch(parts[0]) and parts[1].isdigit() and SHA256.fullmatch(parts[2]):
            hints[(parts[0], int(parts[1]))] = parts[2]
    return hints


def format_pack(hints: Iterable[tuple[HintKey, str]]) -> bytes:
    return "".join(f"{store_hash} {size} {digest}\n" for (store_hash, size), digest in hints).encode("ascii")


class StoreHashHints:
    """The hint packs of one cache dir, read once each per process (packs never change)."""

    def __init__(self, layout: CacheLayout, root: Path) -> None:
        self.layout = layout
        self.folder = root / "store"
        self._packs: dict[str, tuple[_Identity, Hints]] = {}
        self._merged: Hints | None = None

    def _listing(self) -> dict[str, _Identity]:
        """Pack name -> identity of every pack present (links and odd names are not packs)."""
        found: dict[str, _Identity] = {}
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if self.folder.is_symlink():
                return found
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if not PACK_NAME.fullmatch(entry.name):
                        continue
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        if stat.S_ISREG(info.st_mode):
                            found[entry.name] = (info.st_ino, info.st_size, info.st_mtime_ns)
        return found

    def load(self) -> Hints:
        """Every hint of the packs present now; only packs not read before are read."""
        present = self._listing()
        changed = present.keys() != self._packs.keys()
        for name, identity in present.items():
            known = self._packs.get(name)
            if known is not None and known[0] == identity:
                continue
            changed = True
            try:
                read = read_regular(self.folder / name, limit=PACK_LIMIT)
            except CorruptMetadata:
                read = None
            self._packs[name] = (identity, parse_pack(read[0]) if read is not None else {})
        for gone in self._packs.keys() - present.keys():
            del self._packs[gone]
        if changed or self._merged is None:
            merged: Hints = {}
            for name in sorted(self._packs):
                merged.update(self._packs[name][1])
            self._merged = merged
        return self._merged

    def any(self) -> bool:
        """Whether any pack is present (else a pull need not list before it downloads)."""
        return bool(self._listing())

    def record(self, hints: Hints) -> None:
        """Write the hints of one pull that no pack holds yet as new packs, then merge small packs
        when there are too many of them."""
        known = self.load()
        fresh = {key: digest for key, digest in hints.items() if known.get(key) != digest}
        if not fresh:
            return
        self._write(list(fresh.items()))
        self.load()
        small = [name for name, (_, pack) in self._packs.items() if len(pack) < PACK_ENTRIES]
        if len(small) > COMPACT_AFTER:
            merged: Hints = {}
            for name in sorted(small):
                merged.update(self._packs[name][1])
            self._write(list(merged.items()))
            self._unlink(small)

    def prune(self, held: Callable[[str, int], bool]) -> None:
        """Keep, in one pack, the hints whose blob is `held`; drop every other pack and anything
        that is not a pack (gc)."""
        if not self.folder.is_dir() or self.folder.is_symlink():
            return
        hints = self.load()
        read = list(self._packs)
        keep = [(key, digest) for key, digest in sorted(hints.items()) if held(digest, key[1])]
        if keep:
            self._write(keep)
        self._unlink(read)
        for item in self.folder.iterdir():
            if not PACK_NAME.fullmatch(item.name) or item.is_symlink() or not item.is_file():
                remove_tree(self.layout.guard(item))
        self.load()

    def _write(self, hints: list[tuple[HintKey, str]]) -> None:
        self.layout.guarded_dir(self.folder)
        for start in range(0, len(hints), PACK_ENTRIES):
            pack = self.folder / f"{uuid.uuid4().hex}.hints"
            write_atomic(pack, format_pack(hints[start : start + PACK_ENTRIES]), self.layout.tmp, durable=False)

    def _unlink(self, names: Iterable[str]) -> None:
        for name in names:
            self.layout.guard(self.folder / name).unlink(missing_ok=True)
