#!/usr/bin/env python
"""Benchmark content-addressed dedup: pulling a model version that shares most bytes with one held.

One run does everything, against real local servers started here (`rclone serve s3` as the
S3-compatible store, `mlflow server` with artifact root `s3://bucket/mlartifacts`):

1. plain MLflow logs two versions of one registered model, each in its own run
   (`mlflow.log_artifacts` + `MlflowClient.create_model_version`): version 1 is one big file of
   random bytes and many 4 KiB files; version 2 shares 90 % of its bytes with it (the same big
   file, 90 % of the small files under other names) and the rest is new (the other small files are
   new, and one new file brings the new bytes to exactly the share asked). The shared share is
   computed from the sha256 of every file and printed exactly;
2. pulls of version 2, interleaved over N repetitions (fresh cache dirs / destinations each time):
     (a) mlcache full pull: `MlflowApi(...).get_model_artifact((name, "2"))` into an empty cache;
     (b) mlcache dedup pull: the same into a cache that already holds version 1 (pulled untimed);
         both cache the version's metadata first (`cache_model_version_meta`, untimed);
     - raw `rclone copy --transfers 16` of version 2's folder (context);
     - `mlflow.artifacts.download_artifacts("models:/<name>/2")` into a fresh dir (context: what
       users run instead; it downloads everything);
   and the disk use of each (b) cache after both pulls (distinct inodes under artifacts/ and blobs/)
   against the union of the two versions' distinct file contents;
3. bytes moved: one more, untimed, pull per tool through a counting proxy process in front of the
   store (tests/proxy.py, a fresh one per pull): response body bytes the store sent;
4. one instrumented pull of (b) and of (a), to show where their time goes;
5. bundles: `export_bundle(b1.tar.gz, [v1])`, `export_bundle(b2-diff.tar.gz, [v2], base=b1)` and
   `export_bundle(b2-full.tar.gz, [v2])`, compared by size; then b1 + b2-diff are imported into an
   empty cache, which must then serve version 2 offline and verify clean.

Usage: python benchmarks/bench_dedup.py [--quick] [--repeats 5] [--mlflow-repeats 2] [--shared 0.9]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import logging
import os
import platform
import stat
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from common import rmtree, start_store_and_server, tree_stats  # noqa: E402

import mlcache  # noqa: E402
from mlcache import artifact_store, blobs, hashing, pull_pipeline, rclone  # noqa: E402
from mlcache.plugins.mlflow import MlflowApi  # noqa: E402
from mlcache.rclone import find_rclone  # noqa: E402

from servers import Proxy, start_proxy  # noqa: E402

MiB = 1024 * 1024
SMALL_FILE_SIZE = 4096
MODEL = "bench-dedup"
TIME_TARGET = 0.15
BYTES_TARGET = 0.15
DISK_TOLERANCE = 0.02
BUNDLE_TARGET = 0.15


# ----------------------------------------------------------------------------- helpers
def random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            chunk = min(left, 8 * MiB)
            handle.write(os.urandom(chunk))
            left -= chunk


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digests(root: Path) -> dict[str, tuple[int, str]]:
    """Relative path -> (size, sha256) of every file under `root`."""
    out = {}
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            out[path.relative_to(root).as_posix()] = (path.stat().st_size, sha256_of(path))
    return out


@dataclass
class DiskUse:
    """What a cache dir holds under artifacts/ and blobs/, each inode once."""

    data: int  # st_size of distinct inodes outside blobs/store
    hints: int  # number of store-hash hint files (blobs/store/...)
    hint_bytes: int  # their st_size
    allocated: int  # st_blocks * 512 of all those inodes (diagnostic)
    files: int  # entry files seen (all names, links included)

    @property
    def total(self) -> int:
        return self.data + self.hint_bytes


def disk_use(cache: Path) -> DiskUse:
    seen: set[tuple[int, int]] = set()
    data = hints = hint_bytes = allocated = files = 0
    store = cache / "blobs" / "store"
    for top in (cache / "artifacts", cache / "blobs"):
        for folder, _dirs, names in os.walk(top):
            for name in names:
                path = Path(folder) / name
                info = path.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if top.name == "artifacts":
                    files += 1
                inode = (info.st_dev, info.st_ino)
                if inode in seen:
                    continue
                seen.add(inode)
                allocated += info.st_blocks * 512
                if store in path.parents:
                    hints += 1
                    hint_bytes += info.st_size
                else:
                    data += info.st_size
    return DiskUse(data, hints, hint_bytes, allocated, files)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4)
    return low, high


@contextlib.contextmanager
def endpoint(url: str | None) -> Iterator[None]:
    """Point mlcache and MLflow (both read `MLFLOW_S3_ENDPOINT_URL` when they reach the store) at
    `url` inside the block; nothing changes with None."""
    if url is None:
        yield
        return
    old = os.environ["MLFLOW_S3_ENDPOINT_URL"]
    os.environ["MLFLOW_S3_ENDPOINT_URL"] = url
    try:
        yield
    finally:
        os.environ["MLFLOW_S3_ENDPOINT_URL"] = old


class PullLog(logging.Handler):
    """Keeps the messages of `mlcache.pulls` (the "linked ..., downloaded ..." report; a plain
    download reports at DEBUG, a deduplicating one at INFO)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def pull_log() -> Iterator[PullLog]:
    logger = logging.getLogger("mlcache.pulls")
    handler = PullLog()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# ----------------------------------------------------------------------------- instrumentation
