"""One timestamp representation everywhere: timezone-aware UTC datetimes."""

from __future__ import annotations

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
