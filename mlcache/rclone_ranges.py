"""Big files of an rclone pull by ranges (`ranged`), beside `rclone copy` of the other files.

A pull with its listing (`pull_beside_listing`) runs two things at once: `rclone copy` of the
other files, and `ranged.pull_ranged` for the big ones, several range streams per file from one
range server (`range_server`). Both feed one progress reporter. The copy need not wait for the
listing (`EarlyCopy`): limited to files below the ranged size, it starts with the listing and the
big files join once they are known.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from .names import is_normalized_relative
from .progress import TransferProgress
from .ranged import RangedSettings, RangeSource, pull_ranged
from .remotes import literal_pattern
from .transfer import Listing, OnFile, PullPlan, RemoteFile


class SharedProgress:
    """One reporter fed by the copies (each through a `copy_part` of its own: rclone's running
    totals) and by the ranged streams (`advanced`, bytes as they land)."""

    def __init__(self, sink: TransferProgress | None) -> None:
        self._sink = sink
        self._lock = threading.Lock()
        self._parts: list[tuple[int, int | None]] = []
        self._ranged = 0
        self._ranged_total = 0

    def expect_ranged(self, total: int) -> None:
        with self._lock:
            self._ranged_total += total

    def advanced(self, n: int) -> None:
        with self._lock:
            self._ranged += n
        self._report()

    def _report(self) -> None:
        if self._sink is None:
            return
        with self._lock:
            done = self._ranged + sum(copied for copied, _ in self._parts)
            totals = [total for _, total in self._parts]
            total = None if None in totals else sum(t for t in totals if t is not None) + self._ranged_total
        self._sink.update(done, total, None)

    def copy_part(self) -> TransferProgress:
        """A reporter for one copy; its figures count beside the others' (a copy stopped early
        reports `update(0, 0)` to take its bytes back out)."""
        shared = self
        with self._lock:
            slot = len(self._parts)
            self._parts.append((0, None))

        class _CopyPart:
            def update(self, done: int, total: int | None, rate: float | None = None) -> None:
                with shared._lock:
                    shared._parts[slot] = (done, total)
                shared._report()

            def close(self, ok: bool = True) -> None:
                return

        return _CopyPart()

    def close(self, ok: bool) -> None:
        if self._sink is not None:
            self._sink.close(ok)


Started = Callable[[subprocess.Popen[str]], None]
"""Told of an `rclone copy` process as it starts."""


StartCopy = Callable[[TransferProgress, OnFile | None, Started], None]
"""`start(progress, on_file, started)`: run one `rclone copy` to its end, handing its process to
`started` first."""


class EarlyCopy:
    """An `rclone copy` running on a thread of its own while the listing is still being taken.
    `cancel` stops it when it should not go on: the pull failed, or the listing showed a single big
    file (rclone copies a single-file source whatever its size filter says)."""

    def __init__(self, start: StartCopy, progress: TransferProgress, on_file: OnFile | None) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._cancelled = False
        self._completed = False
        self._on_file = on_file
        self._error: BaseException | None = None
        guarded = None if on_file is None else self._guarded
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._run, start, progress, guarded), daemon=True
        )
        self._thread.start()

    def _run(self, start: StartCopy, progress: TransferProgress, on_file: OnFile | None) -> None:
        try:
            start(progress, on_file, self._started)
            self._completed = True
        except BaseException as exc:  # handed over by `result` (or dropped by `cancel`)
            self._error = exc

    def _started(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._proc = proc
            if self._cancelled:
                proc.kill()

    def _guarded(self, rel: str, staged: str | None = None, digest: str | None = None) -> None:
        if not self._cancelled and self._on_file is not None:
            self._on_file(rel, staged=staged, digest=digest)

    def result(self) -> None:
        """Wait for the copy; raise its error."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self, partial: Path | None) -> bool:
        """Stop the copy unless it has ended; True if it did not complete. Then `partial`, the file
        it may have begun, is removed (never followed: a link would be removed, not its target)."""
        with self._lock:
            if self._thread.is_alive():
                self._cancelled = True
                if self._proc is not None:
                    with contextlib.suppress(OSError):
                        self._proc.kill()
        self._thread.join()
        if self._completed:
            return False
        if partial is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
        return True


