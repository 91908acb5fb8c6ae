#!/usr/bin/env python
"""Benchmark mlcache's metadata paths and warm hits against mlopus 1.6.3, in the same run.

One run does everything, on servers of its own (127.0.0.1, scratch under /tmp, all stopped and
deleted at the end):

1. starts `rclone serve s3` and `mlflow server` 3.17 (`tests/servers.py`), and seeds one
   experiment with N runs (5,000; `--quick` 500) by threads of `MlflowClient.log_batch`: params
   `lr` (log-uniform, fixed seed), `layers`, `optimizer`, tag `team`, metrics `acc`, `loss`; and one
   registered model version (alias `champion`) over a `model` folder of 5 small files in run 0;
2. sets both tools up (untimed): mlcache caches the version's artifact and a run, exports the
   version to a bundle (`mlcache export`); mlopus, in its own venv (`benchmarks/peers.py`), caches
   them too, exports them (`export_model_version_meta` + `export_model_artifact`), and fills its
   run cache with one online `find_runs` over the experiment (timed once: its online reference;
   mlopus does not write search results through, so the runs found are saved with its own
   serializer, as its `cache_run_meta` does);
3. per repetition (`--repeats`, default 3), the order flipped every repetition:
   - online: mlcache's `find_runs` of the whole experiment writing through to an empty cache, and
     raw REST paging of `runs/search` (urllib, 1,000 a page), back to back;
   - offline, both tools, by the same timing code (`HELPERS`, run in this process for mlcache and
     prepended to the mlopus script): warm hits (per call by `(name, version)` and through a held
     version), a new offline api over the exported bundle + one hit, `get_run`, and `find_runs` with
     a ~30.6 % query (1,532 of 5,000 hits) over the same 5,000 cached runs: one untimed find, then
     the timed one on the same api, then one on a new api (diagnostic); the hit counts of both
     tools are checked against the seeded data;
4. mlcache alone: 20,000 runs filled into a cache through the `memory` plugin (one online find
   writing them through), then, on an api that has run both queries once, the first result of an
   offline query (~30.6 % hits) and the cost per further hit of the whole result; the same on a new
   api as diagnostics;
5. prints the table, ratios of medians, targets and the spread (min-max) of the repetitions.

Usage: python benchmarks/bench_peers.py [--quick] [--repeats N] [--seconds S] [--report FILE]
The exit code is 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import math
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import peers  # noqa: E402
from common import rmtree, time_file_creation  # noqa: E402

import mlcache  # noqa: E402

from servers import start_mlflow_server, start_s3_server  # noqa: E402

SEED = 20261203
MODEL = "bench-peers-model"
EXP = "bench-peers"
FULL_RUNS, QUICK_RUNS = 5_000, 500
MATCH_SHARE = 1_532 / 5_000  # the query matches this share of the runs
BIG_RUNS = 20_000
RUN_PAGE = 1_000  # max_results of the raw runs/search paging (MLflow's maximum for runs)

# Timing helpers: executed here and prepended to the peer's script, so both tools are timed by the
# very same code.
HELPERS = r'''
import statistics as _st
import time as _time


def rate(fn, seconds):
    """Calls of `fn` per second over about `seconds` (after one warm-up call)."""
    fn()
    n = 0
    start = _time.perf_counter()
    deadline = start + seconds
    while True:
        fn()
        n += 1
        if (n & 15) == 0 and _time.perf_counter() >= deadline:
            break
    return n / (_time.perf_counter() - start)


def each_ms(fn, seconds, max_calls=2000, min_calls=5):
    """Median ms of single calls of `fn` over about `seconds` (after one warm-up call)."""
    fn()
    times = []
    deadline = _time.perf_counter() + seconds
    while len(times) < max_calls:
        start = _time.perf_counter()
        fn()
        times.append((_time.perf_counter() - start) * 1000)
        if len(times) >= min_calls and _time.perf_counter() >= deadline:
            break
    return _st.median(times)


def timed_iter(make):
    """Consume the iterator `make()` returns: total s, s to the first item, item count."""
    start = _time.perf_counter()
    first = None
    n = 0
    for _ in make():
        n += 1
        if n == 1:
            first = _time.perf_counter() - start
    return {"total": _time.perf_counter() - start, "first": first, "n": n}
'''
_helpers: dict[str, Any] = {}
exec(HELPERS, _helpers)
rate, each_ms, timed_iter = _helpers["rate"], _helpers["each_ms"], _helpers["timed_iter"]

MLOPUS_SCRIPT = r"""
import json, os, time
from pathlib import Path

