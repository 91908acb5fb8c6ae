"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcache.staging import remove_tree as rmtree

__all__ = ["calls_per_second", "rmtree", "start_store_and_server", "tree_stats"]


def start_store_and_server(scratch: Path) -> tuple[Any, Any]:
    """`rclone serve s3` (bucket `bucket`) and `mlflow server` (artifact root
    `s3://bucket/mlartifacts`) on 127.0.0.1, with the S3 variables set in this process and MLflow's
    client pointed at the server, so MLflow and mlcache both reach the store."""
    import mlflow

    from servers import start_mlflow_server, start_s3_server

    t = time.perf_counter()
    s3 = start_s3_server(scratch / "s3")
    s3.bucket("bucket")
    os.environ.update(s3.env)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    server = start_mlflow_server(scratch / "mlflow", artifact_root="s3://bucket/mlartifacts", env=s3.env)
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
