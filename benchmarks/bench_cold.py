#!/usr/bin/env python
"""Benchmark big cold pulls of registered model versions against peers measured in the same run.

One run does everything, against real local servers started here (`rclone serve s3` as the
S3-compatible store, `mlflow server` 3.17 with artifact root `s3://bucket/mlartifacts`; scratch
under /tmp, all stopped and deleted at the end). Plain MLflow logs three runs and registers one
version of a model per run, the files under the run's `model/` folder:
`bench-cold-big` (one file of 256 MiB), `bench-cold-small` (2,000 files of 4 KiB) and
`bench-cold-huge` (one file of 2 GiB); `--quick`: 32 MiB, 200 files, 256 MiB.

1.+2. Cold pulls, metadata included, of `big` and `small` over loopback, medians of 3, the tools
   interleaved per repetition (order flipped every repetition), fresh cache / destination each
   time, `os.sync()` before each:
     - mlcache   `MlflowApi(tracking_uri, cache_dir=<empty>).get_model_artifact((name, "1"))`
     - mlflow    `mlflow.artifacts.download_artifacts(artifact_uri="models:/name/1", dst_path=...)`
     - mlopus    1.6.3 in its own venv (`peers.run_peer`): `api.get_model_artifact(
                 api.get_model_version((name, "1")))` with an empty cache dir
     - rclone    `rclone copy --transfers 16 S3:<version's folder> <dest>` (no metadata)
     - cp        `cp -r` of the folder from the store's backing dir (no metadata; the local limit)
3. The same for mlcache, rclone and MLflow over an emulated WAN: `pacing_proxy.py` in front of the
   store (20 ms per request, 40 MiB/s per connection), every client pointed at the proxy's URL as
   S3 endpoint (`MLFLOW_S3_ENDPOINT_URL`, the rclone remote's endpoint); the bytes each pull moved
   through the proxy are checked, so no client can bypass it.
4. Resume: an mlcache pull of `huge` through the proxy in a child process (its own process group),
   killed with SIGKILL (the whole group: the Python process and its rclone) once the proxy has sent
   80 % of the file's bytes; then the same pull in a new process on the same cache dir. Reported:
   the bytes the second pull moved through the proxy, as a share of the file.
5. Peak resident memory: VmHWM of a child process doing only the cold pull of `huge`
   (direct), beside the same child stopped before the pull (imports + api + metadata: the floor)
   and MLflow's download in a child (context).

Each timed pull of mlcache and mlopus includes building the client (`MlflowApi(...)`, mlopus's
`get_api`), as MLflow's `download_artifacts` builds its own inside the call. The mlcache measured
is a copy of `mlcache/` taken at the start (`common.snapshot_mlcache`), imported by this process
and its children alike, so edits to the working tree during a run do not mix two versions.

Usage: python benchmarks/bench_cold.py [--quick] [--repeats 3] [--delay-ms 20] [--rate-mib 40] [--report FILE]
The exit code is 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
from common import (  # noqa: E402
    code_state,
    file_creation_us,
    page_cache_write_s,
    prime_page_cache,
    rmtree,
    s3_endpoint,
    snapshot_mlcache,
    start_store_and_server,
    tree_stats,
)
from pacing_proxy import PacingProxy, start_pacing_proxy  # noqa: E402

# mlcache itself is imported only after `snapshot_mlcache` (in `main`): this process and its
# children then run one copy of the code, whatever happens to the working tree meanwhile.

MiB = 1024 * 1024
SMALL_FILE_SIZE = 4096
VERSION = "1"
KILL_AT = 0.8  # share of the file's bytes sent before the first resume pull is killed

TARGETS = {
    "big_mlflow": 1.2,
    "big_mlopus": 1.5,
    "small_mlflow": 5.0,
    "small_mlopus": 1.2,
    "wan_big": 1.5,
    "resume_share": 0.25,
    "rss_mib": 200.0,
}

# mlopus, in its venv: one cold pull with an empty cache, metadata included, the api's construction
# timed too (as for mlcache, and as MLflow's download_artifacts builds its client inside the call).
# The first REST call of a process pays one-off imports; a throwaway api (cache of its own) makes it
# before the timing, as the benchmark's own process has made it for mlcache and MLflow.
MLOPUS_SCRIPT = r"""
import json, os, time
from pathlib import Path

import mlopus.mlflow

conf = json.loads(os.environ["BENCH_PEER_CONF"])
key = (conf["model"], conf["version"])


def api(cache):
    return mlopus.mlflow.get_api(plugin="mlflow", conf={"tracking_uri": conf["url"], "cache_dir": cache})


