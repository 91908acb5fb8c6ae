"""The on-disk cache layout: where everything lives, and the marker files of a cache dir."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from urllib.parse import quote, unquote

from .errors import MlcacheError

LAYOUT_VERSION = 1

CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by mlcache.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


def encode_part(part: str) -> str:
    """One key part as one safe file name (no separators, no dot names, reversible)."""
    encoded = quote(part, safe="-_@+=,")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def decode_part(name: str) -> str:
    """Inverse of `encode_part`."""
    return unquote(name)


def write_atomic(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f"{path.name[:40]}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CacheLayout:
    """Paths of one cache dir (or bundle); creates its skeleton only when first written to."""

    def __init__(self, root: Path | str, soft_locks: bool = False, stale_lock_age: float = 900.0) -> None:
        self.root = Path(root).expanduser().absolute()
        self.soft_locks = soft_locks
        self.stale_lock_age = stale_lock_age
        self.metadata = self.root / "metadata"
        self.artifacts = self.root / "artifacts"
        self.manifests = self.root / "manifests"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self._ready = False

    def __repr__(self) -> str:
        return f"CacheLayout({str(self.root)!r})"

    def check_version(self) -> None:
        """Refuse a cache written by a newer, incompatible layout."""
        marker = self.root / "layout.json"
        try:
            found = json.loads(marker.read_text())["version"]
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:
            raise MlcacheError(f"malformed cache file {marker}: {exc}") from exc
        if found != LAYOUT_VERSION:
            raise MlcacheError(
                f"cache at {self.root} has layout version {found}; this mlcache reads version {LAYOUT_VERSION}"
            )

    def ensure(self) -> None:
        """Create the skeleton (tag, layout version, folders) before the first write."""
        if self._ready:
            return
        self.check_version()
        for folder in (self.metadata, self.artifacts, self.manifests, self.tmp, self.locks):
            folder.mkdir(parents=True, exist_ok=True)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            write_atomic(tag, CACHEDIR_TAG.encode(), self.tmp)
        marker = self.root / "layout.json"
        if not marker.exists():
            write_atomic(marker, json.dumps({"version": LAYOUT_VERSION}).encode(), self.tmp)
        self._ready = True
