"""The deadline of the backend call in progress: one per call, retries included.

The base sets it around each hook call (`Backend.call`); a plugin that makes network requests
bounds each of them by the time left (`remaining`), so no call outlasts its deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("mlcache_deadline", default=None)


@contextmanager
def scope(deadline: float | None) -> Iterator[None]:
    """Make `deadline` (a `time.monotonic()` value, None for none) the current one in this block."""
    token = _deadline.set(deadline)
    try:
        yield
    finally:
        _deadline.reset(token)


def current() -> float | None:
    """The deadline of the call in progress (a `time.monotonic()` value), None outside one."""
    return _deadline.get()


def remaining() -> float | None:
    """Seconds left before the current deadline (never negative), None without one."""
    deadline = _deadline.get()
    return None if deadline is None else max(0.0, deadline - time.monotonic())
