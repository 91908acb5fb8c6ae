"""Progress of long transfers, always on stderr: a one-line bar on a terminal, a plain line every
few seconds elsewhere (CI logs), nothing when asked to be quiet.

A transfer reports `update(done, total, rate)`; the reporter decides what to show. The bar is
drawn with a carriage return only (no other escape codes) and always fits the terminal: the label
(what the user asked for) is shortened first, then the bar; percentage, bytes, rate and ETA stay
visible from 60 columns up.
"""

from __future__ import annotations

import os
import sys
import time
import unicodedata
from collections.abc import Callable
from typing import Protocol, TextIO

from .settings import env_seconds

PLAIN_EVERY = 5.0
"""Seconds between two progress lines when stderr is not a terminal (`MLCACHE_PROGRESS_INTERVAL`)."""
BAR_EVERY = 0.1
"""Seconds between two redraws of the bar."""


class TransferProgress(Protocol):
    """Told how a transfer advances; `total` is None while unknown, `rate` in bytes per second."""

    def update(self, done: int, total: int | None, rate: float | None = None) -> None: ...

    def close(self, ok: bool = True) -> None: ...


ProgressFactory = Callable[[str], TransferProgress]
"""Makes the reporter of one transfer, given what to call it."""


def human_size(n: float) -> str:
    """Bytes in binary units: `512 B`, `4.0 KiB`, `1.5 GiB`."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def human_duration(seconds: float) -> str:
    """`42s`, `3m05s`, `1h02m`."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def cells(text: str) -> int:
    """How many terminal cells `text` takes: wide (East Asian) characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def shorten(text: str, width: int) -> str:
    """`text` in at most `width` cells, its middle elided (both ends of a URI say the most)."""
    if cells(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    head, tail = list(text[: len(text) // 2]), list(text[len(text) // 2 :])
    while cells("".join(head) + "".join(tail)) + 1 > width:
        if len(head) >= len(tail) and head:
            head.pop()
        elif tail:
            tail.pop(0)
    return f"{''.join(head)}…{''.join(tail)}"


def _printable(label: str) -> str:
    """A label with its control characters (terminal escapes) shown as `?`."""
    return "".join(ch if ch.isprintable() else "?" for ch in label)


def _figures(done: int, total: int | None, rate: float | None) -> str:
    """`45%  120.0 MiB/256.0 MiB  80.2 MiB/s  ETA 2s` (the parts known so far)."""
    parts = []
    if total:
        parts.append(f"{min(100, done * 100 // total):>3d}%")
        parts.append(f"{human_size(done)}/{human_size(total)}")
    else:
        parts.append(human_size(done))
    if rate:
        parts.append(f"{human_size(rate)}/s")
        if total and total > done:
            parts.append(f"ETA {human_duration((total - done) / rate)}")
    return "  ".join(parts)


class BarProgress:
    """A one-line bar on a terminal, redrawn in place at most every `BAR_EVERY` seconds."""

    def __init__(self, label: str, stream: TextIO | None = None, columns: int | None = None) -> None:
        self.label = _printable(label)
        self.stream = stream or sys.stderr
        self.columns = columns
        self._drawn = 0.0
        self._last = ""
        self._started = time.monotonic()

    def _width(self) -> int:
        if self.columns is not None:
            return self.columns
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            return 80

    def render(self, done: int, total: int | None, rate: float | None) -> str:
        """The line for this state, in at most the terminal's width minus one cell (no wrap, ever):
        the figures always, then as much of the label as fits, then a bar in what is left."""
        room = max(20, self._width() - 1)
        figures = _figures(done, total, rate)
        free = room - cells(figures) - 1
        label = shorten(self.label, max(0, free))
        bar_room = min(40, free - cells(label) - 3)
        if bar_room < 8:
            return f"{label} {figures}" if label else figures
        filled = min(bar_room, done * bar_room // total) if total else 0
        return f"{label} [{'#' * filled}{'.' * (bar_room - filled)}] {figures}"

    def update(self, done: int, total: int | None, rate: float | None = None) -> None:
        now = time.monotonic()
        if now - self._drawn < BAR_EVERY and not (total and done >= total):
            return
        self._drawn = now
        line = self.render(done, total, rate)
        self.stream.write("\r" + line.ljust(len(self._last)))
        self.stream.flush()
        self._last = line

    def close(self, ok: bool = True) -> None:
        if self._last:
            self.stream.write("\n")
            self.stream.flush()


class LineProgress:
    """Plain lines for a log: one every `every` seconds while the transfer runs, one when it ends."""

    def __init__(self, label: str, stream: TextIO | None = None, every: float | None = None) -> None:
        self.label = _printable(label)
        self.stream = stream or sys.stderr
        self.every = env_seconds("MLCACHE_PROGRESS_INTERVAL", PLAIN_EVERY, minimum=0.1) if every is None else every
        self._started = time.monotonic()
        self._printed = self._started
        self._state: tuple[int, int | None, float | None] = (0, None, None)

    def update(self, done: int, total: int | None, rate: float | None = None) -> None:
        self._state = (done, total, rate)
        now = time.monotonic()
        if now - self._printed >= self.every:
            self._printed = now
            self.stream.write(f"pulling {self.label}: {_figures(done, total, rate)}\n")
            self.stream.flush()

    def close(self, ok: bool = True) -> None:
        elapsed = time.monotonic() - self._started
        if ok and elapsed >= self.every:
            done = self._state[0]
            self.stream.write(f"pulled {self.label}: {human_size(done)} in {human_duration(elapsed)}\n")
            self.stream.flush()


def auto_progress(label: str) -> TransferProgress:
    """A bar when stderr is a terminal, plain lines otherwise."""
    return BarProgress(label) if sys.stderr.isatty() else LineProgress(label)
