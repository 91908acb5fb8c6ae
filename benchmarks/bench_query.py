#!/usr/bin/env python
"""Benchmark offline `find_runs` / `get_run` on caches of 1k, 5k and 20k runs against a naive scan.

One run does everything, with no server (the offline plugin over scratch cache dirs under /tmp):

1. builds one cache per N with `MetadataStore.put` (one experiment, N runs shaped like
   `MlflowApi._run_doc`, fixed random seed, plus a `tags.commit` shared by 5 runs); the build
   time per N is reported;
2. opens `mlcache.get_api("offline", cache_dir=...)` and, per query, times the first
   `list(api.find_runs(q, sort))` (the very first call of a new api rebuilds the derived sqlite
   index from the JSON files) and warm calls (best of 5);
3. times the naive baseline: read + `json.loads` every `metadata/run/*.json`, match the record's
   `data` with `compile_query(q).match` (and sort with `sort_docs` when the query sorts), best of 3;
4. diagnostics per query: the SQL candidate step alone (`index.candidates`, which includes the
   index freshness check) and the freshness check alone (`index.ensure_fresh`), best of 5;
5. warm `api.get_run(run_id)` calls per second;
6. prints ratios naive/find, and per query the growth of the warm find time from the smallest to
   the largest N next to the growth of N itself;
7. with `--profile`, a cProfile of warm finds at the largest N, per query, grouped by step.

Usage: python benchmarks/bench_query.py [--quick] [--sizes 1000,20000] [--profile]
The exit code is 0 when every target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import hashlib
import json
import math
import os
import platform
import pstats
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import calls_per_second

import mlcache
from mlcache.index_sql import sql_filter
from mlcache.layout import CacheLayout
from mlcache.metadata_store import MetadataStore
from mlcache.query import compile_query, sort_docs

SEED = 20260101
FULL_SIZES = (1_000, 5_000, 20_000)
QUICK_SIZES = (500, 2_000)
LRS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.05, 0.1, 0.3, 0.5)  # 10 values, 10 % each
TEAMS = ("a", "b", "c", "d", "e")  # 20 % each
STATUSES = ("FINISHED",) * 16 + ("FAILED",) * 3 + ("KILLED",)  # 80 / 15 / 5 %
COMMIT_RUNS = 5  # runs i // 5 share a `tags.commit`: a query on one commit has 5 hits at any N
TARGET_SPEEDUP = 20.0  # naive scan / warm find at the largest N


def commit_of(i: int) -> str:
    """The `tags.commit` of run i (drawn without the runs' random generator, so that the other
    fields, and the hits of the other queries, are those of the runs without it)."""
    return hashlib.sha1(f"{SEED}-{i // COMMIT_RUNS}".encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- queries
@dataclass(frozen=True)
class Case:
    label: str
    kind: str  # "selective" | "medium"
    query: dict[str, Any]
    sort: list[tuple[str, int]] | None = None


CASES = (
    Case("name (indexed column)", "selective", {"name": "run-00042"}),
    Case(
        "lr+team+acc>0.95 (~0.1%)",
        "selective",
        {"params.lr": 0.5, "tags.team": "c", "metrics.acc": {"$gt": 0.95}},
    ),
    Case("team=b, acc>=0.5 (~10%)", "medium", {"tags.team": "b", "metrics.acc": {"$gte": 0.5}}),
    Case(
        "~0.1% sorted by acc desc",
        "selective",
        {"params.lr": 0.5, "tags.team": "c", "metrics.acc": {"$gt": 0.95}},
        [("metrics.acc", -1)],
    ),
    Case("commit (5 hits at any N)", "selective", {"tags.commit": commit_of(42)}),
    Case("commit+acc>0.5 (2-cond)", "selective", {"tags.commit": commit_of(42), "metrics.acc": {"$gt": 0.5}}),
)


# ----------------------------------------------------------------------------- cache building
def iso(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).isoformat()


def run_doc(rng: random.Random, i: int, base_ms: int) -> dict[str, Any]:
    run_id = f"{rng.getrandbits(128):032x}"
    start = base_ms + i * 60_000 + rng.randrange(1000)
    return {
        "id": run_id,
        "name": f"run-{i:05d}",
        "exp_id": "1",
        "status": rng.choice(STATUSES),
        "start_time": iso(start),
        "end_time": iso(start + rng.randrange(1_000, 3_600_000)),
        "tags": {"team": rng.choice(TEAMS), "owner": {"name": f"user{rng.randrange(20)}"}, "commit": commit_of(i)},
        "params": {"lr": rng.choice(LRS), "layers": rng.randrange(1, 9), "data": {"split": "v2"}},
        "metrics": {"acc": rng.random(), "loss": rng.random() * 3},
        "repo": None,
        "parent_run_id": None,
        "lifecycle_stage": "active",
    }


def build_cache(root: Path, n: int) -> tuple[float, list[str]]:
    """Write one experiment and n runs through `MetadataStore.put`; (seconds, run ids)."""
    rng = random.Random(SEED)
    base_ms = int(datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc).timestamp() * 1000)
    docs = [run_doc(rng, i, base_ms) for i in range(n)]
    store = MetadataStore(CacheLayout(root))
    t = time.perf_counter()
    store.put(
        "exp",
        ("1",),
        {
            "id": "1",
            "name": "bench",
            "tags": {},
            "artifact_location": None,
            "lifecycle_stage": "active",
            "creation_time": None,
            "last_update_time": None,
        },
    )
    for doc in docs:
        store.put("run", (doc["id"],), doc)
    elapsed = time.perf_counter() - t
    store.index.close()
    return elapsed, [d["id"] for d in docs]


# ----------------------------------------------------------------------------- timing helpers
def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = math.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def naive_scan(root: Path, case: Case) -> list[str]:
    """Ids of matching runs from reading every run file; no index, no entities."""
    compiled = compile_query(case.query)
    folder = root / "metadata" / "run"
    hits = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(".json"):
                continue
            with open(entry.path, "rb") as handle:
                data = json.loads(handle.read())["data"]
            if compiled.match(data):
                hits.append(data)
    if case.sort:
        hits = sort_docs(hits, case.sort, lambda d: d, lambda d: (d["id"],))
    return [d["id"] for d in hits]


@dataclass
class QueryResult:
    matches: int = 0
    first: float = 0.0
    warm: float = 0.0
    naive: float = 0.0
    sql: float = 0.0
    ok: bool = True


@dataclass
class SizeResult:
    n: int
    build: float = 0.0
    index_build: float = 0.0
    fresh_check: float = 0.0
    get_run_rate: float = 0.0
    queries: dict[str, QueryResult] = field(default_factory=dict)


def measure(root: Path, n: int, get_run_seconds: float) -> SizeResult:
    res = SizeResult(n)
    res.build, run_ids = build_cache(root, n)
    api = mlcache.get_api("offline", cache_dir=str(root))
    index = api._meta.index  # diagnostics only (private)
    for i, case in enumerate(CASES):
        q = QueryResult()
        t = time.perf_counter()
        found = [r.id for r in api.find_runs(case.query, case.sort)]
        q.first = time.perf_counter() - t
        if i == 0:
            res.index_build = q.first
        q.warm, again = best_of(lambda c=case: [r.id for r in api.find_runs(c.query, c.sort)], 5)
        q.naive, expected = best_of(lambda c=case: naive_scan(root, c), 3)
        flt = sql_filter(compile_query(case.query)._definition, {"exp.id": "exp_id"})
        q.sql, _ = best_of(lambda f=flt: list(index.candidates("run", f)), 5)
        q.matches = len(found)
        if case.sort:
            q.ok = found == again == expected
        else:
            q.ok = sorted(found) == sorted(again) == sorted(expected)
        res.queries[case.label] = q
    res.fresh_check, _ = best_of(lambda: index.ensure_fresh("run"), 5)
    rng = random.Random(SEED + n)
    res.get_run_rate = calls_per_second(lambda: api.get_run(rng.choice(run_ids)), get_run_seconds)[0]
    index.close()
    return res


# ----------------------------------------------------------------------------- profile
PROFILE_ROWS = (
    # (label, filename suffix, function name); times are inclusive (cumulative) and nest
    ("find_runs total (_find + generators)", "finders.py", "matched"),
    ("  index.candidates (SQL + its json.loads)", "index.py", "candidates"),
    ("    ensure_fresh (freshness check)", "index.py", "ensure_fresh"),
    ("      _signature (scandir of metadata/run)", "index.py", "_signature"),
    ("  _run_match_doc (+_with_times)", "finders.py", "_run_match_doc"),
    ("    _with_times (fromisoformat)", "finders.py", "_with_times"),
    ("  MongoQuery.match", "mongoquery/__init__.py", "match"),
    ("  MetadataStore.get (read + parse file)", "metadata_store.py", "get"),
    ("    MetadataStore._parse (json.loads...)", "metadata_store.py", "_parse"),
    ("  _compose_run (exp record + pydantic)", "base.py", "_compose_run"),
    ("    _exp_record (reads exp JSON file)", "base.py", "_exp_record"),
    ("    _compose_exp", "base.py", "_compose_exp"),
    ("    pydantic model_validate (records)", "records.py", "_validated"),
    ("    handles.bind (model_construct)", "handles.py", "bind"),
    ("  sort_docs", "query/sort.py", "sort_docs"),
)


def profile_finds(root: Path, repeats: int = 5) -> None:
    api = mlcache.get_api("offline", cache_dir=str(root))
    for case in CASES:
        list(api.find_runs(case.query, case.sort))  # warm (index fresh)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(repeats):
            list(api.find_runs(case.query, case.sort))
        prof.disable()
        st = pstats.Stats(prof)
        raw = st.stats  # type: ignore[attr-defined]
        total = st.total_tt  # type: ignore[attr-defined]
        print(f"\n  {case.label}: {repeats} warm calls, {total * 1000 / repeats:.2f} ms/call under cProfile")
        for label, suffix, name in PROFILE_ROWS:
            ct = sum(v[3] for (f, _l, fn), v in raw.items() if fn == name and f.endswith(suffix))
            if ct:
                print(f"    {label:<46} {ct * 1000 / repeats:9.2f} ms  {100 * ct / total:5.1f} %")
        # json.loads split by caller
        for (f, _l, fn), (_cc, _nc, _tt, _ct, callers) in raw.items():
            if fn == "loads" and f.endswith(os.path.join("json", "__init__.py")):
                for (cf, _cl, cfn), cv in callers.items():
                    where = f"{Path(cf).name}:{cfn}"
                    print(f"    json.loads from {where:<30} {cv[1]:7d} calls {cv[3] * 1000 / repeats:8.2f} ms")
        print("    top self time:")
        top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:8]
        for (f, line, fn), (_cc, nc, tt, _ct, _callers) in top:
            where = f"{Path(f).name}:{line}({fn})" if f != "~" else fn
            print(f"      {tt * 1000 / repeats:8.2f} ms  {nc // repeats:7d} calls/find  {where[:70]}")
    api._meta.index.close()


# ----------------------------------------------------------------------------- report
def report(results: list[SizeResult]) -> bool:
    ok = True
    print("\nBuild and point reads")
    print(
        f"{'N runs':>8} {'build s':>9} {'us/put':>8} {'index build (1st find) s':>25} "
        f"{'fresh check ms':>15} {'get_run/s':>10}"
    )
    for r in results:
        print(
            f"{r.n:>8} {r.build:9.2f} {r.build * 1e6 / (r.n + 1):8.0f} {r.index_build:25.3f} "
            f"{r.fresh_check * 1000:15.3f} {r.get_run_rate:10.0f}"
        )

    print("\nOffline find_runs (warm: best of 5; naive: read + json.loads + match every run file, best of 3)")
    header = (
        f"{'query':<26} {'N':>6} {'hits':>5} {'first ms':>9} {'warm ms':>9} {'sql ms':>8} "
        f"{'naive ms':>9} {'naive/find':>11}"
    )
    print(header)
    print("-" * len(header))
    for case in CASES:
        for r in results:
            q = r.queries[case.label]
            flag = "" if q.ok else "  MISMATCH with naive scan"
            ok &= q.ok
            print(
                f"{case.label:<26} {r.n:>6} {q.matches:>5} {q.first * 1000:9.2f} {q.warm * 1000:9.2f} "
                f"{q.sql * 1000:8.2f} {q.naive * 1000:9.1f} {q.naive / q.warm:10.1f}x{flag}"
            )

    small, big = results[0], results[-1]
    n_growth = big.n / small.n
    growth_limit = math.sqrt(n_growth)
    print(f"\nTargets at N={big.n}                                  value     target    met")
    for case in CASES:
        q = big.queries[case.label]
        speedup = q.naive / q.warm
        met = speedup >= TARGET_SPEEDUP
        ok &= met
        print(f"  naive/find  {case.label:<34} {speedup:8.1f}x  >= {TARGET_SPEEDUP:.0f}x    {'yes' if met else 'NO'}")
    print(
        f"\nGrowth of warm find time N={small.n} -> N={big.n} (N grows {n_growth:.0f}x; "
        f"target for selective queries: <= sqrt = {growth_limit:.1f}x)"
    )
    for case in CASES:
        g = big.queries[case.label].warm / small.queries[case.label].warm
        gs = big.queries[case.label].sql / small.queries[case.label].sql
        if case.kind == "selective":
            met = g <= growth_limit
            ok &= met
            verdict = "yes" if met else "NO"
        else:
            verdict = "(no target)"
        print(f"  {case.label:<34} find {g:6.1f}x   sql step {gs:6.1f}x   vs N {n_growth:4.0f}x   {verdict}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 500 and 2,000 only")
    parser.add_argument("--sizes", help="comma-separated N values (overrides --quick)")
    parser.add_argument("--get-run-seconds", type=float, default=1.5, help="duration of each get_run loop")
    parser.add_argument("--profile", action="store_true", help="cProfile warm finds at the largest N")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else FULL_SIZES)
    started = time.perf_counter()
    print(
        f"mlcache {getattr(mlcache, '__version__', '?')}, Python {platform.python_version()}, "
        f"{os.cpu_count()} cpus, seed {SEED}, sizes {', '.join(map(str, sizes))}"
    )
    scratch = Path(tempfile.mkdtemp(prefix="mlcache-bench-query-", dir="/tmp"))
    results: list[SizeResult] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning during the benchmark is a failure
            for n in sizes:
                root = scratch / f"cache-{n}"
                print(f"  N={n}: building and measuring...", flush=True)
                results.append(measure(root, n, args.get_run_seconds))
                if args.profile and n == sizes[-1]:
                    print(f"\ncProfile of warm offline find_runs at N={n} (inclusive times; rows nest)")
                    profile_finds(root)
                shutil.rmtree(root, ignore_errors=True)
        ok = report(results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ntotal benchmark time {time.perf_counter() - started:.0f}s")
    print("ALL TARGETS MET" if ok else "SOME TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
