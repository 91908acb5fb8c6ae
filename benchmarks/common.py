"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcache.staging import remove_tree as rmtree

__all__ = ["calls_per_second", "rmtree", "tree_stats"]


def tree_stats(path: Path) -> tuple[int, int]:
    """(number of files, total bytes) of a file or folder (symlinks not followed)."""
    if path.is_file():
        return 1, path.stat().st_size
    count = size = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            file = Path(folder) / name
            if not file.is_symlink():
                count += 1
                size += file.stat().st_size
    return count, size


def calls_per_second(fn: Callable[[], Any], seconds: float) -> tuple[float, int]:
    """Calls of `fn` per second over about `seconds` (after one warm-up call), and how many ran."""
    fn()
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        if (n & 15) == 0 and time.perf_counter() >= deadline:
            break
    return n / (time.perf_counter() - start), n