api(conf["warm_cache"]).get_model_version(key)
start = time.perf_counter()
cold = api(conf["cache"])
path = cold.get_model_artifact(cold.get_model_version(key))
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "path": str(path)}))
"""

# mlcache (or MLflow) in a child process of its own, for the resume and memory cases. `mode`:
# "pull" (mlcache cold pull), "floor" (everything a pull does before its transfer: imports, api,
# the version's metadata), "mlflow" (download_artifacts). Prints one JSON line.
# Peak memory is VmHWM from /proc (the high-water mark of the process's own address space), not
# `ru_maxrss`: Linux carries `ru_maxrss` over from the parent through fork and exec, so a child of
# a big process (this benchmark, or the Python that starts rclone) would report its parent's peak.
# The subprocesses' peaks are sampled every 0.1 s by a thread (VmHWM only grows, so a late sample
# still sees the peak, up to the last 0.1 s of each subprocess).
CHILD_SCRIPT = r"""
import json, os, sys, threading, time


def hwm_kib(pid="self"):
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


peaks = {}


def watch_children():
    me = os.getpid()
    while True:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                peaks[name] = max(peaks.get(name, 0), hwm_kib(name))
        time.sleep(0.1)


threading.Thread(target=watch_children, daemon=True).start()
conf = json.loads(sys.argv[1])
mode = conf["mode"]
start = time.perf_counter()
if mode == "mlflow":
    import mlflow

    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{conf['model']}/{conf['version']}", dst_path=conf["dest"], tracking_uri=conf["url"]
    )
else:
    from mlcache.plugins.mlflow import MlflowApi

    api = MlflowApi(tracking_uri=conf["url"], cache_dir=conf["cache"])
    if mode == "floor":
        api.get_model_version((conf["model"], conf["version"]))
        path = ""
    else:
        path = api.get_model_artifact((conf["model"], conf["version"]))
seconds = time.perf_counter() - start
print(json.dumps({
    "seconds": seconds,
    "path": str(path),
    "self_kib": hwm_kib(),
    "children_kib": max(peaks.values(), default=0),
    "children": len(peaks),
}))
"""


# ----------------------------------------------------------------------------- helpers
def make_file(path: Path, size: int) -> None:
    """A file of `size` random bytes (incompressible, so no layer can shortcut it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        left = size
        while left:
            chunk = min(left, 8 * MiB)
            handle.write(os.urandom(chunk))
            left -= chunk


def last_json(text: str) -> dict:
    """The last line of `text` that parses as a JSON object (a child's result)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    raise RuntimeError(f"no JSON line in the output:\n{text[-2000:]}")


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 when it does not exist)."""
    total = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of `proc` (started with `start_new_session`: the child and the
    rclone it runs) and reap the child; nothing happens to a group that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ValueError, OSError):
        proc.communicate(timeout=30)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def fmt_mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


@dataclass
class Case:
    """One registered model version to pull: its files, and where they live in the store."""

    key: str
    model: str
    files: int
    size: int  # bytes in all
    run_id: str = ""
    folder: str = ""  # bucket/... of the version's files, for rclone
    backing: Path | None = None  # the same folder on the store's disk, for cp

    @property
    def label(self) -> str:
        if self.files == 1:
            return f"{self.key} (1 x {self.size // MiB} MiB)"
        return f"{self.key} ({self.files} x {self.size // self.files // 1024} KiB)"