import mlopus.mlflow

conf = json.loads(os.environ["BENCH_PEER_CONF"])
key = (conf["model"], conf["version"])
seconds = conf["seconds"]
out = {}


def api(offline):
    settings = {"tracking_uri": conf["url"], "cache_dir": conf["cache"], "offline_mode": offline}
    return mlopus.mlflow.get_api(plugin="mlflow", conf=settings)


def query():
    return json.loads(conf["query"])


if conf["mode"] == "setup":
    online = api(False)
    mv = online.get_model_version(key)
    online.cache_model_version_meta(mv)
    path = online.cache_model_artifact(mv)
    online.cache_run_meta(conf["run_id"])
    start = time.perf_counter()
    online.export_model_version_meta(mv, Path(conf["export"]))
    online.export_model_artifact(mv, Path(conf["export"]))
    out["export_s"] = time.perf_counter() - start
    out["files"] = sorted(p.name for p in Path(path).iterdir())
elif conf["mode"] == "fill":
    # mlopus does not write search results through: time the online find, then save what it found
    # into its run cache the way its own `cache_run_meta` does (untimed), for the offline finds.
    online = api(False)
    runs = []
    start = time.perf_counter()
    first = None
    deadline = start + conf["cap"]
    for run in online.find_runs({"exp.id": conf["exp"]}):
        runs.append(run)
        if first is None:
            first = time.perf_counter() - start
        if time.perf_counter() > deadline:
            break
    out["find"] = {"total": time.perf_counter() - start, "first": first, "n": len(runs)}
    for run in runs:
        online.entity_serializer.save(run, online._get_run_cache(run.id))
        online.entity_serializer.save(run.exp, online._get_exp_cache(run.exp.id))
elif conf["mode"] == "rep":
    off = api(True)
    assert Path(off.get_model_artifact(off.get_model_version(key))).is_dir()
    out["hit"] = rate(lambda: off.get_model_artifact(off.get_model_version(key)), seconds)
    mv = off.get_model_version(key)
    out["hit_held"] = rate(lambda: off.get_model_artifact(mv), seconds)

    def bundle_hit():
        fresh = mlopus.mlflow.get_api(plugin="generic", conf={"cache_dir": conf["export"]})
        return fresh.get_model_artifact(fresh.get_model_version(key))

    assert Path(bundle_hit()).is_dir()
    out["bundle_ms"] = each_ms(bundle_hit, seconds)
    assert off.get_run(conf["run_id"]).id == conf["run_id"]
    out["get_run_ms"] = 1000 / rate(lambda: off.get_run(conf["run_id"]), seconds)
    if conf["find"]:
        # as for mlcache: one untimed find first, then timed on the same api and on a new one
        out["find_warmup"] = timed_iter(lambda: off.find_runs(query()))
        out["find"] = timed_iter(lambda: off.find_runs(query()))
        finder = api(True)
        out["find_new"] = timed_iter(lambda: finder.find_runs(query()))
