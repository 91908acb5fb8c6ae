"""Where artifact files may be pulled from: inside an artifact root the server itself uses.

A server that is wrong or compromised could name any location as a version's source (`file:///etc`,
another team's bucket), and the cache would copy it and ship it in bundles. So a source is pulled
only when it lies inside one of the roots that belong to it (its run's artifact root, its
experiment's artifact location) or inside a prefix the user allowed explicitly (`allowed_sources`,
`MLCACHE_ALLOWED_SOURCES`). Locations are compared normalized: local paths resolved (links
included), URLs by scheme, bucket and path segments; a location with `.` or `..` segments is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import UntrustedSource

_SAME_SCHEME = {"s3a": "s3", "wasb": "wasbs"}


def _parts(location: str) -> tuple[str, tuple[str, ...]]:
    """(scheme and authority, path segments) of a location; local paths resolved."""
    if location.startswith("/") or location.lower().startswith("file:"):
        path = unquote(urlparse(location).path) if location.lower().startswith("file:") else location
        resolved = os.path.realpath(path)
        return "file://", tuple(part for part in Path(resolved).parts[1:])
    parsed = urlparse(location)
    scheme = parsed.scheme.lower()
    segments = tuple(segment for segment in parsed.path.split("/") if segment)
    if any(segment in (".", "..") for segment in segments):
        raise UntrustedSource(f"artifact location {location!r} climbs with '.' or '..'; refused")
    return f"{_SAME_SCHEME.get(scheme, scheme)}://{parsed.netloc}", segments


def is_within(location: str, root: str) -> bool:
    """Whether `location` is `root` or lies under it."""
    where, inside = _parts(location)
    base, prefix = _parts(root)
    return where == base and inside[: len(prefix)] == prefix


def check_source(location: str, roots: Iterable[str | None], allowed: Iterable[str], what: str) -> str:
    """`location`, once it is found inside one of `roots` or `allowed`; else `UntrustedSource`."""
    candidates = [root for root in (*roots, *allowed) if root]
    if any(is_within(location, root) for root in candidates):
        return location
    known = ", ".join(repr(root) for root in roots if root) or "none known"
    raise UntrustedSource(
        f"{what} is at {location!r}, outside the artifact roots the server uses for it ({known}); refused. "
        "If that location is trusted, allow its prefix with allowed_sources=[...] or MLCACHE_ALLOWED_SOURCES"
    )
