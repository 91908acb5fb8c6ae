"""Pausing Python's cyclic garbage collector over bulk work that makes no reference cycles.

A page of a write-through allocates tens of thousands of dicts and tuples that live until the page
is written. Each allocation counts towards a collection, and the survivors are promoted until a
full collection walks the process's whole heap: with MLflow imported that is about 0.1 s each, two
or three per 5,000 runs. The work paused here frees everything it makes by reference counting, so
a pause collects nothing later that it would have collected now. The pause is process-wide: cyclic
garbage other threads make meanwhile waits for its end (at most a page and its sync).

Pauses nest and may overlap across threads: the collector is enabled again when the last one ends,
and only if it was enabled when the first began. A `gc.disable()` made by other code while a pause
runs is undone when the pause ends; one made before it is kept.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Within this block (in every thread), no cyclic collection runs."""
    global _depth, _was_enabled
    entered = False
    try:
        with _lock:
            if _depth == 0:
                _was_enabled = gc.isenabled()
            _depth += 1
            entered = True
            gc.disable()
        yield
    finally:
        if entered:
            with _lock:
                _depth -= 1
                if _depth == 0 and _was_enabled:
                    gc.enable()