print(json.dumps(out))
"""


# ------------------------------------------------------------------------------------ seeding
def start_servers(scratch: Path) -> tuple[Any, Any]:
    """As `common.start_store_and_server`, with 2 server workers: seeding is bound by the server's
    CPU (about 20 ms per create_run or log_batch on this machine), and 2 workers use both cores."""
    import mlflow

    t = time.perf_counter()
    s3 = start_s3_server(scratch / "s3")
    s3.bucket("bucket")
    os.environ.update(s3.env)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    server = start_mlflow_server(
        scratch / "mlflow", artifact_root="s3://bucket/mlartifacts", env=s3.env, extra_args=["--workers", "2"]
    )
    mlflow.set_tracking_uri(server.url)
    print(f"servers up in {time.perf_counter() - t:.1f}s: mlflow {server.url}, s3 {s3.endpoint}")
    return s3, server


@dataclass
class Seeded:
    exp_id: str
    run_ids: list[str]
    lrs: list[float]
    threshold: float
    expected: int
    model: str
    version: str
    files: int
    seconds: float


def lr_values(n: int) -> list[float]:
    rng = random.Random(SEED)
    return [float(f"{10 ** rng.uniform(-4, -1):.6g}") for _ in range(n)]


def seed_server(url: str, n: int, scratch: Path) -> Seeded:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    start = time.perf_counter()
    client = MlflowClient(url)
    exp_id = client.create_experiment(EXP)
    lrs = lr_values(n)
    rng = random.Random(SEED + 1)
    rows = [
        (i, lrs[i], rng.choice((2, 4, 8, 16)), rng.choice(("adam", "sgd", "lion")), rng.choice("abcde"), rng.random())
        for i in range(n)
    ]
    run_ids: list[str | None] = [None] * n
    local = threading.local()
    base_ms = int(time.time() * 1000) - n * 1000

    def seed_one(row: tuple) -> None:
        i, lr, layers, optimizer, team, acc = row
        cli = getattr(local, "client", None) or MlflowClient(url)
        local.client = cli
        run = cli.create_run(exp_id, start_time=base_ms + i * 1000, run_name=f"run-{i:05d}")
        rid = run.info.run_id
        cli.log_batch(
            rid,
            metrics=[Metric("acc", acc, base_ms + i * 1000, 0), Metric("loss", 1 - acc, base_ms + i * 1000, 0)],
            params=[Param("lr", f"{lr:.6g}"), Param("layers", str(layers)), Param("optimizer", optimizer)],
            tags=[RunTag("team", team)],
        )
        run_ids[i] = rid

    # MLflow 3 prints a "View run" line per run it touches: keep it off the report
    with contextlib.redirect_stdout(io.StringIO()), ThreadPoolExecutor(8) as pool:
        for _ in pool.map(seed_one, rows):
            pass
    model_dir = scratch / "model-src"
    model_dir.mkdir()
    for i in range(5):
        (model_dir / f"part-{i}.bin").write_bytes(random.Random(i).randbytes(1024 * (i + 1)))
    client.log_artifacts(run_ids[0], str(model_dir), "model")
    client.create_registered_model(MODEL)
    source = f"{client.get_run(run_ids[0]).info.artifact_uri}/model"
    version = client.create_model_version(MODEL, source, run_ids[0]).version
    client.set_registered_model_alias(MODEL, "champion", version)
    wanted = max(1, round(n * MATCH_SHARE))
    threshold = sorted(lrs, reverse=True)[wanted - 1]
    expected = sum(1 for v in lrs if v >= threshold)
    return Seeded(
        exp_id, [r for r in run_ids if r], lrs, threshold, expected, MODEL, str(version), 5, time.perf_counter() - start
    )


# ------------------------------------------------------------------------------------ results
@dataclass
class Row:
    name: str
    unit: str
    mlcache: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    peer_name: str = "mlopus"
    higher_is_better: bool = False

    @staticmethod
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan


def fmt(value: float, unit: str) -> str:
    if value != value:  # nan
        return "-"
    if unit == "calls/s":
        return f"{value:,.0f}"
    if unit in ("ms", "us"):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.3f}"


def spread(values: list[float], unit: str) -> str:
    if len(values) < 2:
        return ""
    return f"{fmt(min(values), unit)}-{fmt(max(values), unit)}"


# ------------------------------------------------------------------------------------ mlcache side
def mlcache_rep(off: Any, bundle: Path, seeded: Seeded, seconds: float, query: dict, find_cache: Path) -> dict:
    """One repetition of mlcache's offline rows, in the order and with the loops of the mlopus script."""
    key = (seeded.model, seeded.version)
    out: dict[str, Any] = {}
    assert Path(off.get_model_artifact(key)).is_dir()
    out["hit"] = rate(lambda: off.get_model_artifact(key), seconds)
    mv = off.get_model_version(key)
    out["hit_held"] = rate(lambda: off.get_model_artifact(mv), seconds)

    def bundle_hit() -> Path:
        fresh = mlcache.get_api("offline", cache_dir=bundle)
        return fresh.get_model_artifact(key)

    assert Path(bundle_hit()).is_dir()
    out["bundle_ms"] = each_ms(bundle_hit, seconds)
    run_id = seeded.run_ids[1]
    assert off.get_run(run_id).id == run_id
    out["get_run_ms"] = 1000 / rate(lambda: off.get_run(run_id), seconds)
    # as for mlopus: one untimed find first, then timed on the same api and on a new one
    finder = mlcache.get_api("offline", cache_dir=find_cache)
    out["find_warmup"] = timed_iter(lambda: finder.find_runs(json.loads(json.dumps(query))))
    out["find"] = timed_iter(lambda: finder.find_runs(json.loads(json.dumps(query))))
    finder = mlcache.get_api("offline", cache_dir=find_cache)
    out["find_new"] = timed_iter(lambda: finder.find_runs(json.loads(json.dumps(query))))
    return out


