"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "calls_per_second",
    "code_state",
    "disk_bytes",
    "file_creation_us",
    "rmtree",
    "s3_endpoint",
    "snapshot_mlcache",
    "start_store_and_server",
    "time_file_creation",
    "tree_stats",
]

REPO = Path(__file__).resolve().parent.parent


def rmtree(path: Path) -> None:
    """Delete a file or a tree (read-only files included), best effort, without following links."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def snapshot_mlcache(folder: Path, attempts: int = 6, wait: float = 10.0) -> Path:
    """Copy the `mlcache` package as it is now into `folder` and import it from there: in this
    process (`sys.path`) and in every child started after (`PYTHONPATH`).

    The working tree may change while a benchmark runs (someone editing `mlcache/`); with the
    snapshot, the benchmark's process and its children all measure one and the same code. A copy
    that does not import (an edit caught half-way) is taken again, up to `attempts` times, `wait`
    seconds apart. Call it before anything imports `mlcache`."""
    if "mlcache" in sys.modules:
        raise RuntimeError("snapshot_mlcache() must run before mlcache is imported")
    check = "import mlcache, mlcache.plugins.mlflow"
    error = ""
    for attempt in range(1, attempts + 1):
        rmtree(folder)
        shutil.copytree(REPO / "mlcache", folder / "mlcache", ignore=shutil.ignore_patterns("__pycache__"))
        env = {**os.environ, "PYTHONPATH": str(folder)}
        done = subprocess.run(
            [sys.executable, "-c", check], cwd=folder, env=env, capture_output=True, text=True, timeout=120
        )
        if done.returncode == 0:
            break
        error = (done.stderr.strip().splitlines() or ["?"])[-1]
        print(f"mlcache snapshot {attempt}/{attempts} does not import ({error}); again in {wait:g}s", flush=True)
        time.sleep(wait)
    else:
        raise RuntimeError(f"no importable snapshot of mlcache/ after {attempts} attempts: {error}")
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return folder


def code_state() -> str:
    """The commit of the checkout and how many files under mlcache/ differ from it (for reports)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--", "mlcache").splitlines() if line.strip()]
    return f"{head}" + (f" + {len(changed)} uncommitted file(s) under mlcache/" if changed else " (clean)")


@contextlib.contextmanager
def s3_endpoint(url: str | None) -> Iterator[None]:
    """Point MLflow's boto3 and mlcache (both read `MLFLOW_S3_ENDPOINT_URL` when they reach the
    store) at `url` inside the block; nothing changes with None."""
    if url is None:
        yield
        return
    old = os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    os.environ["MLFLOW_S3_ENDPOINT_URL"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_S3_ENDPOINT_URL", None)
        else:
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = old


def start_store_and_server(scratch: Path) -> tuple[Any, Any]:
    """`rclone serve s3` (bucket `bucket`) and `mlflow server` (artifact root
    `s3://bucket/mlartifacts`) on 127.0.0.1, with the S3 variables set in this process and MLflow's
    client pointed at the server, so MLflow and mlcache both reach the store."""
    import mlflow

    from servers import start_mlflow_server, start_s3_server

    t = time.perf_counter()
    s3 = start_s3_server(scratch / "s3")
    try:
        s3.bucket("bucket")
        os.environ.update(s3.env)
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        server = start_mlflow_server(scratch / "mlflow", artifact_root="s3://bucket/mlartifacts", env=s3.env)
    except BaseException:  # a failed or interrupted start leaves no store behind
        s3.stop()
        raise
    mlflow.set_tracking_uri(server.url)
    print(f"servers up in {time.perf_counter() - t:.1f}s: mlflow {server.url}, s3 {s3.endpoint}")
    return s3, server


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


def disk_bytes(path: Path) -> int:
    """Bytes a folder takes on disk, as `mlcache du` counts them: each inode once (an entry's file
    and its blob are one hardlinked inode), links not followed; 0 when it does not exist."""
    from mlcache.disk_usage import inodes_of

    return sum(inodes_of(path)[0].values())


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


def time_file_creation(folder: Path, contents: list[bytes]) -> float:
    """Seconds to create one new file per item of `contents` in the new folder `folder` (bare
    open/write/close, one thread, no sync; the files are kept)."""
    folder.mkdir(parents=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    start = time.perf_counter()
    for i, data in enumerate(contents):
        fd = os.open(folder / f"{i}.json", flags, 0o644)
        os.write(fd, data)
        os.close(fd)
    return time.perf_counter() - start


def write_and_delete(path: Path, size: int) -> float:
    """Seconds to write `size` bytes (zeros, 8 MiB at a time, no sync) to the new file `path`,
    which is then deleted."""
    buffer = bytes(8 << 20)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(-(-size // len(buffer))):
            os.write(fd, buffer)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    path.unlink()
    return seconds


def prime_page_cache(folder: Path, size: int) -> None:
    """Write and delete `size` bytes in `folder`, untimed, right before a timed pull of a big file,
    so every tool starts alike. On this machine (a KVM guest with free page reporting) a new 256 MiB
    file took 1.7-2.2 s to write when nothing had been freed in the seconds before and 0.06-0.09 s
    right after as much was deleted (a separate test, 4 of 4 and 5 of 5). Priming does not remove
    every slow first repetition; `page_cache_write_s` reports what the machine does at the start."""
    write_and_delete(folder / "page-cache-primer", size)


def page_cache_write_s(folder: Path, size: int, idle: float = 4.0) -> tuple[float, float]:
    """(seconds to write `size` bytes as a new file after `idle` seconds without writes, the same
    right after that file was deleted): what `prime_page_cache` takes out of the timings."""
    time.sleep(idle)
    cold = write_and_delete(folder / "page-cache-cold", size)
    return cold, write_and_delete(folder / "page-cache-primed", size)


def file_creation_us(folder: Path, count: int = 1000) -> float:
    """Microseconds per new 600-byte file (`time_file_creation`): the filesystem's state when a
    benchmark starts. ext4 without a journal pays hundreds of microseconds per file for minutes
    after mass deletions."""
    return time_file_creation(folder, [b"x" * 600] * count) / count * 1e6