# ----------------------------------------------------------------------------- the benchmark
class Bench:
    """The servers, the data, the measurements and the report of one run."""

    TOOLS = ("mlcache", "mlflow", "mlopus", "rclone", "cp")
    WAN_TOOLS = ("mlcache", "rclone", "mlflow")
    LABELS = {
        "mlcache": "mlcache get_model_artifact",
        "mlflow": "mlflow download_artifacts",
        "mlopus": "mlopus 1.6.3 get_model_artifact",
        "rclone": "raw rclone copy --transfers 16",
        "cp": "cp -r from the store's disk",
    }

    def __init__(self, args: argparse.Namespace, scratch: Path) -> None:
        self.args = args
        q = args.quick
        self.cases = {
            "big": Case("big", "bench-cold-big", 1, (32 if q else 256) * MiB),
            "small": Case("small", "bench-cold-small", 200 if q else 2000, (200 if q else 2000) * SMALL_FILE_SIZE),
            "huge": Case("huge", "bench-cold-huge", 1, (256 if q else 2048) * MiB),
        }
        self.scratch = scratch
        self.kept = scratch / "kept"
        self.rclone = ""
        self.s3: Any = None
        self.server: Any = None
        self.proxy: PacingProxy | None = None
        self.times: dict[tuple[str, str], list[float]] = defaultdict(list)
        # per WAN pull, what went through the proxy: bytes sent, requests, client connections
        self.moved: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.requests: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.connections: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.failures: dict[tuple[str, str], str] = {}
        self.res: dict[str, Any] = {}
        self.mem: dict[str, dict] = {}
        self.lines: list[str] = []
        self.code_state = ""
        self.load_before = (math.nan, math.nan, math.nan)
        self.creation_us = math.nan
        self.page_cache_s = (math.nan, math.nan)
        self.peer_versions: dict[str, str] = {}

    def out(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def fresh(self, prefix: str) -> Path:
        return self.scratch / f"{prefix}-{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------------ setup
    def start(self) -> None:
        from mlcache.rclone import find_rclone

        self.load_before = os.getloadavg()
        self.kept.mkdir(parents=True, exist_ok=True)
        self.rclone = find_rclone()
        self.s3, self.server = start_store_and_server(self.scratch)
        self.python = peers.mlopus_python()
        self.peer_versions = peers.peer_versions(self.python)
        self.peer_env = peers.peer_env(self.s3, self.scratch / "peer", self.python, self.server.url)

    def upload(self) -> None:
        """Plain MLflow logs each case's files to `model/` of a run of its own and registers them as
        version 1 of the case's model; the store then lists each folder once with hashes (it
        computes an object's MD5 on its first listing: not part of any timing)."""
        import mlflow
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.server.url)
        exp_id = mlflow.create_experiment("mlcache-bench-cold")
        env = {**os.environ, **self.s3.rclone_env("S3")}
        for case in self.cases.values():
            src = self.fresh(f"src-{case.key}")
            t = time.perf_counter()
            if case.files == 1:
                make_file(src / "weights.bin", case.size)
            else:
                for i in range(case.files):
                    make_file(src / "shards" / f"part-{i:05d}.bin", SMALL_FILE_SIZE)
            generated = time.perf_counter() - t
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                run = client.create_run(exp_id, run_name=case.key)
                client.log_artifacts(run.info.run_id, str(src), "model")
                client.set_terminated(run.info.run_id)
            source = f"{run.info.artifact_uri}/model"
            if not source.startswith("s3://bucket/mlartifacts/"):
                raise RuntimeError(f"unexpected artifact root {source!r}; expected s3://bucket/mlartifacts/...")
            client.create_registered_model(case.model)
            mv = client.create_model_version(case.model, source=source, run_id=run.info.run_id)
            if str(mv.version) != VERSION:
                raise RuntimeError(f"{case.model}: registered version {mv.version}, expected {VERSION}")
            self.dispose(case, src)
            case.run_id = run.info.run_id
            case.folder = source[len("s3://") :]
            case.backing = self.s3.data_dir / case.folder
            subprocess.run(
                [self.rclone, "lsjson", "-R", "--hash", f"S3:{case.folder}"],
                env=env,
                check=True,
                capture_output=True,
                stdin=subprocess.DEVNULL,
            )
            got = tree_stats(case.backing)
            if got != (case.files, case.size):
                raise RuntimeError(f"{case.key}: the store holds {got}, want {(case.files, case.size)}")
            print(
                f"{case.label}: generated in {generated:.1f}s, logged + registered with MLflow in "
                f"{time.perf_counter() - t:.1f}s: models:/{case.model}/{VERSION} -> {source}",
                flush=True,
            )

    def warm_up(self) -> None:
        """The first REST call and the first transfer of a process pay one-off imports and lookups
        (MLflow's boto3 client, mlcache's rclone probe): made here, untimed, for mlcache and MLflow
        alike, with one small file of a run (mlopus makes its REST warm-up in its script)."""
        import mlflow

        from mlcache.plugins.mlflow import MlflowApi

        case = self.cases["small"]
        one = "model/shards/part-00000.bin"
        cache = self.fresh("cache-warm")
        api = MlflowApi(tracking_uri=self.server.url, cache_dir=cache)
        api.get_model_version((case.model, VERSION))
        api.get_run_artifact(case.run_id, one)
        rmtree(cache)
        dest = self.fresh("mlflow-warm")
        dest.mkdir()
        mlflow.MlflowClient(tracking_uri=self.server.url).get_model_version(case.model, VERSION)
        mlflow.artifacts.download_artifacts(
            run_id=case.run_id, artifact_path=one, dst_path=str(dest), tracking_uri=self.server.url
        )
        rmtree(dest)

    # ------------------------------------------------------------------ one pull each
    def dispose(self, case: Case, tree: Path) -> None:
        """Remove what a pull of `case` made, but keep the trees of the many-files case until the
        end: ext4 without a journal (this machine's root filesystem) skips, when it allocates an
        inode, every free inode deleted in the last 60 s (300 s while its inode table block is
        dirty), reading each one's deletion time, so deleting 2,000 files would slow the next pull
        of whichever tool comes after. The big case's few inodes are deleted, to free its bytes."""
        if case.files > 1:
            tree.rename(self.kept / tree.name)
        else:
            rmtree(tree)

    def check(self, tool: str, case: Case, path: Path) -> None:
        got = tree_stats(path)
        if got != (case.files, case.size):
            raise RuntimeError(f"{tool} {case.key}: got {got[0]} files / {got[1]} B, want {case.files} / {case.size}")

    def mlcache_pull(self, case: Case, endpoint: str | None = None) -> float:
        from mlcache.plugins.mlflow import MlflowApi

        cache = self.fresh("cache")
        with s3_endpoint(endpoint):
            t = time.perf_counter()
            api = MlflowApi(tracking_uri=self.server.url, cache_dir=cache)
            path = api.get_model_artifact((case.model, VERSION))
            dt = time.perf_counter() - t
        self.check("mlcache", case, Path(path))
        self.dispose(case, cache)
        return dt

    def mlflow_pull(self, case: Case, endpoint: str | None = None) -> float:
        import mlflow

        dest = self.fresh("mlflow")
        dest.mkdir()
        with s3_endpoint(endpoint), contextlib.redirect_stdout(io.StringIO()):
            t = time.perf_counter()
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{case.model}/{VERSION}", dst_path=str(dest), tracking_uri=self.server.url
            )
            dt = time.perf_counter() - t
        self.check("mlflow", case, Path(path))
        self.dispose(case, dest)
        return dt

    def mlopus_pull(self, case: Case, endpoint: str | None = None) -> float:
        if endpoint is not None:
            raise RuntimeError("mlopus is measured over loopback only")
        work = self.fresh("mlopus")
        conf = {
            "url": self.server.url,
            "model": case.model,
            "version": VERSION,
            "cache": str(work / "cache"),
            "warm_cache": str(work / "warm"),
        }
        result = peers.run_peer(
            self.python, MLOPUS_SCRIPT, {**self.peer_env, "BENCH_PEER_CONF": json.dumps(conf)}, timeout=1800
        )
        self.check("mlopus", case, Path(result["path"]))
        self.dispose(case, work)
        return float(result["seconds"])

    def rclone_pull(self, case: Case, endpoint: str | None = None) -> float:
        dest = self.fresh("rclone")
        env = {**os.environ, **self.s3.rclone_env("S3")}
        if endpoint is not None:
            env["RCLONE_CONFIG_S3_ENDPOINT"] = endpoint
        cmd = [self.rclone, "copy", "--transfers", "16", f"S3:{case.folder}", str(dest)]
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdin=subprocess.DEVNULL, capture_output=True)
        dt = time.perf_counter() - t
        self.check("rclone", case, dest)
        self.dispose(case, dest)
        return dt

    def cp_pull(self, case: Case, endpoint: str | None = None) -> float:
        dest = self.fresh("cp")
        t = time.perf_counter()
        subprocess.run(["cp", "-r", str(case.backing), str(dest)], check=True, stdin=subprocess.DEVNULL)
        dt = time.perf_counter() - t
        self.check("cp", case, dest)
        self.dispose(case, dest)
        return dt

    def measure(self, row: str, tool: str, case: Case, endpoint: str | None = None) -> None:
        """One timed pull; a failure is recorded (with its traceback, printed once) and the run
        goes on, so one report says everything."""
        os.sync()
        if case.files == 1:
            prime_page_cache(self.kept, case.size)
        before = self.proxy.stats() if endpoint is not None and self.proxy else {}
        try:
            dt = getattr(self, f"{tool}_pull")(case, endpoint)
        except Exception:
            if (row, tool) not in self.failures:
                self.failures[(row, tool)] = traceback.format_exc()
                print(f"  {row} {tool} FAILED:\n{self.failures[(row, tool)]}", flush=True)
            return
        if endpoint is not None and self.proxy is not None:
            time.sleep(0.15)  # the proxy's stats are at most 0.1 s old
            after = self.proxy.stats()
            moved = after["bytes_out"] - before["bytes_out"]
            self.moved[(row, tool)].append(moved)
            self.requests[(row, tool)].append(after["requests"] - before["requests"])
            self.connections[(row, tool)].append(after["connections"] - before["connections"])
            if moved < case.size:
                self.failures[(row, tool)] = (
                    f"only {moved:,} B went through the proxy for {case.size:,} B of files: "
                    f"{tool} did not use the endpoint it was given"
                )
                print(f"  {row} {tool} FAILED: {self.failures[(row, tool)]}", flush=True)
                return
        self.times[(row, tool)].append(dt)
        print(f"  {row:9s} rep {len(self.times[(row, tool)])} {tool:8s} {dt:8.3f}s", flush=True)

    # ------------------------------------------------------------------ phases
    def loopback(self) -> None:
        for key in ("big", "small"):
            case = self.cases[key]
            for rep in range(self.args.repeats):
                order = self.TOOLS if rep % 2 == 0 else tuple(reversed(self.TOOLS))
                for tool in order:
                    self.measure(key, tool, case)

    def start_proxy(self) -> PacingProxy:
        """The pacing proxy in front of the store, started on first use (WAN and resume share it)."""
        if self.proxy is None:
            self.proxy = start_pacing_proxy(
                self.s3.endpoint, self.args.delay_ms, self.args.rate_mib, workdir=self.scratch / "proxy"
            )
            print(f"pacing proxy {self.proxy.url} -> {self.s3.endpoint}", flush=True)
        return self.proxy

    def wan(self) -> None:
        self.start_proxy()
        for key in ("big", "small"):
            case = self.cases[key]
            for rep in range(self.args.repeats):
                order = self.WAN_TOOLS if rep % 2 == 0 else tuple(reversed(self.WAN_TOOLS))
                for tool in order:
                    self.measure(f"wan-{key}", tool, case, self.proxy.url)

    def child(self, conf: dict, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A child process running CHILD_SCRIPT in a process group of its own (so it can be killed
        with everything it started), in the scratch dir."""
        return subprocess.Popen(
            [sys.executable, "-c", CHILD_SCRIPT, json.dumps(conf)],
            cwd=self.scratch,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def finish_child(self, proc: subprocess.Popen, what: str, timeout: float = 1800) -> dict:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise RuntimeError(f"{what}: timed out after {timeout:g}s") from None
        if proc.returncode != 0:
            raise RuntimeError(f"{what}: exited with {proc.returncode}; stderr:\n{stderr[-4000:]}")
        return last_json(stdout)

    def resume(self) -> None:
        """Kill -9 a pull at ~80 % of the bytes, pull again in a new process, count the bytes again."""
        self.start_proxy()
        assert self.proxy is not None
        case = self.cases["huge"]
        cache = self.fresh("cache-resume")
        conf = {"mode": "pull", "url": self.server.url, "cache": str(cache), "model": case.model, "version": VERSION}
        env = {"MLFLOW_S3_ENDPOINT_URL": self.proxy.url}
        self.res = {"size": case.size}
        proc: subprocess.Popen | None = None
        try:
            os.sync()
            start_bytes = self.proxy.bytes_out()
            t = time.perf_counter()
            proc = self.child(conf, env)
            deadline = time.monotonic() + 1800
            sent = 0
            while time.monotonic() < deadline and proc.poll() is None:
                sent = self.proxy.bytes_out() - start_bytes
                if sent >= KILL_AT * case.size:
                    break
                time.sleep(0.02)
            if proc.poll() is not None:
                _, stderr = proc.communicate()
                raise RuntimeError(
                    f"the first pull ended (exit {proc.returncode}) before {KILL_AT:.0%} of the bytes "
                    f"were sent ({sent:,} B):\n{stderr[-3000:]}"
                )
            if sent < KILL_AT * case.size:
                raise RuntimeError(f"the first pull sent only {sent:,} B in 1800s")
            kill_group(proc)
            self.res["killed_after_s"] = time.perf_counter() - t
            self.res["sent_at_kill"] = sent
            time.sleep(0.5)  # the proxy's last figures for the dead connections
            self.res["sent_first"] = self.proxy.bytes_out() - start_bytes
            self.res["stage_at_kill"] = dir_bytes(cache / "tmp")
            leftover = [p.name for p in (cache / "tmp").iterdir()] if (cache / "tmp").is_dir() else []
            self.res["stage_items"] = len(leftover)
            os.sync()
            second = self.proxy.stats()
            t = time.perf_counter()
            proc = self.child(conf, env)
            result = self.finish_child(proc, "the second pull")
            self.res["second_s"] = time.perf_counter() - t
            time.sleep(0.15)
            after = self.proxy.stats()
            self.res["sent_second"] = after["bytes_out"] - second["bytes_out"]
            self.res["requests_second"] = after["requests"] - second["requests"]
            self.check("mlcache (after the kill)", case, Path(result["path"]))
            self.res["share"] = self.res["sent_second"] / case.size
            self.res["stage_after"] = dir_bytes(cache / "tmp")
        except Exception:
            self.failures[("resume", "mlcache")] = traceback.format_exc()
            print(f"  resume FAILED:\n{self.failures[('resume', 'mlcache')]}", flush=True)
        finally:
            if proc is not None:
                kill_group(proc)
            rmtree(cache)

    def memory(self) -> None:
        """Peak RSS of a child doing only the cold pull of `huge` (direct), of the same child
        stopped before the transfer (the floor), and of MLflow's download in a child (context)."""
        case = self.cases["huge"]
        self.mem = {}
        base = {"url": self.server.url, "model": case.model, "version": VERSION}
        for mode in ("floor", "pull", "mlflow"):
            work = self.fresh(f"mem-{mode}")
            conf = {**base, "mode": mode, "cache": str(work / "cache"), "dest": str(work / "dest")}
            try:
                os.sync()
                result = self.finish_child(self.child(conf), f"memory child ({mode})")
                if mode != "floor":
                    self.check(f"{mode} (memory child)", case, Path(result["path"]))
                self.mem[mode] = result
            except Exception:
                self.failures[("memory", mode)] = traceback.format_exc()
                print(f"  memory {mode} FAILED:\n{self.failures[('memory', mode)]}", flush=True)
            finally:
                rmtree(work)

    # ------------------------------------------------------------------ report
    def versions(self) -> str:
        import mlflow

        import mlcache

        rc = subprocess.run([self.rclone, "version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
        pv = self.peer_versions
        return (
            f"{rc}, mlflow {mlflow.__version__} (server and clients), mlcache {mlcache.__version__}, "
            f"mlopus {pv.get('mlopus')} (mlflow-skinny {pv.get('mlflow-skinny')}, own venv)"
        )

    def results_table(self) -> None:
        """One line per case and tool: median, spread, throughput, mlcache's speedup over the tool,
        and (WAN) what went through the proxy per pull."""
        head = (
            f"{'case':30s} {'tool':32s} {'median s':>9s} {'min-max s':>15s} {'MiB/s':>8s} {'files/s':>8s} "
            f"{'mlcache x':>9s} {'via proxy':>11s} {'reqs':>5s} {'conns':>5s}"
        )
        self.out(head)
        self.out("-" * len(head))
        rows = [("big", self.TOOLS), ("small", self.TOOLS), ("wan-big", self.WAN_TOOLS), ("wan-small", self.WAN_TOOLS)]
        for row, tools in rows:
            case = self.cases[row.removeprefix("wan-")]
            name = f"{'WAN ' if row.startswith('wan') else 'loopback '}{case.label}"
            for tool in tools:
                times = self.times.get((row, tool), [])
                if not times:
                    state = "FAILED" if (row, tool) in self.failures else "not run"
                    self.out(f"{name:30s} {self.LABELS[tool]:32s} {state:>9s}")
                    continue
                m = med(times)
                spread = f"{min(times):.3f}-{max(times):.3f}"
                moved = self.moved.get((row, tool))
                via = fmt_mib(med(moved)) if moved else ""
                reqs = f"{med(self.requests[(row, tool)]):.0f}" if moved else ""
                conns = f"{med(self.connections[(row, tool)]):.0f}" if moved else ""
                self.out(
                    f"{name:30s} {self.LABELS[tool]:32s} {m:9.3f} {spread:>15s} {case.size / MiB / m:8.1f} "
                    f"{case.files / m:8.0f} {self.speedup(row, tool):8.2f}x {via:>11s} {reqs:>5s} {conns:>5s}"
                )
        self.out(
            "(mlcache x: the tool's median / mlcache's median, > 1 means mlcache is faster. via proxy, reqs, conns: "
            "per pull, the median bytes, HTTP requests and new client connections through the pacing proxy; "
            "MLflow's boto3 client lives on in this process, so it reuses its connections from one pull to the next)"
        )

    def speedup(self, row: str, other: str) -> float:
        """The other tool's median / mlcache's median on `row` (nan when either has no time)."""
        return med(self.times.get((row, other), [])) / med(self.times.get((row, "mlcache"), []))

    def targets(self) -> list[tuple[str, float, str, float | None, str]]:
        """(label, value, op, goal, unit) of every line of the targets table; goal None: context."""
        t = TARGETS
        sp = self.speedup
        lines: list[tuple[str, float, str, float | None, str]] = [
            ("1 big: over mlflow download_artifacts", sp("big", "mlflow"), ">=", t["big_mlflow"], "x"),
            ("1 big: over mlopus get_model_artifact", sp("big", "mlopus"), ">=", t["big_mlopus"], "x"),
            ("1 big: over raw rclone copy", sp("big", "rclone"), "", None, "x"),
            ("1 big: over cp -r", sp("big", "cp"), "", None, "x"),
            ("2 small: over mlflow download_artifacts", sp("small", "mlflow"), ">=", t["small_mlflow"], "x"),
            ("2 small: over mlopus get_model_artifact", sp("small", "mlopus"), ">=", t["small_mlopus"], "x"),
            ("2 small: over raw rclone copy", sp("small", "rclone"), "", None, "x"),
            ("2 small: over cp -r", sp("small", "cp"), "", None, "x"),
        ]
        # WAN big is judged against the faster of rclone and MLflow (a tool that failed has no median)
        measured = {
            tool: med(self.times[("wan-big", tool)])
            for tool in ("rclone", "mlflow")
            if self.times.get(("wan-big", tool))
        }
        best = min(measured, key=measured.__getitem__) if measured else "none measured"
        wan = measured.get(best, math.nan) / med(self.times.get(("wan-big", "mlcache"), []))
        lines += [
            (f"3 WAN big: over the faster of rclone / mlflow ({best})", wan, ">=", t["wan_big"], "x"),
            ("3 WAN big: over raw rclone copy", sp("wan-big", "rclone"), "", None, "x"),
            ("3 WAN big: over mlflow download_artifacts", sp("wan-big", "mlflow"), "", None, "x"),
            ("3 WAN small: over raw rclone copy", sp("wan-small", "rclone"), "", None, "x"),
            ("3 WAN small: over mlflow download_artifacts", sp("wan-small", "mlflow"), "", None, "x"),
        ]
        size = self.cases["huge"].size
        pull = self.mem.get("pull")
        lines += [
            (
                f"4 resume: 2nd pull's bytes / the file ({size // MiB} MiB), kill -9 at {KILL_AT:.0%}",
                self.res.get("share", math.nan) * 100,
                "<=",
                t["resume_share"] * 100,
                "%",
            ),
            (
                f"5 peak RSS, child doing only the cold pull of {size // MiB} MiB",
                pull["self_kib"] / 1024 if pull else math.nan,
                "<=",
                t["rss_mib"],
                " MiB",
            ),
        ]
        return lines

    def report(self, elapsed: float) -> bool:
        """Print the header, the results table, the targets (met or not), the details of the resume
        and memory cases and every failure; True when every target is met."""
        a = self.args
        load_after = os.getloadavg()
        self.out("")
        self.out(
            f"mlcache bench_cold{' --quick' if a.quick else ''}: {datetime.datetime.now().isoformat('T', 'seconds')}"
        )
        self.out(
            f"machine: {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}), {platform.machine()}, "
            f"Python {platform.python_version()}, load average {self.load_before[0]:.2f} at start, "
            f"{load_after[0]:.2f} at the end; file creation before the timed pulls {self.creation_us:.0f} us per "
            "new file (1,000 files, one thread; ext4 without a journal is slow for minutes after mass deletions); "
            "writing a new {} file: {:.2f}s cold, {:.2f}s right after as much was written and deleted, so each "
            "timed pull of one big file comes right after such a priming write, for every tool".format(
                fmt_mib(self.cases["big"].size), *self.page_cache_s
            )
        )
        self.out(f"versions: {self.versions()}")
        self.out(f"mlcache code: a snapshot of the working tree at the start ({self.code_state})")
        self.out(
            "store: rclone serve s3 on 127.0.0.1 (local disk, page cache warm); versions logged and registered by "
            "plain MLflow; every pull starts from an empty cache / destination and includes the version's "
            "metadata and the client's construction (rclone and cp: no metadata)"
        )
        self.out(
            f"medians of {a.repeats}, tools interleaved (order flipped every repetition); WAN: pacing proxy, "
            f"{a.delay_ms:g} ms per request, {a.rate_mib:g} MiB/s per connection, as every client's S3 endpoint"
        )
        self.out("")
        self.results_table()

        lines = self.targets()
        width = max(len(label) for label, *_ in lines)
        self.out("")
        title = "Targets (mlcache speedup = the other tool median / mlcache median)"
        self.out(f"{title:{width}s}  {'value':>10s}  {'target':<12s} met")
        met: list[bool] = []
        for label, value, op, goal, unit in lines:
            shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.1f}{unit}"
            if LINE_PHASE[label[0]] not in a.chosen:
                wanted = "(context)" if goal is None else f"{f'{op} {goal:g}{unit}':<12s} not measured"
                self.out(f"{label:{width}s}  {'-':>10s}  {wanted}")
                continue
            if goal is None:
                self.out(f"{label:{width}s}  {shown:>10s}  (context)")
                continue
            ok = value == value and (value >= goal if op == ">=" else value <= goal)
            met.append(ok)
            self.out(f"{label:{width}s}  {shown:>10s}  {f'{op} {goal:g}{unit}':<12s} {'yes' if ok else 'NO'}")

        res = self.res
        if "share" in res:
            self.out(
                f"  resume: 1st pull killed after {res['killed_after_s']:.1f}s with {fmt_mib(res['sent_at_kill'])} "
                f"sent ({fmt_mib(res['sent_first'])} once settled); {fmt_mib(res['stage_at_kill'])} (apparent size) in "
                f"{res['stage_items']} item(s) under <cache>/tmp at the kill"
            )
            self.out(
                f"  resume: 2nd pull (new process) {fmt_mib(res['sent_second'])} in {res['requests_second']} "
                f"request(s) through the proxy in {res['second_s']:.1f}s; left under <cache>/tmp after it: "
                f"{fmt_mib(res['stage_after'])}"
            )
        pull, floor, flow = self.mem.get("pull"), self.mem.get("floor"), self.mem.get("mlflow")
        if pull:
            self.out(
                f"  memory: the pull took {pull['seconds']:.1f}s (imports included); the largest of its "
                f"{pull['children']} subprocess(es) (rclone) peaked at {pull['children_kib'] / 1024:.1f} MiB"
            )
        if floor:
            self.out(
                f"  memory: the same child stopped before the transfer (imports, api, metadata): "
                f"{floor['self_kib'] / 1024:.1f} MiB"
            )
        if flow:
            self.out(
                f"  memory: mlflow download_artifacts in a child (context): {flow['self_kib'] / 1024:.1f} MiB, "
                f"{flow['seconds']:.1f}s"
            )

        if self.failures:
            self.out("")
            self.out("Failures (each once, with its traceback; a failed tool has no median, so its targets read NO):")
            for (row, tool), text in self.failures.items():
                self.out(f"  [{row} / {tool}]")
                for line in text.rstrip().splitlines():
                    self.out(f"    {line}")
        self.out("")
        self.out(f"{sum(met)} of {len(met)} targets met; total benchmark time {elapsed:.0f}s")
        return bool(met) and all(met)

    def stop(self) -> None:
        for part in (self.proxy, self.server, self.s3):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        rmtree(self.scratch)


PHASES = {
    "loopback": "cold pulls over loopback",
    "wan": "cold pulls over the emulated WAN",
    "resume": "resume after kill -9",
    "memory": "peak memory",
}


LINE_PHASE = {"1": "loopback", "2": "loopback", "3": "wan", "4": "resume", "5": "memory"}
"""The phase that measures each numbered line of the targets table."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="32 MiB, 200 files, 256 MiB instead of 256 MiB, 2,000, 2 GiB"
    )
    parser.add_argument("--repeats", type=int, default=3, help="pulls per tool and case (medians of these)")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="WAN: delay per request")
    parser.add_argument("--rate-mib", type=float, default=40.0, help="WAN: MiB/s per connection")
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of {','.join(PHASES)} (targets of the others read not measured)",
    )
    parser.add_argument("--report", type=Path, default=None, help="also write the report (tables) to this file")
    args = parser.parse_args()
    args.repeats = max(1, args.repeats)
    chosen = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(PHASES))
    args.chosen = chosen
    if unknown or not chosen:
        parser.error(f"--phases: unknown {', '.join(unknown) or '(none given)'}; choose from {','.join(PHASES)}")

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="mlcache-bench-cold-", dir="/tmp"))
    print(f"cores: {os.cpu_count()}; scratch {scratch}", flush=True)
    # SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C, so the servers are stopped and the scratch deleted
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args, scratch)
    passed = False
    try:
        bench.code_state = code_state()
        snapshot_mlcache(scratch / "code")
        bench.start()
        bench.upload()
        bench.warm_up()
        bench.creation_us = file_creation_us(bench.kept / "creation-probe")
        print(f"file creation: {bench.creation_us:.0f} us per new file", flush=True)
        bench.page_cache_s = page_cache_write_s(bench.kept, bench.cases["big"].size)
        print(
            "page cache: a new {} file written in {:.2f}s cold, {:.2f}s primed".format(
                fmt_mib(bench.cases["big"].size), *bench.page_cache_s
            ),
            flush=True,
        )
        for key in chosen:
            print(f"{PHASES[key]} ({time.perf_counter() - started:.0f}s):", flush=True)
            getattr(bench, key)()
        passed = bench.report(time.perf_counter() - started)
        if args.report is not None:
            args.report.write_text("\n".join(bench.lines) + "\n")
    finally:
        bench.stop()
    print("all targets met" if passed else "SOME TARGETS NOT MET")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
