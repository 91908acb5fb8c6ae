"""Validation of user- and server-given paths inside an artifact tree."""

from __future__ import annotations

from pathlib import PurePosixPath

from .errors import MlcacheError


class UnsafePath(MlcacheError, ValueError):
    """A path that is empty, absolute, or climbs out of its tree."""


def safe_relative_path(path: str, what: str = "path_in_run") -> str:
    """Normalized relative POSIX path; refuses empty, absolute and climbing paths."""
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
    return "/".join(clean)