class Breakdown:
    """Wall-clock time of the steps of one mlcache pull, by wrapping mlcache's functions from the
    outside (nothing in mlcache is modified on disk; everything is restored after)."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self._restore: list[tuple[Any, str, Any]] = []
        self.missing: list[str] = []

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        orig = getattr(owner, attr, None)
        if orig is None:  # mlcache changed under the benchmark: that step is simply not broken out
            self.missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
            return
        secs, count = self.secs, self.count

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return orig(*args, **kwargs)
            finally:
                secs[label] += time.perf_counter() - t
                count[label] += 1

        self._restore.append((owner, attr, orig))
        setattr(owner, attr, wrapper)

    def __enter__(self) -> Breakdown:
        self.wrap(rclone.RcloneTransfer, "list", "listing")
        self.wrap(rclone.RcloneTransfer, "pull", "copy")
        self.wrap(pull_pipeline, "link_held", "link")
        self.wrap(pull_pipeline, "scan_tree", "scan")
        self.wrap(artifact_store.ArtifactStore, "commit", "commit")
        self.wrap(artifact_store.ArtifactStore, "install", "install")
        self.wrap(artifact_store.ArtifactStore, "_share_blobs", "share")
        self.wrap(blobs.BlobStore, "remember_many", "remember")
        self.wrap(hashing, "_sha256_of", "sha256")
        self.wrap(hashing, "_sha256_if_file", "sha256")
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, attr, orig in reversed(self._restore):
            setattr(owner, attr, orig)
        self._restore.clear()

    def rows(self, total: float, listing_first: bool) -> list[tuple[str, float, int]]:
        """The steps in order; the listing is a step of its own when the pull waits for it before
        the copy (the cache holds store hashes), else it runs beside the copy (a side note)."""
        s, c = self.secs, self.count
        commit, install, share, remember = (s.get(k, 0.0) for k in ("commit", "install", "share", "remember"))
        rows = [
            ("rclone lsjson --hash listing, awaited first", s.get("listing", 0.0), c.get("listing", 0)),
            ("hardlink held blobs into the stage", s.get("link", 0.0), c.get("link", 0)),
            ("rclone copy (of the rest: --files-from-raw)", s.get("copy", 0.0), c.get("copy", 0)),
            ("scan_tree of the stage (one stat per file)", s.get("scan", 0.0), c.get("scan", 0)),
            ("commit: hashes left, chmod, manifest build", commit - install - remember, c.get("commit", 0)),
            ("install: share blobs (link or check per file)", share, c.get("share", 0)),
            ("install: rename + manifest write (fsync)", install - share, c.get("install", 0)),
            ("remember store hashes (hint per file, no fsync)", remember, c.get("remember", 0)),
        ]
        if not listing_first:
            rows = [r for r in rows[1:] if r[2]]
        rows.append(("other (api, lock, lookups, size check, cleanup)", total - sum(r[1] for r in rows), 0))
        return rows


# ----------------------------------------------------------------------------- the benchmark
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.big_size = (32 if args.quick else 256) * MiB
        self.small_count = 200 if args.quick else 2000
        self.scratch = Path(tempfile.mkdtemp(prefix="mlcache-bench-dedup-", dir="/tmp"))
        self.rclone = find_rclone()
        self.s3: Any = None
        self.server: Any = None
        self.proxies: list[Proxy] = []
        self.times: dict[str, list[float]] = defaultdict(list)
        self.disk: list[DiskUse] = []
        self.lines: list[str] = []

    def out(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def fresh(self, prefix: str) -> Path:
        return self.scratch / f"{prefix}-{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------------ setup
    def start(self) -> None:
        self.s3, self.server = start_store_and_server(self.scratch)

    def generate(self) -> None:
        """v1: weights.bin + shards/part-*.bin; v2: the same weights.bin, the first `shared` of
        the small files as layers/layer-*.bin (other names, same bytes), new small files, and
        delta.bin (new) sized so that new bytes are (1 - shared) of v2's bytes."""
        t = time.perf_counter()
        src = self.scratch / "src"
        v1, v2 = src / "v1", src / "v2"
        n, s, frac = self.small_count, SMALL_FILE_SIZE, self.args.shared
        random_file(v1 / "weights.bin", self.big_size)
        for i in range(n):
            random_file(v1 / "shards" / f"part-{i:05d}.bin", s)
        kept = round(n * frac)
        (v2 / "layers").mkdir(parents=True)
        os.link(v1 / "weights.bin", v2 / "weights.bin")
        for j in range(n):
            target = v2 / "layers" / f"layer-{j:05d}.bin"
            if j < kept:  # a v1 file under another name (taken from the end: no path is kept)
                os.link(v1 / "shards" / f"part-{n - 1 - j:05d}.bin", target)
            else:
                random_file(target, s)
        shared_target = self.big_size + kept * s
        new_target = round(shared_target * (1 - frac) / frac)
        delta = new_target - (n - kept) * s
        if delta > 0:
            random_file(v2 / "delta.bin", delta)
        self.v1_files, self.v2_files = tree_digests(v1), tree_digests(v2)
        v1_digests = {d for _size, d in self.v1_files.values()}
        self.v1_bytes = sum(size for size, _ in self.v1_files.values())
        self.v2_bytes = sum(size for size, _ in self.v2_files.values())
        self.shared_bytes = sum(size for size, d in self.v2_files.values() if d in v1_digests)
        self.shared_files = sum(1 for _size, d in self.v2_files.values() if d in v1_digests)
        union = {d: size for size, d in (*self.v1_files.values(), *self.v2_files.values())}
        self.union_bytes = sum(union.values())
        self.new_bytes = self.v2_bytes - self.shared_bytes
        self.src = src
        print(
            f"generated data in {time.perf_counter() - t:.1f}s: v1 {len(self.v1_files)} files "
            f"{self.v1_bytes:,} B, v2 {len(self.v2_files)} files {self.v2_bytes:,} B, shared "
            f"{self.shared_bytes:,} B ({100 * self.shared_bytes / self.v2_bytes:.4f} %)"
        )

    def upload(self) -> None:
        import mlflow
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.server.url)
        exp_id = mlflow.create_experiment("mlcache-bench-dedup")
        client.create_registered_model(MODEL)
        self.runs: dict[str, str] = {}
        self.folders: dict[str, str] = {}
        for version, folder in (("1", self.src / "v1"), ("2", self.src / "v2")):
            t = time.perf_counter()
            with mlflow.start_run(experiment_id=exp_id, run_name=f"v{version}") as run:
                mlflow.log_artifacts(str(folder), artifact_path="model")
            source = f"{run.info.artifact_uri}/model"
            if not source.startswith("s3://bucket/mlartifacts/"):
                raise RuntimeError(f"unexpected artifact root {source!r}; expected s3://bucket/mlartifacts/...")
            mv = client.create_model_version(MODEL, source=source, run_id=run.info.run_id)
            if str(mv.version) != version:
                raise RuntimeError(f"registered version {mv.version}, expected {version}")
            self.runs[version] = run.info.run_id
            self.folders[version] = source[len("s3://") :]
            print(f"logged v{version} with mlflow.log_artifacts in {time.perf_counter() - t:.1f}s: {source}")
        rmtree(self.src)
        # The store computes a new object's MD5 on its first listing; do that once, untimed.
        env = {**os.environ, **self.s3.rclone_env("S3")}
        for folder in self.folders.values():
            subprocess.run(
                [self.rclone, "lsjson", "-R", "--hash", f"S3:{folder}"],
                env=env,
                check=True,
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )

    # ------------------------------------------------------------------ one measurement each
    def check(self, tool: str, path: Path) -> None:
        got = tree_stats(path)
        want = (len(self.v2_files), self.v2_bytes)
        if got != want:
            raise RuntimeError(f"{tool}: got {got[0]} files / {got[1]} bytes of v2, want {want[0]} / {want[1]}")

    def api(self, cache: Path) -> MlflowApi:
        return MlflowApi(tracking_uri=self.server.url, cache_dir=cache)

    def mlcache_full(self, proxy: Proxy | None = None, keep: bool = False) -> float:
        """(a): v2 into an empty cache."""
        cache = self.fresh("cache-a")
        api = self.api(cache)
        api.cache_model_version_meta((MODEL, "2"))  # not timed: only the artifact pull is
        with endpoint(proxy.url if proxy else None):
            t = time.perf_counter()
            path = api.get_model_artifact((MODEL, "2"))
            dt = time.perf_counter() - t
        self.check("mlcache full pull", path)
        if not keep:
            rmtree(cache)
        return dt

    def mlcache_dedup(self, proxy: Proxy | None = None, keep: bool = False, record_disk: bool = True) -> float:
        """(b): v2 into a cache that holds v1 (pulled first, untimed)."""
        cache = self.fresh("cache-b")
        api = self.api(cache)
        api.cache_model_version_meta((MODEL, "1"))
        api.cache_model_version_meta((MODEL, "2"))
        api.get_model_artifact((MODEL, "1"))
        with endpoint(proxy.url if proxy else None):
            t = time.perf_counter()
            path = api.get_model_artifact((MODEL, "2"))
            dt = time.perf_counter() - t
        self.check("mlcache dedup pull", path)
        if record_disk:
            self.disk.append(disk_use(cache))
        if keep:
            self.kept_cache = cache
        else:
            rmtree(cache)
        return dt

    def rclone_raw(self, proxy: Proxy | None = None) -> float:
        dest = self.fresh("rclone")
        env = {**os.environ, **self.s3.rclone_env("S3")}
        if proxy is not None:
            env["RCLONE_CONFIG_S3_ENDPOINT"] = proxy.url
        cmd = [self.rclone, "copy", "--transfers", "16", f"S3:{self.folders['2']}", str(dest)]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        dt = time.perf_counter() - t
        self.check("rclone", dest)
        rmtree(dest)
        return dt

    def mlflow_download(self, proxy: Proxy | None = None) -> float:
        import mlflow

        dest = self.fresh("mlflow")
        dest.mkdir()
        with endpoint(proxy.url if proxy else None):
            t = time.perf_counter()
            out = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{MODEL}/2", dst_path=str(dest), tracking_uri=self.server.url
            )
            dt = time.perf_counter() - t
        self.check("mlflow", Path(out))
        rmtree(dest)
        return dt

    TOOLS = (
        ("full", "(a) mlcache pull, empty cache", "mlcache_full"),
        ("dedup", "(b) mlcache pull, cache holds v1", "mlcache_dedup"),
        ("rclone", "raw rclone copy --transfers 16", "rclone_raw"),
        ("mlflow", "mlflow download_artifacts", "mlflow_download"),
    )

    # ------------------------------------------------------------------ phases
    def timed(self) -> None:
        """All tools interleaved per repetition (the order flips every repetition); MLflow's download
        in the first `--mlflow-repeats`."""
        a = self.args
        self.mlflow_reps = min(a.mlflow_repeats, a.repeats)
        for rep in range(a.repeats):
            for tool, _label, method in self.TOOLS if rep % 2 == 0 else reversed(self.TOOLS):
                if tool == "mlflow" and rep >= a.mlflow_repeats:
                    continue
                dt = getattr(self, method)()
                self.times[tool].append(dt)
                print(f"  rep {rep + 1} {tool:7s} {dt:7.3f}s", flush=True)

    def counted(self) -> None:
        """One untimed pull per tool through a fresh counting proxy: bytes the store sent."""
        self.moved: dict[str, dict[str, Any]] = {}
        for tool, _label, method in self.TOOLS:
            proxy = start_proxy(self.scratch / "proxy", self.s3.endpoint)
            self.proxies.append(proxy)
            try:
                before = proxy.stats()
                if "bytes_out" not in before:
                    raise RuntimeError("tests/proxy.py does not count bytes (no 'bytes_out' in its stats)")
                kwargs: dict[str, Any] = {}
                if tool == "dedup":
                    kwargs = {"keep": True, "record_disk": False}
                with pull_log() as said:
                    getattr(self, method)(proxy=proxy, **kwargs)
                after = proxy.stats()
            finally:
                proxy.stop()
            by_method = {m: after["by_method"].get(m, 0) - before["by_method"].get(m, 0) for m in after["by_method"]}
            by_method.pop("START", None)
            self.moved[tool] = {
                "bytes": after["bytes_out"] - before["bytes_out"],
                "requests": sum(by_method.values()),
                "by_method": {m: c for m, c in sorted(by_method.items()) if c},
                "said": [m for m in said.messages if m.startswith(f"runs:/{self.runs['2']}/") and "downloaded" in m],
            }
            print(
                f"  {tool:7s} {self.moved[tool]['bytes']:>13,} B through the store, "
                f"{self.moved[tool]['requests']} requests {self.moved[tool]['by_method']}",
                flush=True,
            )

    def breakdown(self) -> None:
        """One instrumented pull of each mlcache case."""
        self.bd_lines: list[str] = []
        for case, over_v1 in (("(b)", True), ("(a)", False)):
            cache = self.fresh("cache-bd")
            api = self.api(cache)
            api.cache_model_version_meta((MODEL, "2"))
            if over_v1:
                api.cache_model_version_meta((MODEL, "1"))
                api.get_model_artifact((MODEL, "1"))
            with Breakdown() as bd:
                t = time.perf_counter()
                api.get_model_artifact((MODEL, "2"))
                total = time.perf_counter() - t
            rmtree(cache)
            what = "cache holds v1" if over_v1 else "empty cache"
            lines = [f"  {case} {what}: total {total * 1000:.0f} ms"]
            for label, secs, count in bd.rows(total, listing_first=over_v1):
                calls = f"{count} call{'s' if count != 1 else ''}" if count else ""
                lines.append(f"    {label:50s} {secs * 1000:8.1f} ms {100 * secs / total:5.1f}%  {calls}")
            beside = "" if over_v1 else f"rclone lsjson listing {1000 * bd.secs.get('listing', 0.0):.0f} ms; "
            lines.append(
                f"    (beside the copy: {beside}sha256 of downloaded files summed over threads "
                f"{1000 * bd.secs.get('sha256', 0.0):.0f} ms, {bd.count.get('sha256', 0)} files)"
            )
            if bd.missing:
                lines.append(f"    (not found in mlcache, not broken out: {', '.join(bd.missing)})")
            self.bd_lines.extend(lines)

    def bundles(self) -> None:
        api = self.api(self.kept_cache)
        folder = self.scratch / "bundles"
        folder.mkdir()
        b1, diff, full = folder / "b1.tar.gz", folder / "b2-diff.tar.gz", folder / "b2-full.tar.gz"
        self.export_secs: dict[str, float] = {}
        for label, target, version, base in (
            ("b1", b1, "1", None),
            ("b2-diff", diff, "2", b1),
            ("b2-full", full, "2", None),
        ):
            t = time.perf_counter()
            api.export_bundle(target, model_versions=[(MODEL, version)], base=base)
            self.export_secs[label] = time.perf_counter() - t
            print(f"  exported {label} in {self.export_secs[label]:.1f}s: {target.stat().st_size:,} B", flush=True)
        self.bundle_sizes = {label: p.stat().st_size for label, p in (("b1", b1), ("b2-diff", diff), ("b2-full", full))}
        # The differential bundle alone must be refused by an empty cache, and restore v2 over b1.
        alone = MlflowApi(cache_dir=self.fresh("cache-alone"), offline_mode=True)
        try:
            alone.import_bundle(diff)
            self.alone = "imported (expected a refusal)"
        except mlcache.BundleError as exc:
            self.alone = "refused" if "differential" in str(exc) else f"refused: {str(exc)[:100]}"
        cache = self.fresh("cache-import")
        offline = MlflowApi(cache_dir=cache, offline_mode=True)
        t = time.perf_counter()
        offline.import_bundle(b1)
        offline.import_bundle(diff)
        self.import_secs = time.perf_counter() - t
        problems: list[str] = []
        try:
            self.check("import of b1 + b2-diff", offline.get_model_artifact((MODEL, "2")))
            self.check_v1(offline.get_model_artifact((MODEL, "1")))
        except Exception as exc:  # reported, not raised: this is the check
            problems.append(str(exc))
        problems.extend(offline.verify_cache())
        self.import_problems = problems
        self.import_disk = disk_use(cache)
        rmtree(cache)

    def check_v1(self, path: Path) -> None:
        got = tree_stats(path)
        want = (len(self.v1_files), self.v1_bytes)
        if got != want:
            raise RuntimeError(f"v1: got {got[0]} files / {got[1]} bytes, want {want[0]} / {want[1]}")

    # ------------------------------------------------------------------ report
    def paired(self, num: str, den: str) -> list[float]:
        """time(num) / time(den) per repetition in which both ran (interleaved, so a slow spell of
        the shared 2 cores hits both sides of a pair)."""
        return [a / b for a, b in zip(self.times[num], self.times[den])]  # noqa: B905 - mlflow runs fewer

    def describe(self) -> tuple[str, str]:
        n, kept = self.small_count, round(self.small_count * self.args.shared)
        delta = self.v2_bytes - self.big_size - n * SMALL_FILE_SIZE
        v1 = f"1 file x {self.big_size // MiB} MiB + {n} files x 4 KiB"
        v2 = (
            f"the same {self.big_size // MiB} MiB file + {kept} of v1's 4 KiB files under other names + "
            f"{n - kept} new 4 KiB files" + (f" + 1 new file of {fmt_bytes(delta)}" if delta > 0 else "")
        )
        return v1, v2

    def report(self, elapsed: float) -> bool:
        a = self.args
        self.out("")
        now = datetime.datetime.now().isoformat(timespec="seconds")
        self.out(f"mlcache bench_dedup{' --quick' if a.quick else ''}: {now}")
        self.out(
            f"machine: {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}), {platform.machine()}, "
            f"Python {platform.python_version()}, {self.versions()}"
        )
        self.out("store: rclone serve s3 on 127.0.0.1 (local disk, page cache warm); versions logged by plain MLflow")
        v1, v2 = self.describe()
        self.out(f"v1: {v1} = {self.v1_bytes:,} B, {len(self.v1_files)} files")
        self.out(f"v2: {v2} = {self.v2_bytes:,} B, {len(self.v2_files)} files")
        self.out(
            f"shared (sha256 of every file): {self.shared_files} files, {self.shared_bytes:,} B of v2's "
            f"{self.v2_bytes:,} B = {100 * self.shared_bytes / self.v2_bytes:.4f} %; new in v2: {self.new_bytes:,} B; "
            f"union of distinct contents {self.union_bytes:,} B"
        )
        self.out(
            f"repetitions: {a.repeats} (MLflow download: first {self.mlflow_reps}), interleaved, fresh cache / "
            "destination each; metadata cached first (untimed); bytes: one more pull per tool through a "
            "counting proxy (response body bytes the store sent)"
        )
        self.out("")
        head = (
            f"{'pull of v2':36s} {'best s':>7s} {'median s':>8s} {'MiB/s':>7s} "
            f"{'bytes from the store':>21s} {'requests':>8s}"
        )
        self.out(head)
        self.out("-" * len(head))
        for tool, label, _ in self.TOOLS:
            times = self.times[tool]
            moved = self.moved[tool]
            med = statistics.median(times)
            self.out(
                f"{label:36s} {min(times):7.3f} {med:8.3f} {self.v2_bytes / MiB / med:7.1f} "
                f"{moved['bytes']:>21,} {moved['requests']:>8}"
            )
        self.out("")
        passed = True

        def row(label: str, value: str, target: str, ok: bool | None) -> None:
            met = "" if ok is None else ("yes" if ok else "NO")
            self.out(f"  {label:58s} {value:>10s}  {target:10s} {met}")

        self.out(f"  {'Targets':58s} {'value':>10s}  {'target':10s} met")
        ratios = self.paired("dedup", "full")
        r = statistics.median(ratios)
        passed &= r <= TIME_TARGET
        row("time (b) / (a), paired median", f"{r:.3f}x", f"<= {TIME_TARGET:.2f}x", r <= TIME_TARGET)
        low, high = quartiles(ratios)
        row("  paired ratios, 1st-3rd quartile", f"{low:.3f}-{high:.3f}", "(spread)", None)
        best = min(self.times["dedup"]) / min(self.times["full"])
        row("  time (b) / (a), best runs", f"{best:.3f}x", "(diag.)", None)
        b = self.moved["dedup"]["bytes"] / self.moved["full"]["bytes"]
        passed &= b <= BYTES_TARGET
        row("bytes from the store (b) / (a), counting proxy", f"{b:.3f}x", f"<= {BYTES_TARGET:.2f}x", b <= BYTES_TARGET)
        row("  (b)'s bytes / the new bytes of v2", f"{self.moved['dedup']['bytes'] / self.new_bytes:.3f}x", "", None)
        worst = max(self.disk, key=lambda d: abs(d.total / self.union_bytes - 1))
        d = worst.total / self.union_bytes
        ok = abs(d - 1) <= DISK_TOLERANCE
        passed &= ok
        row("disk after v1 + v2 / union of distinct contents (worst rep)", f"{d:.4f}x", "within 2 %", ok)
        row(
            f"  {worst.data:,} B data + {worst.hints} hints, {worst.hint_bytes:,} B",
            f"{worst.total:,}",
            "",
            None,
        )
        row("  allocated (st_blocks) / union", f"{worst.allocated / self.union_bytes:.4f}x", "(diag.)", None)
        row(
            "  v1 + v2 as full copies / union",
            f"{(self.v1_bytes + self.v2_bytes) / self.union_bytes:.4f}x",
            "(diag.)",
            None,
        )
        sz = self.bundle_sizes
        br = sz["b2-diff"] / sz["b2-full"]
        passed &= br <= BUNDLE_TARGET
        row("bundle b2-diff.tar.gz / b2-full.tar.gz", f"{br:.4f}x", f"<= {BUNDLE_TARGET:.2f}x", br <= BUNDLE_TARGET)
        for label in ("b1", "b2-diff", "b2-full"):
            row(f"  {label}.tar.gz: {sz[label]:,} B, export {self.export_secs[label]:.1f}s", "", "", None)
        ok = not self.import_problems
        passed &= ok
        row(
            f"import b1, then b2-diff, into an empty cache ({self.import_secs:.1f}s)",
            "ok" if ok else "FAILED",
            "",
            ok,
        )
        for problem in self.import_problems[:5]:
            self.out(f"      {problem}")
        row(
            "  its disk / union of distinct contents",
            f"{self.import_disk.total / self.union_bytes:.4f}x",
            "(diag.)",
            None,
        )
        ok = self.alone == "refused"
        passed &= ok
        row("b2-diff alone into an empty cache", self.alone, "refused", ok)
        self.out("")
        self.out(f"  {'Peers (context, no targets)':58s} {'value':>10s}")
        for peer, name in (("mlflow", "mlflow download_artifacts"), ("rclone", "raw rclone copy")):
            pr = self.paired(peer, "dedup")
            row(f"(b) speedup over {name}, paired median", f"{statistics.median(pr):.2f}x", "", None)
            row(
                f"  bytes from the store: {name} / (b)",
                f"{self.moved[peer]['bytes'] / self.moved['dedup']['bytes']:.2f}x",
                "",
                None,
            )
        pr = self.paired("rclone", "full")
        row("(a) speedup over raw rclone copy, paired median", f"{statistics.median(pr):.2f}x", "", None)
        pr = self.paired("mlflow", "full")
        row("(a) speedup over mlflow download_artifacts, paired median", f"{statistics.median(pr):.2f}x", "", None)
        self.out("")
        for tool in ("full", "dedup"):
            for said in self.moved[tool]["said"]:
                self.out(f"mlcache's pull report, {tool}: {said}")
        self.out("")
        self.out("Where the time of one mlcache pull of v2 goes (instrumented runs, wall clock):")
        for line in self.bd_lines:
            self.out(line)
        self.out("")
        self.out(f"total benchmark time {elapsed:.0f}s")
        return passed

    def versions(self) -> str:
        import mlflow

        rc = subprocess.run([self.rclone, "version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
        return f"{rc}, mlflow {mlflow.__version__}, mlcache {mlcache.__version__}"

    def stop(self) -> None:
        for server in (*self.proxies, self.server, self.s3):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        rmtree(self.scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB + 200 small files, 3 repetitions (smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 5; --quick 3)")
    parser.add_argument("--mlflow-repeats", type=int, default=2, help="MLflow downloads (the first N repetitions)")
    parser.add_argument("--shared", type=float, default=0.9, help="share of v2's bytes that v1 holds (default 0.9)")
    args = parser.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if not 0 < args.shared < 1:
        parser.error("--shared must be between 0 and 1")

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    start = time.perf_counter()
    bench = Bench(args)
    print(f"cores: {os.cpu_count()}; scratch {bench.scratch}")
    try:
        bench.start()
        bench.generate()
        bench.upload()
        print("timed pulls:")
        bench.timed()
        print("bytes through the store (counting proxy, untimed):")
        bench.counted()
        bench.breakdown()
        print("bundles:")
        bench.bundles()
        passed = bench.report(time.perf_counter() - start)
    finally:
        bench.stop()
    print("all targets met" if passed else "SOME TARGETS NOT MET")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
