"""One timestamp representation everywhere: timezone-aware UTC datetimes."""

from __future__ import annotations

import re
from datetime import datetime, timezone


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)


def from_ms(ms: int | None) -> datetime | None:
    """MLflow's epoch milliseconds -> aware UTC datetime (None stays None)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def to_ms(when: datetime) -> int:
    """Aware (or naive, taken as UTC) datetime -> epoch milliseconds."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def parse_iso(text: str) -> datetime | None:
    """An ISO 8601 time as MLflow and the cache write it (`Z` or an offset), None when it is not one."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def canonical_rfc3339(text: str) -> str:
    """An RFC 3339 time in any offset and precision -> `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (UTC, ns, the
    form rclone lists in under UTC), so one instant has one spelling; other text is returned as is."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return text
    whole, fraction, offset = match.groups()
    if offset == "Z" and fraction is not None and len(fraction) == 9:
        return text
    when = datetime.fromisoformat(whole + ("+00:00" if offset == "Z" else offset)).astimezone(timezone.utc)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{(fraction or '').ljust(9, '0')}Z"
