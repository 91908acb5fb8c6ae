"""The one boundary for names that become paths inside a cache dir.

Every name that ends up in a path passes here, whatever its source: an entity key from a server,
a metadata file or a bundle, an artifact path, a manifest, a bundle member, a lock name.

- A *key part* (an id, a model name, a version, an alias) becomes exactly one file name: it is
  percent-encoded (no separators, no dot names, reversible), and when the encoded form is longer
  than `LONG_NAME` it is stored under its digest instead (`%%` + sha256), a spelling that no
  encoded name can have. Names read back from disk are never trusted: a document's own key is
  validated and must map to the very file it was read from.
- A *relative path* (a path inside an artifact tree or a bundle) is normalized and refused when
  empty, absolute, climbing (`..`), holding NUL or backslashes, or holding a component longer
  than a file name can be.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from urllib.parse import quote, unquote

from .errors import UnsafePath

LONG_NAME = 150
"""Encoded key parts longer than this (bytes) are stored under a digest: with the suffixes the
layout adds (`.json`, `.used`, `.lock`, temp names) every file name stays under 255 bytes."""

MAX_COMPONENT = 255
"""The longest file name common filesystems (ext4, xfs, btrfs, NTFS, APFS) can hold, in bytes."""

DIGEST_PREFIX = "%%"


def check_part(part: object, what: str = "key part") -> str:
    """A key part as it may be stored: a non-empty string without NUL characters."""
    if not isinstance(part, str) or not part:
        raise UnsafePath(f"{what} must be a non-empty string, got {part!r}")
    if "\x00" in part:
        raise UnsafePath(f"{what} must not contain NUL characters: {part!r}")
    return part


def encode_part(part: str) -> str:
    """One key part as one safe file name (no separators, no dot names, reversible)."""
    encoded = quote(part, safe="-_@+=,")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def decode_part(name: str) -> str | None:
    """The key part a file name spells, or None for a digest name (its part is only in the file)."""
    if name.startswith(DIGEST_PREFIX):
        return None
    return unquote(name)


def file_name(part: str, what: str = "key part") -> str:
    """The file name of a validated key part: encoded, or its digest when the encoding is long."""
    encoded = encode_part(check_part(part, what))
    if len(encoded.encode()) <= LONG_NAME:
        return encoded
    return DIGEST_PREFIX + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()


def safe_relative_path(path: object, what: str = "path_in_run") -> str:
    """Normalized relative POSIX path; refuses empty, absolute, climbing and unstorable paths."""
    if not isinstance(path, str) or not path.strip("/ "):
        raise UnsafePath(f"{what} must be a non-empty relative path, got {path!r}")
    if path.startswith("/") or "\\" in path or "\x00" in path or (len(path) > 1 and path[1] == ":"):
        raise UnsafePath(f"{what} must be relative, got {path!r}")
    parts = PurePosixPath(path).parts
    if any(part == ".." for part in parts):
        raise UnsafePath(f"{what} must not climb out of its tree with '..', got {path!r}")
    clean = [part for part in parts if part not in (".", "")]
    if not clean:
        raise UnsafePath(f"{what} must name something inside the tree, got {path!r}")
    for part in clean:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT:
            raise UnsafePath(
                f"{what} has a component of {len(part.encode('utf-8', 'surrogatepass'))} bytes, longer than a file "
                f"name can be ({MAX_COMPONENT}): {part[:40]}..."
            )
    return "/".join(clean)


def is_normalized_relative(path: object, what: str = "path") -> bool:
    """Whether `path` is already the normalized form `safe_relative_path` gives (no refusal)."""
    try:
        return safe_relative_path(path, what) == path
    except UnsafePath:
        return False