class CopyGuard:
    """The `rclone copy` processes of a pull, stopped together once its ranged side has failed:
    their files are not wanted any more, and the failure should not wait for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: list[subprocess.Popen[str]] = []
        self.halted = False

    def started(self, proc: subprocess.Popen[str]) -> None:
        with self._lock:
            self._procs.append(proc)
            if self.halted:
                _kill(proc)

    def also(self, started: Started) -> Started:
        """`started`, then `self.started`."""

        def both(proc: subprocess.Popen[str]) -> None:
            started(proc)
            self.started(proc)

        return both

    def halt_if_failed(self, ranged: Future[None]) -> None:
        """Stop every copy, now and to come, if the ranged side ended with an error."""
        if ranged.exception() is None:
            return
        with self._lock:
            self.halted = True
            for proc in self._procs:
                _kill(proc)


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        proc.kill()


CopyRun = Callable[[TransferProgress, OnFile | None, list[str], Started | None], None]
"""`copy(progress, on_file, selection, started)`: one `rclone copy` of the pull's source into its
destination, with extra selection flags, handing its process to `started` (when given) first."""

CopyPaths = Callable[[TransferProgress, OnFile | None, list[str], Started], None]
"""`copy_paths(progress, on_file, paths, started)`: one `rclone copy` of just those paths of the
source, handing its process to `started` first."""


def pull_beside_listing(
    plan: PullPlan,
    only: Sequence[str] | None,
    dest: Path,
    settings: RangedSettings,
    progress: TransferProgress | None,
    on_file: OnFile | None,
    copy: CopyRun,
    copy_paths: CopyPaths,
    serve_ranges: Callable[[bool], AbstractContextManager[RangeSource]],
) -> None:
    """A pull with the caller's listing: the files below the ranged size by `rclone copy`, the
    big ones by ranges beside it (from the range server `serve_ranges(is_dir)` runs for them).
    Without `only` (the listing is still being taken), the copy starts at once, limited by size,
    and the big files join once the listing names them."""
    shared = SharedProgress(progress)
    early: EarlyCopy | None = None
    stop = threading.Event()
    guard = CopyGuard()
    ok = False
    try:
        if only is None:
            limit = ["--max-size", f"{settings.min_size - 1}B"]
            early_part = shared.copy_part()

            def early_copy(part: TransferProgress, guarded: OnFile | None, started: Started) -> None:
                copy(part, guarded, limit, guard.also(started))

            early = EarlyCopy(early_copy, early_part, on_file)
        listing = plan.listing()
        big = big_files(listing, None if only is None else list(only), settings)
        ranged = {item.path for item in big}
        leftovers: list[str] = []
        counted = False
        if early is None:
            rest = [item.path for item in listing.selected(only) if item.path not in ranged]
        elif not listing.is_dir:
            rest = []
            if big:
                partial = dest.joinpath(*big[0].path.split("/"))
                if not early.cancel(partial) and _has_size(partial, big[0].size):
                    big = []
                else:
                    shared.expect_ranged(big[0].size)
                    counted = True
                    early_part.update(0, 0)  # what the stopped copy had counted is not kept
                early = None
        else:
            rest = []
            leftovers = [item.path for item in listing.files if settings.wants(item) and item.path not in ranged]
        if big and not counted:
            shared.expect_ranged(sum(item.size for item in big))
        with ThreadPoolExecutor(max_workers=1) as pool:
            done = None
            if big:
                done = pool.submit(
                    contextvars.copy_context().run,
                    pull_big_files,
                    listing,
                    big,
                    settings,
                    dest,
                    serve_ranges,
                    shared,
                    on_file,
                    plan.resume_dir,
                    stop,
                )
                done.add_done_callback(guard.halt_if_failed)
            try:
                if early is not None:
                    early.result()
                if rest:
                    copy_paths(shared.copy_part(), on_file, rest, guard.started)
                if leftovers:
                    # big files the ranges leave alone (names a stream cannot take): by size, so
                    # no line-based list has to carry their names
                    excluded = [arg for path in ranged for arg in ("--exclude", f"/{literal_pattern(path)}")]
                    copy(shared.copy_part(), on_file, ["--min-size", f"{settings.min_size}B", *excluded], guard.started)
            except BaseException:
                # the ranged side's error is the cause only if it had stopped the copies before
                # this: once `stop` is set below, it fails too, for the error raised here
                halted_first = guard.halted
                stop.set()
                failure = None
                if done is not None:
                    try:
                        done.result()
                    except Exception as exc:
                        failure = exc
                if failure is not None and halted_first:
                    raise failure from None
                raise
            if done is not None:
                done.result()
        ok = True
    finally:
        if early is not None:
            early.cancel(None)
        shared.close(ok)


def big_files(listing: Listing, only: list[str] | None, settings: RangedSettings) -> list[RemoteFile]:
    """The listed (and selected) files to pull by ranges: big enough, with a name that is a plain
    relative path (anything else is left to the copy, and to the tree's checks)."""
    return [
        item
        for item in listing.selected(only)
        if settings.wants(item) and "\n" not in item.path and is_normalized_relative(item.path)
    ]


def pull_big_files(
    listing: Listing,
    big: list[RemoteFile],
    settings: RangedSettings,
    dest: Path,
    serve_ranges: Callable[[bool], AbstractContextManager[RangeSource]],
    progress: SharedProgress,
    on_file: OnFile | None,
    resume_dir: Path,
    stop: threading.Event,
) -> None:
    """Pull the `big` files of `listing` by ranges into `dest`, from one range server for them
    all (`progress` was told to expect their bytes); once `stop` is set or a stream fails, the
    requests in progress are interrupted, so a stalled store holds neither."""
    base = listing.url.rstrip("/")
    files = [
        (item, f"{base}/{item.path}" if listing.is_dir else listing.url, dest.joinpath(*item.path.split("/")))
        for item in big
    ]
    with serve_ranges(listing.is_dir) as source:
        pull_ranged(files, source.open_range, resume_dir, settings, on_file, progress.advanced, stop, source.interrupt)


def _has_size(path: Path, size: int) -> bool:
    """A regular file of `size` bytes is at `path` (not followed if a link)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == size