def raw_paging(url: str, exp_id: str) -> dict:
    """runs/search of the whole experiment, max_results=1000, page tokens until done (urllib)."""
    import urllib.request

    start = time.perf_counter()
    first = None
    n = 0
    token = None
    for _ in range(10_000):  # bounded
        body = {"experiment_ids": [exp_id], "max_results": RUN_PAGE}
        if token:
            body["page_token"] = token
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/runs/search",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            page = json.loads(response.read())
        runs = page.get("runs", [])
        if runs and first is None:
            first = time.perf_counter() - start
        n += len(runs)
        token = page.get("next_page_token")
        if not token:
            break
    return {"total": time.perf_counter() - start, "first": first, "n": n}


def client_paging(url: str, exp_id: str) -> dict:
    """The same paging through `MlflowClient.search_runs` (max_results=1000, page tokens): the client
    mlcache's `mlflow` plugin calls, without the cache (diagnostic)."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(url)
    start = time.perf_counter()
    first = None
    n = 0
    token = None
    for _ in range(10_000):  # bounded
        page = client.search_runs([exp_id], "", ViewType.ALL, max_results=RUN_PAGE, page_token=token)
        if len(page) and first is None:
            first = time.perf_counter() - start
        n += len(page)
        token = page.token
        if not token:
            break
    return {"total": time.perf_counter() - start, "first": first, "n": n}


def mlcache_online_find(url: str, exp_id: str, cache: Path) -> dict:
    api = mlcache.get_api("mlflow", tracking_uri=url, cache_dir=cache)
    return timed_iter(lambda: api.find_runs({"exp.id": exp_id}))


def file_creation_floor(cache: Path, folder: Path) -> float:
    """Seconds to create, in one new folder beside the cache, as many files as the cache holds run
    documents, each with a document's bytes (one thread, bare open/write/close, no sync): what
    creating the write-through's files costs on this filesystem at this moment, with no mlcache code.
    The files stay until the end (see the note at the repetitions)."""
    return time_file_creation(folder, [path.read_bytes() for path in (cache / "metadata" / "run").glob("*.json")])


# ------------------------------------------------------------------------------------ 20k, mlcache only
def big_cache(cache: Path, n: int) -> tuple[str, float, float, dict]:
    """A cache of `n` runs written through by one online find of the memory plugin; (exp id, fill s,
    threshold, find stats)."""
    from mlcache.testing import MemoryBackend

    start = time.perf_counter()
    backend = MemoryBackend(page_size=RUN_PAGE)
    api = mlcache.get_api("memory", cache_dir=cache, backend=backend)
    exp_id = api.create_exp("big").id
    rng = random.Random(SEED + 2)
    lrs = lr_values(n)
    for i in range(n):
        doc = api._impl_create_run(exp_id, f"run-{i:05d}", {"team": json.dumps(rng.choice("abcde"))})
        acc = rng.random()
        api._impl_log_batch(
            doc["id"],
            {"lr": json.dumps(lrs[i]), "layers": json.dumps(rng.choice((2, 4, 8, 16)))},
            [("acc", acc, 0, 0), ("loss", 1 - acc, 0, 0)],
            {},
        )
    built = time.perf_counter() - start
    fill = timed_iter(lambda: api.find_runs({"exp.id": exp_id}))
    threshold = sorted(lrs, reverse=True)[max(1, round(n * MATCH_SHARE)) - 1]
    return exp_id, built, threshold, fill


# ------------------------------------------------------------------------------------ main
def mlcache_export(cache: Path, url: str, seeded: Seeded, bundle: Path) -> float:
    exe = shutil.which("mlcache")
    cmd = [exe] if exe else [sys.executable, "-c", "from mlcache.cli import run; run()"]
    start = time.perf_counter()
    subprocess.run(
        [
            *cmd,
            "--cache-dir",
            str(cache),
            "--tracking-uri",
            url,
            "--quiet",
            "export",
            f"models:/{seeded.model}/{seeded.version}",
            "--to",
            str(bundle),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 runs (smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per tool (medians of these)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="duration of each timed loop (default 1.5, quick 0.5)"
    )
    parser.add_argument(
        "--mlopus-online-cap", type=float, default=600.0, help="seconds allowed for mlopus's online find (reference)"
    )
    parser.add_argument("--report", type=Path, default=None, help="also write the report (table, ratios) to this file")
    args = parser.parse_args()
    n_runs = QUICK_RUNS if args.quick else FULL_RUNS
    seconds = args.seconds or (0.5 if args.quick else 1.5)
    repeats = max(1, args.repeats)
    big_n = BIG_RUNS

    started = time.perf_counter()
    lines: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    python = peers.mlopus_python()
    versions = peers.peer_versions(python)
    scratch = Path(tempfile.mkdtemp(prefix="mlcache-bench-peers-", dir="/tmp"))
    s3 = server = None
    try:
        s3, server = start_servers(scratch)
        seeded = seed_server(server.url, n_runs, scratch)
        print(f"seeded {n_runs} runs + 1 model version in {seeded.seconds:.1f}s")
        query = {"exp.id": seeded.exp_id, "params.lr": {"$gte": seeded.threshold}}
        env = peers.peer_env(s3, scratch / "peer", python, server.url)
        peer_conf = {
            "url": server.url,
            "cache": str(scratch / "mlopus-cache"),
            "export": str(scratch / "mlopus-export"),
            "model": seeded.model,
            "version": seeded.version,
            "run_id": seeded.run_ids[1],
            "exp": seeded.exp_id,
            "query": json.dumps(query),
            "seconds": seconds,
            "cap": args.mlopus_online_cap,
        }

        def peer(mode: str, timeout: float, **extra: Any) -> dict:
            conf = {**peer_conf, **extra, "mode": mode}
            return peers.run_peer(
                python, HELPERS + MLOPUS_SCRIPT, {**env, "BENCH_PEER_CONF": json.dumps(conf)}, timeout
            )

        # set-up, untimed (mlopus's online find is timed once, as a reference)
        t = time.perf_counter()
        peer_setup = peer("setup", 300)
        print(f"mlopus set up in {time.perf_counter() - t:.1f}s (export {peer_setup['export_s']:.2f}s)")
        t = time.perf_counter()
        peer_fill = peer("fill", args.mlopus_online_cap + 300)["find"]
        print(
            f"mlopus online find of {peer_fill['n']} runs: {peer_fill['total']:.1f}s ({time.perf_counter() - t:.1f}s)"
        )
        peer_find_ok = peer_fill["n"] == n_runs

        cache = scratch / "mlcache-cache"
        api = mlcache.get_api("mlflow", tracking_uri=server.url, cache_dir=cache)
        api.get_exp(seeded.exp_id)  # the process's first REST call pays one-off imports: not in a timing
        key = (seeded.model, seeded.version)
        path = api.cache_model_artifact(key)
        api.cache_run_meta(seeded.run_ids[1])
        bundle = scratch / "mlcache-bundle"
        export_s = mlcache_export(cache, server.url, seeded, bundle)
        # the same two calls mlopus makes, in process (a reference beside the CLI's)
        t = time.perf_counter()
        api.export_model_version_meta(key, scratch / "mlcache-export")
        api.export_model_artifact(key, scratch / "mlcache-export")
        api_export_s = time.perf_counter() - t
        off = api.in_offline_mode
        print(f"mlcache set up: {len(list(Path(path).iterdir()))} files; export {export_s:.2f}s (CLI)")

        rows = {
            "hit": Row("warm hit get_model_artifact((name, v)), offline", "calls/s", higher_is_better=True),
            "hit_held": Row("warm hit through a held version, offline", "calls/s", higher_is_better=True),
            "bundle_ms": Row("new offline api over exported bundle + 1 hit", "ms"),
            "get_run_ms": Row("get_run, offline", "ms"),
            "find": Row(f"offline find_runs, {seeded.expected} of {n_runs} hits", "s"),
            "find_new": Row("  the same on a new api (diag.)", "s"),
            "online": Row(f"online find_runs of {n_runs} runs, write-through", "s", peer_name="raw paging"),
            "online_first": Row("  time to the first result (online)", "ms", peer_name="raw paging"),
            "online_client": Row("  MlflowClient.search_runs paging (diag.)", "s", peer_name="MlflowClient"),
        }
        find_counts: dict[str, list[int]] = {"mlcache": [], "mlopus": []}
        warmups: dict[str, list[float]] = {"mlcache": [], "mlopus": []}
        find_cache: Path | None = None
        creation_floor: list[float] = []
        # Nothing is deleted between timed steps: every cache and folder stays in the
        # scratch dir until the end. ext4 without a journal (this machine's root filesystem) skips, when it
        # allocates an inode, every free inode deleted in the last 60 s (300 s while its inode table block is
        # dirty), reading each one's deletion time: after thousands of deletions, creating a file costs
        # hundreds of microseconds instead of about 25 (`perf`: `recently_deleted` in `find_inode_bit`), so
        # removing one repetition's cache would slow the next write-through, which raw paging does not pay.
        for rep in range(repeats):
            flip = rep % 2 == 1
            # online: mlcache's find into an empty cache, raw paging and MlflowClient paging, back to back
            fresh = scratch / f"mlcache-find-{rep}"
            online_results: dict[str, dict] = {}
            for tool in ("client", "raw", "mlcache") if flip else ("mlcache", "raw", "client"):
                if tool == "raw":
                    online_results[tool] = raw_paging(server.url, seeded.exp_id)
                elif tool == "client":
                    online_results[tool] = client_paging(server.url, seeded.exp_id)
                else:
                    online_results[tool] = mlcache_online_find(server.url, seeded.exp_id, fresh)
            if {r["n"] for r in online_results.values()} != {n_runs}:
                counts = {k: r["n"] for k, r in online_results.items()}
                raise RuntimeError(f"online finds returned {counts} runs, not {n_runs}")
            online, raw = online_results["mlcache"], online_results["raw"]
            creation_floor.append(file_creation_floor(fresh, scratch / f"creation-floor-{rep}"))
            rows["online_client"].peer.append(online_results["client"]["total"])
            rows["online"].mlcache.append(online["total"])
            rows["online"].peer.append(raw["total"])
            rows["online_first"].mlcache.append(online["first"] * 1000)
            rows["online_first"].peer.append(raw["first"] * 1000)
            if find_cache is None:
                find_cache = fresh  # the offline finds run over what the first online find wrote
            # offline: the same rows for both tools, by the same timing code (order flipped)
            for tool in ("mlcache", "mlopus") if flip else ("mlopus", "mlcache"):
                if tool == "mlopus":
                    result = peer("rep", 900, find=peer_find_ok)
                    side = "peer"
                else:
                    result = mlcache_rep(off, bundle, seeded, seconds, query, find_cache)
                    side = "mlcache"
                for name in ("hit", "hit_held", "bundle_ms", "get_run_ms"):
                    getattr(rows[name], side).append(result[name])
                if "find" in result:
                    getattr(rows["find"], side).append(result["find"]["total"])
                    getattr(rows["find_new"], side).append(result["find_new"]["total"])
                    find_counts[tool].extend(result[k]["n"] for k in ("find_warmup", "find", "find_new"))
                    warmups[tool].append(result["find_warmup"]["total"])
            print(f"repetition {rep + 1}/{repeats} done ({time.perf_counter() - started:.0f}s)")

        # mlcache alone: 20,000 runs
        big = scratch / "mlcache-big"
        big_exp, big_build, big_thr, big_fill = big_cache(big, big_n)
        print(
            f"20k cache: {big_fill['n']} runs in memory in {big_build:.1f}s, "
            f"written through in {big_fill['total']:.1f}s"
        )
        big_query = {"exp.id": big_exp, "params.lr": {"$gte": big_thr}}
        big_expected = sum(1 for v in lr_values(big_n) if v >= big_thr)
        first_new = timed_iter(lambda: mlcache.get_api("offline", cache_dir=big).find_runs(big_query))
        big_all = {"exp.id": big_exp}
        warm_api = mlcache.get_api("offline", cache_dir=big)
        for q in (big_query, big_all):  # untimed warm-up of the api the target rows use
            timed_iter(lambda q=q: warm_api.find_runs(q))
        big_first = Row(f"first result, offline query over {big_n:,} runs ({big_expected:,} hits)", "ms")
        big_first_new = Row("  the same on a new api (diag.)", "ms")
        big_hit = Row(f"entities per hit, whole result of {big_n:,} runs", "us")
        big_hit_new = Row("  the same on a new api (diag.)", "us")
        big_counts: set[tuple[int, int]] = set()
        for _ in range(max(3, repeats)):
            new_api = mlcache.get_api("offline", cache_dir=big)
            for api_, first_row, hit_row in ((new_api, big_first_new, big_hit_new), (warm_api, big_first, big_hit)):
                res = timed_iter(lambda a=api_: a.find_runs(big_query))
                whole = timed_iter(lambda a=api_: a.find_runs(big_all))
                first_row.mlcache.append(res["first"] * 1000)
                # all but the first result: what building each further entity costs
                hit_row.mlcache.append((whole["total"] - whole["first"]) / max(1, whole["n"] - 1) * 1e6)
                big_counts.add((res["n"], whole["n"]))
        if big_counts != {(big_expected, big_n)}:
            raise RuntimeError(
                f"20k finds returned (hits, all) {sorted(big_counts)}, expected ({big_expected}, {big_n})"
            )

        # ------------------------------------------------------------------ report
        med = Row.med
        out(f"mlcache bench_peers: {datetime.datetime.now().isoformat(timespec='seconds')}")
        out(
            f"machine: {os.cpu_count()} cores (affinity {len(os.sched_getaffinity(0))}), {platform.machine()}, "
            f"Python {platform.python_version()}, mlcache {mlcache.__version__}, "
            f"mlflow {_version('mlflow')} (server and mlcache), mlopus {versions.get('mlopus')} "
            f"(mlflow-skinny {versions.get('mlflow-skinny')}, own venv)"
        )
        out(
            f"data: {n_runs} runs in one experiment (seeded in {seeded.seconds:.0f}s), query "
            f"{{'params.lr': {{'$gte': {seeded.threshold}}}}} -> {seeded.expected} hits; 1 model version "
            f"of {seeded.files} small files; {repeats} repetitions, tools interleaved (order flipped), "
            f"loops of {seconds:g}s"
        )
        out()
        header = (
            f"{'row':<58} {'mlcache':>10} {'peer':>10} {'unit':>8}  {'peer is':<11} "
            f"{'mlcache spread':>16} {'peer spread':>16}"
        )
        out(header)
        out("-" * len(header))
        for row in (*rows.values(), big_first, big_first_new, big_hit, big_hit_new):
            peer_name = row.peer_name if row.peer else "-"
            out(
                f"{row.name:<58} {fmt(med(row.mlcache), row.unit):>10} {fmt(med(row.peer), row.unit):>10} "
                f"{row.unit:>8}  {peer_name:<11} {spread(row.mlcache, row.unit):>16} {spread(row.peer, row.unit):>16}"
            )
        out()
        out("References (once, not repeated):")
        peer_first = "-" if peer_fill["first"] is None else f"{peer_fill['first'] * 1000:.0f} ms"
        out(
            f"  mlopus online find_runs of {n_runs} runs (no write-through; capped at {args.mlopus_online_cap:g}s): "
            f"{peer_fill['total']:.2f}s for {peer_fill['n']} runs, first result {peer_first}"
        )
        out(
            f"  export of the version: mlcache export_model_version_meta + export_model_artifact {api_export_s:.2f}s "
            f"(in process), mlcache export (CLI process) {export_s:.2f}s; mlopus export_model_version_meta + "
            f"export_model_artifact {peer_setup['export_s']:.2f}s"
        )
        out(
            f"  file-creation floor after each online find: {n_runs} new files of the run documents' bytes in a "
            f"fresh folder, one thread, no sync: {fmt(med(creation_floor), 's')}s median "
            f"({spread(creation_floor, 's')}); the write-through's time over raw paging: "
            f"{fmt(med(rows['online'].mlcache) - med(rows['online'].peer), 's')}s (medians)"
        )
        out(
            f"  untimed warm-up find before each timed offline find_runs: mlcache "
            f"{fmt(med(warmups['mlcache']), 's')}s, mlopus {fmt(med(warmups['mlopus']), 's')}s (medians)"
        )
        out(
            f"  20k: first query of the first new offline api {first_new['total'] * 1000:.0f} ms "
            f"(first result {first_new['first'] * 1000:.1f} ms); fill: {big_n:,} runs written through by one "
            f"online find (memory plugin) in {big_fill['total']:.1f}s"
        )

        def counts(tool: str) -> str:
            found = find_counts[tool]
            return f"{sorted(set(found))} in {len(found)} finds" if found else "not run"

        out(
            f"  offline find hit counts: mlcache {counts('mlcache')}, mlopus {counts('mlopus')}, "
            f"expected {seeded.expected}"
        )

        # ------------------------------------------------------------------ targets
        results: list[bool] = []

        def target(label: str, value: float, op: str, goal: float | None, note: str = "", unit: str = "x") -> None:
            shown = f"{value:>8.2f}{unit:<2}"
            if goal is None:
                out(f"  {label:<60} {shown}  {'(no target)':<12} {note}".rstrip())
                return
            met = value == value and (value >= goal if op == ">=" else value <= goal)  # nan: not met
            results.append(met)
            out(f"  {label:<60} {shown}  {f'{op} {goal:g}{unit}':<12} {'yes' if met else 'NO'} {note}".rstrip())

        def ratio(a: float, b: float) -> float:
            return a / b if b == b and a == a and b else math.nan

        out()
        out(f"  {'Ratios of medians':<60} {'value':>10}  {'target':<12} met")
        target(
            "warm hit (name, v): mlcache / mlopus calls/s",
            ratio(med(rows["hit"].mlcache), med(rows["hit"].peer)),
            ">=",
            3,
        )
        target(
            "warm hit (name, v): mlcache / mlopus with a held version",
            ratio(med(rows["hit"].mlcache), med(rows["hit_held"].peer)),
            ">=",
            None,
        )
        target(
            "warm hit, held version: mlcache / mlopus calls/s",
            ratio(med(rows["hit_held"].mlcache), med(rows["hit_held"].peer)),
            ">=",
            1,
        )
        target(
            "new api over a bundle + hit: mlopus ms / mlcache ms",
            ratio(med(rows["bundle_ms"].peer), med(rows["bundle_ms"].mlcache)),
            ">=",
            None,
        )
        target(
            "get_run offline: mlopus ms / mlcache ms",
            ratio(med(rows["get_run_ms"].peer), med(rows["get_run_ms"].mlcache)),
            ">=",
            None,
        )
        counts_ok = set(find_counts["mlcache"]) == {seeded.expected} and set(find_counts["mlopus"]) == {seeded.expected}
        target(
            "offline find_runs: mlopus s / mlcache s",
            ratio(med(rows["find"].peer), med(rows["find"].mlcache)),
            ">=",
            20,
            "" if counts_ok else "(hit counts differ or mlopus's find did not run: not met)",
        )
        if not counts_ok:
            results.append(False)
        target(
            "offline find_runs on a new api: mlopus s / mlcache s",
            ratio(med(rows["find_new"].peer), med(rows["find_new"].mlcache)),
            ">=",
            None,
        )
        target(
            "online find_runs: mlcache s / raw paging s",
            ratio(med(rows["online"].mlcache), med(rows["online"].peer)),
            "<=",
            1.2,
        )
        target(
            "online find_runs: mlcache s / MlflowClient paging s (diag.)",
            ratio(med(rows["online"].mlcache), med(rows["online_client"].peer)),
            "<=",
            None,
        )
        target(
            "online find_runs: mlopus s (once) / mlcache s",
            ratio(peer_fill["total"], med(rows["online"].mlcache)),
            ">=",
            None,
            f"({peer_fill['n']} runs)",
        )
        target(
            "online first result: mlopus ms (once) / mlcache ms",
            ratio(
                math.nan if peer_fill["first"] is None else peer_fill["first"] * 1000, med(rows["online_first"].mlcache)
            ),
            ">=",
            None,
        )
        target(f"first result offline over {big_n // 1000}k runs", med(big_first.mlcache), "<=", 5, unit="ms")
        target("entities per hit, large result", med(big_hit.mlcache), "<=", 20, unit="us")
        out()
        out(f"total benchmark time {time.perf_counter() - started:.0f}s")
        ok = all(results)
        out("all targets met" if ok else f"{results.count(False)} target(s) missed")
        if args.report is not None:
            args.report.write_text("\n".join(lines) + "\n")
        return 0 if ok else 1
    finally:
        for proc in (server, s3):
            if proc is not None:
                proc.stop()
        rmtree(scratch)


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())
