"""The derived offline index: values sqlite cannot hold as they are, whole updates under concurrent
readers, an index another process holds, files edited in place, a garbage or unwritable index
file, and fields of composed entities."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

import mlcache
from mlcache import index as index_module
from mlcache.index import INDEX_VERSION
from mlcache.index_refresh import doc_text
from mlcache.index_sql import LeafCondition, leaves, sql_filter
from mlcache.layout import CacheLayout
from mlcache.metadata_store import MetadataStore
from mlcache.plugins.mlflow import MlflowApi
from mlcache.query import compile_query

EXP = {
    "id": "1",
    "name": "exp-1",
    "tags": {},
    "artifact_location": None,
    "lifecycle_stage": "active",
    "creation_time": None,
    "last_update_time": None,
}


def run_doc(run_id: str, **params: Any) -> dict[str, Any]:
    return {"id": run_id, "name": run_id, "exp_id": "1", "status": "FINISHED", "tags": {}, "params": params}


def cache_with_runs(root: Path, params: dict[str, dict[str, Any]]) -> MetadataStore:
    store = MetadataStore(CacheLayout(root))
    store.put("exp", ("1",), EXP)
    for run_id, run_params in params.items():
        store.put("run", (run_id,), run_doc(run_id, **run_params))
    return store


def offline_ids(root: Path, query: dict[str, Any]) -> list[str]:
    """Ids of the runs an offline api over `root` finds (a new api, so a new index connection)."""
    return sorted(run.id for run in mlcache.get_api("offline", cache_dir=str(root)).find_runs(query))


def write_document(store: MetadataStore, kind: str, key: tuple[str, ...], data: dict[str, Any]) -> Path:
    """A document file written behind the store's back (a bundle copied in, another tool)."""
    path = store.path(kind, key)
    body = {"kind": kind, "key": list(key), "cached_at": "2026-01-01T00:00:00+00:00", "stale": False, "data": data}
    path.write_text(json.dumps(body))
    return path


def edit_in_place(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a document's bytes in the same file (open, truncate, write: no rename)."""
    body = json.loads(path.read_bytes())
    change(body["data"])
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode())


# ----------------------------------------------------------------------------- numbers
NUMBERS: dict[str, Any] = {
    "small": 5,
    "e20": 10**20,
    "e20+1": 10**20 + 1,
    "over64": 2**63 + 5,
    "huge": 10**400,
    "-huge": -(10**400),
    "inf": math.inf,
    "-inf": -math.inf,
    "nan": math.nan,
    "float": 9.2e18,
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"params.x": {"$gt": 10**20}}, ["e20+1", "huge", "inf"]),
        ({"params.x": {"$gte": 10**20}}, ["e20", "e20+1", "huge", "inf"]),
        ({"params.x": 10**20 + 1}, ["e20+1"]),
        ({"params.x": {"$in": [10**20, 5]}}, ["e20", "small"]),
        ({"params.x": {"$gt": 2**63}}, ["e20", "e20+1", "huge", "inf", "over64"]),
        ({"params.x": {"$gt": float(2**63)}}, ["e20", "e20+1", "huge", "inf", "over64"]),
        ({"params.x": {"$lt": 2**63 + 6}}, ["-huge", "-inf", "float", "over64", "small"]),
        ({"params.x": {"$lt": 2**63 + 5}}, ["-huge", "-inf", "float", "small"]),
        ({"params.x": {"$lte": -(10**400)}}, ["-huge", "-inf"]),
        ({"params.x": {"$lt": -(10**400)}}, ["-inf"]),
        ({"params.x": {"$gt": 1e308}}, ["huge", "inf"]),
        ({"params.x": math.inf}, ["inf"]),
        ({"params.x": {"$lt": math.inf}}, ["-huge", "-inf", "e20", "e20+1", "float", "huge", "over64", "small"]),
        ({"params.x": {"$gt": -math.inf}}, ["-huge", "e20", "e20+1", "float", "huge", "inf", "over64", "small"]),
        ({"params.x": {"$gte": -math.inf, "$lt": 6}}, ["-huge", "-inf", "small"]),
    ],
)
def test_numbers_beyond_64_bits_and_infinities_are_found_offline(
    tmp_path: Path, query: dict[str, Any], expected: list[str]
) -> None:
    cache_with_runs(tmp_path, {label: {"x": value} for label, value in NUMBERS.items()})
    assert offline_ids(tmp_path, query) == expected


@pytest.mark.parametrize(
    "query",
    [
        {"params.x": math.nan},
        {"params.x": {"$gte": math.nan}},
        {"params.x": {"$lte": math.nan}},
        {"params.x": {"$gt": math.nan}},
        {"params.x": {"$in": [math.nan, 5]}},
        {"params.x": {"$ne": math.nan}},
    ],
)
def test_conditions_on_nan_are_left_to_the_full_query(tmp_path: Path, query: dict[str, Any]) -> None:
    store = cache_with_runs(tmp_path, {label: {"x": value} for label, value in NUMBERS.items()})
    flt = sql_filter(compile_query(query)._definition, {}, "run")
    assert flt.conditions == [] and flt.clauses == []
    assert len(list(store.index.candidates("run", flt))) == len(NUMBERS)
    compiled = compile_query(query)
    local = sorted(label for label, value in NUMBERS.items() if compiled.match(run_doc(label, x=value)))
    assert offline_ids(tmp_path, query) == local


def test_sql_filter_converts_numbers_as_the_index_stores_them() -> None:
    def conditions(query: dict[str, Any]) -> list[LeafCondition]:
        return sql_filter(query, {}).conditions

    assert conditions({"x": {"$gt": 10**20}}) == [LeafCondition("x", ">=", (1e20,))]
    assert conditions({"x": {"$lt": -(2**63) - 1}}) == [LeafCondition("x", "<=", (-(2.0**63),))]
    assert conditions({"x": {"$gt": 5}, "y": {"$lt": 0.5}}) == [
        LeafCondition("x", ">", (5,)),
        LeafCondition("y", "<", (0.5,)),
    ]
    assert conditions({"x": {"$lt": 2**63 - 1}}) == [LeafCondition("x", "<", (2**63 - 1,))]
    assert conditions({"x": {"$gt": -math.inf}}) == [LeafCondition("x", ">=", (-math.inf,))]
    assert conditions({"x": 10**400}) == [LeafCondition("x", "=", (math.inf,))]
    assert conditions({"x": {"$in": [10**20, 3]}}) == [LeafCondition("x", "IN", (1e20, 3))]
    assert conditions({"x": "\ud800"}) == conditions({"x": {"$in": ["a", "\udfff"]}}) == []
    found, exact = leaves({"a\udc80": 1, "b": "\ud800", "c": [2, math.nan, True], "d": 2**64})
    assert (sorted(found), exact) == ([("c", 2), ("d", 2.0**64)], False)
    assert leaves({"a": [1, 2**64 - 1, -(2**63), 1.5, None, True]})[1] is True
    assert leaves({"a": [1, {"b": -(2**63) - 1}]})[1] is False
    assert leaves({"a": {"b": -math.inf}})[1] is False


def test_values_sqlite_cannot_hold_do_not_break_writes_or_finds(tmp_path: Path) -> None:
    store = cache_with_runs(tmp_path, {"big": {"x": 10**20}, "nan": {"x": math.nan}, "ok": {"x": 1}})
    write_document(store, "run", ("odd",), run_doc("odd", x=1, note="\ud800"))
    assert offline_ids(tmp_path, {"params.x": 1}) == ["odd", "ok"]
    assert offline_ids(tmp_path, {"params.note": "\ud800"}) == ["odd"]
    assert offline_ids(tmp_path, {"params.x": {"$gte": 1}}) == ["big", "odd", "ok"]


def test_plain_mlflow_params_beyond_64_bits_and_infinities(api: MlflowApi, unique: str) -> None:
    exp = api.create_exp(f"numbers-{unique}")
    client = MlflowClient(api.resolved_tracking_uri)
    raw = {"big": "100000000000000000000", "inf": "Infinity", "ninf": "-Infinity", "nan": "NaN", "small": "7"}
    for name, value in raw.items():
        run = api.create_run(exp, name)
        client.log_param(run.id, "x", value)
    decoded = {run.name: run.params["x"] for run in api.find_runs(exp=exp)}
    assert decoded["big"] == 10**20 and decoded["inf"] == math.inf and math.isnan(decoded["nan"])
    offline = api.in_offline_mode
    for query, expected in [
        ({"params.x": {"$gt": 10}}, ["big", "inf"]),
        ({"params.x": {"$lt": 0}}, ["ninf"]),
        ({"params.x": 10**20}, ["big"]),
        ({"params.x": {"$gte": 7}}, ["big", "inf", "small"]),
    ]:
        assert sorted(run.name for run in api.find_runs(query, exp=exp)) == expected, query
        assert sorted(run.name for run in offline.find_runs(query, exp=exp)) == expected, query
        everywhere = {"$and": [query, {"exp.id": exp.id}]}
        assert sorted(run.name for run in offline.find_runs(everywhere)) == expected, query


def test_a_long_in_list_that_sqlite_cannot_take_is_left_to_the_full_query(tmp_path: Path) -> None:
    cache_with_runs(tmp_path, {"a": {}, "b": {}})
    with contextlib.closing(sqlite3.connect(":memory:")) as conn:
        getlimit = getattr(conn, "getlimit", None)
        limit = getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit else 999
    ids = [f"x{i}" for i in range(limit)]
    assert offline_ids(tmp_path, {"id": {"$in": [*ids, "a"]}}) == ["a"]
    assert offline_ids(tmp_path, {"id": {"$in": [*ids, "b"]}, "name": "b"}) == ["b"]


# ----------------------------------------------------------------------------- concurrency
WRITER = """
import sys, time
from mlcache.layout import CacheLayout
from mlcache.metadata_store import MetadataStore
store = MetadataStore(CacheLayout(sys.argv[1]))
deadline, n = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < deadline:
    for i in range(6):
        params = {"lr": 0.1, "n": n, "grid": list(range(30))}
        store.put("run", (f"r{i}",), {"id": f"r{i}", "name": f"r{i}", "exp_id": "1", "params": params})
    n += 1
print(n)
"""
READER = """
import json, sys, time
import mlcache
api = mlcache.get_api("offline", cache_dir=sys.argv[1])
deadline, finds, wrong = time.monotonic() + float(sys.argv[2]), 0, []
while time.monotonic() < deadline:
    found = sorted(run.id for run in api.find_runs({"params.lr": 0.1}))
    finds += 1
    if found != [f"r{i}" for i in range(6)]:
        wrong.append(found)
print(json.dumps({"finds": finds, "wrong": wrong[:5], "wrong_count": len(wrong)}))
"""


def test_readers_beside_a_writer_always_see_every_matching_run(tmp_path: Path) -> None:
    params: dict[str, dict[str, Any]] = {f"r{i}": {"lr": 0.1, "n": -1, "grid": list(range(30))} for i in range(6)}
    cache_with_runs(tmp_path, {**params, **{f"o{i}": {"lr": 0.2} for i in range(30)}})
    assert offline_ids(tmp_path, {"params.lr": 0.1}) == [f"r{i}" for i in range(6)]
    seconds = "5"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), seconds], stdout=subprocess.PIPE, text=True)
    readers = [
        subprocess.Popen([sys.executable, "-c", READER, str(tmp_path), seconds], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(reader.communicate(timeout=120)[0]) for reader in readers]
    writer_out, _ = writer.communicate(timeout=120)
    assert [reader.returncode for reader in readers] == [0, 0] and writer.returncode == 0
    assert [(result["wrong_count"], result["wrong"]) for result in results] == [(0, []), (0, [])]
    assert min(result["finds"] for result in results) > 20 and int(writer_out) > 5


HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN " + sys.argv[2])
print("held", flush=True)
time.sleep(10)
"""


@contextlib.contextmanager
def index_held(path: Path, mode: str) -> Iterator[None]:
    """Another process holding the index file in an open transaction (at most 10 s)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("mode", ["EXCLUSIVE", "IMMEDIATE"])
def test_an_index_held_by_another_process_stalls_neither_finds_nor_writes(tmp_path: Path, mode: str) -> None:
    store = cache_with_runs(tmp_path, {"a": {"lr": 1}, "b": {"lr": 2}})
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a"]
    expected = sorted(["a", *(f"w{i}" for i in range(20))])
    with index_held(tmp_path / "metadata" / "index.sqlite", mode):
        started = time.monotonic()
        for i in range(20):
            store.put("run", (f"w{i}",), run_doc(f"w{i}", lr=1))
        writes = time.monotonic() - started
        started = time.monotonic()
        found = offline_ids(tmp_path, {"params.lr": 1})
        find = time.monotonic() - started
    assert found == expected
    assert writes < 3 and find < 2
    assert offline_ids(tmp_path, {"params.lr": 1}) == expected
    with contextlib.closing(sqlite3.connect(tmp_path / "metadata" / "index.sqlite")) as conn:
        files = conn.execute("SELECT count(*) FROM files WHERE kind = 'run' AND key IS NOT NULL").fetchone()[0]
    assert files == 22


# ----------------------------------------------------------------------------- staleness
def test_a_file_edited_in_place_is_seen_by_the_next_find(tmp_path: Path) -> None:
    store = cache_with_runs(tmp_path, {"a": {"lr": 1}, "b": {"lr": 1}})
    api = mlcache.get_api("offline", cache_dir=str(tmp_path))
    assert sorted(run.id for run in api.find_runs({"params.lr": 1})) == ["a", "b"]
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a", "b"]
    path = store.path("run", ("a",))
    before = path.stat()
    folder_mtime = path.parent.stat().st_mtime_ns
    edit_in_place(path, lambda data: data["params"].update(lr=2))
    after = path.stat()
    assert (after.st_ino, after.st_size, path.parent.stat().st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        folder_mtime,
    )
    assert sorted(run.id for run in api.find_runs({"params.lr": 2})) == ["a"]
    assert sorted(run.id for run in api.find_runs({"params.lr": 1})) == ["b"]
    assert offline_ids(tmp_path, {"params.lr": 2}) == ["a"]
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["b"]


def test_an_edit_that_keeps_size_and_modification_time_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "RACY_NS", 0)
    store = cache_with_runs(tmp_path, {"a": {"lr": 1}, "b": {"lr": 1}})
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a", "b"]
    with contextlib.closing(sqlite3.connect(tmp_path / "metadata" / "index.sqlite")) as conn:
        assert conn.execute("SELECT count(*) FROM files WHERE kind = 'run' AND stamp IS NULL").fetchone()[0] == 0
    path = store.path("run", ("a",))
    before = path.stat()
    time.sleep(0.05)
    edit_in_place(path, lambda data: data["params"].update(lr=2))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert offline_ids(tmp_path, {"params.lr": 2}) == ["a"]


def test_a_stamp_is_kept_only_once_its_file_is_older_than_a_timestamp_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "RACY_NS", 300_000_000)
    cache_with_runs(tmp_path, {"a": {"lr": 1}})

    def unknown_stamps() -> int:
        with contextlib.closing(sqlite3.connect(tmp_path / "metadata" / "index.sqlite")) as conn:
            return conn.execute("SELECT count(*) FROM files WHERE kind = 'run' AND stamp IS NULL").fetchone()[0]

    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a"]
    assert unknown_stamps() == 1
    time.sleep(0.4)
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a"]
    assert unknown_stamps() == 0


def test_only_new_changed_and_removed_files_are_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "RACY_NS", 0)
    store = cache_with_runs(tmp_path, {f"r{i:02d}": {"lr": i % 2} for i in range(30)})
    parsed: list[list[str]] = []
    scan = store.index._scan

    def counting_scan(kind: str, paths: list[Path]) -> Any:
        parsed.append(sorted(path.name for path in paths))
        return scan(kind, paths)

    store.index._scan = counting_scan

    def found(query: dict[str, Any]) -> list[str]:
        compiled = compile_query(query)
        flt = sql_filter(compiled._definition, {}, "run")
        return sorted(entry.key[0] for entry in store.index.candidates("run", flt) if compiled.match(entry.data))

    odd = [f"r{i:02d}" for i in range(1, 30, 2)]
    assert found({"params.lr": 1}) == odd
    assert parsed == [[]], "documents written through the store are indexed; their digests were only checked"
    assert found({"params.lr": 1}) == odd and len(parsed) == 1
    edit_in_place(store.path("run", ("r03",)), lambda data: data["params"].update(lr=0))
    assert found({"params.lr": 1}) == [r for r in odd if r != "r03"]
    assert parsed[-1] == ["r03.json"]
    store.path("run", ("r05",)).unlink()
    assert found({"params.lr": 1}) == [r for r in odd if r not in ("r03", "r05")]
    assert parsed[-1] == []
    write_document(store, "run", ("r99",), run_doc("r99", lr=1))
    assert found({"params.lr": 1}) == [*(r for r in odd if r not in ("r03", "r05")), "r99"]
    assert parsed[-1] == ["r99.json"]


# ----------------------------------------------------------------------------- damaged or unwritable index
@pytest.mark.parametrize("damage", ["random bytes", "pages after the header"])
def test_a_garbage_index_file_is_rebuilt_on_disk(tmp_path: Path, damage: str) -> None:
    store = cache_with_runs(tmp_path, {"a": {"lr": 1}, "b": {"lr": 2}})
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a"]
    store.index.close()
    index_path = tmp_path / "metadata" / "index.sqlite"
    if damage == "random bytes":
        index_path.write_bytes(hashlib.sha256(b"seed").digest() * 512)
    else:
        original = index_path.read_bytes()
        index_path.write_bytes(original[:100] + bytes(range(256)) * ((len(original) - 100) // 256 + 1))
    store.put("run", ("c",), run_doc("c", lr=1))
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a", "c"]
    assert index_path.read_bytes()[:16] == b"SQLite format 3\x00"
    with contextlib.closing(sqlite3.connect(index_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == INDEX_VERSION
        assert conn.execute("SELECT count(*) FROM entities WHERE kind = 'run'").fetchone()[0] == 3
    assert offline_ids(tmp_path, {"params.lr": 2}) == ["b"]


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under root with its size, modification time and content digest."""
    found = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(root))] = (info.st_size, info.st_mtime_ns, digest)
    return found


def run_without_write_access(root: Path, code: str) -> subprocess.CompletedProcess:
    """Run `code` in a process that cannot write under `root` (root loses its override too)."""
    command = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot make the cache read-only")
        caps = "-dac_override,-dac_read_search"
        command = [setpriv, f"--inh-caps={caps}", f"--bounding-set={caps}", *command]
    subprocess.run(["chmod", "-R", "a-w", str(root)], check=True)
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=True)


@pytest.mark.skipif(os.name != "posix", reason="read-only folders by chmod")
@pytest.mark.parametrize("index_file", ["garbage", "absent", "stale"])
def test_a_read_only_cache_is_answered_from_memory_and_nothing_is_written(tmp_path: Path, index_file: str) -> None:
    cache = tmp_path / "cache"
    store = cache_with_runs(cache, {"a": {"lr": 1}, "b": {"lr": 2}})
    assert offline_ids(cache, {"params.lr": 1}) == ["a"]
    store.index.close()
    index_path = cache / "metadata" / "index.sqlite"
    if index_file == "garbage":
        index_path.write_bytes(b"not an index" * 1000)
    elif index_file == "absent":
        index_path.unlink()
    else:
        write_document(store, "run", ("c",), run_doc("c", lr=1))
    before = snapshot(cache)
    code = textwrap.dedent(
        f"""
        import mlcache
        api = mlcache.get_api("offline", cache_dir={str(cache)!r})
        print(sorted(run.id for run in api.find_runs({{"params.lr": 1}})))
        print(sorted(run.id for run in api.find_runs({{"params.lr": 2}})))
        """
    )
    result = run_without_write_access(cache, code)
    assert result.returncode == 0, result.stderr
    expected = "['a', 'c']" if index_file == "stale" else "['a']"
    assert result.stdout.splitlines() == [expected, "['b']"]
    assert snapshot(cache) == before


# ----------------------------------------------------------------------------- composed entities
def test_fields_of_composed_entities_are_pushed_as_stored_ids_or_not_at_all() -> None:
    query = {
        "run.id": "r1",
        "model.name": "m",
        "run.params.x": 1,
        "run.exp.name": "e",
        "model.tags.t": "v",
        "run": {"$exists": True},
        "version": "2",
    }
    mv = sql_filter(query, {}, "mv")
    assert (mv.clauses, mv.params) == (["model_name IN (?)"], ["m"])
    assert mv.conditions == [LeafCondition("run_id", "=", ("r1",)), LeafCondition("version", "=", ("2",))]
    run = sql_filter({"exp.id": "1", "exp.name": "e", "exp.tags.t": "v", "params.x": 1}, {}, "run")
    assert (run.clauses, run.params) == (["exp_id IN (?)"], ["1"])
    assert run.conditions == [LeafCondition("params.x", "=", (1,))]
    assert sql_filter({"run.id": "r1", "exp.name": "e", "model.name": "m"}, {}) == index_module.SqlFilter()


def test_offline_finds_agree_with_online_on_fields_of_composed_entities(api: MlflowApi, unique: str) -> None:
    exp = api.create_exp(f"composed-{unique}")
    first = api.create_run(exp, "first")
    first.log_params({"x": 1})
    second = api.create_run(exp, "second")
    second.log_params({"x": 2})
    name = f"composed-model-{unique}"
    api.register_model_version(name, first, "model")
    api.register_model_version(name, second, "model")
    offline = api.in_offline_mode
    for query, expected in [
        ({"run.id": first.id}, ["1"]),
        ({"run.id": {"$in": [first.id, second.id]}}, ["1", "2"]),
        ({"model.name": name}, ["1", "2"]),
        ({"model.name": name, "run.params.x": 2}, ["2"]),
        ({"run.exp.name": exp.name}, ["1", "2"]),
    ]:
        assert sorted(mv.version for mv in api.find_model_versions(query)) == expected, query
        assert sorted(mv.version for mv in offline.find_model_versions(query)) == expected, query
    for query, names in [
        ({"exp.name": exp.name}, ["first", "second"]),
        ({"exp.name": exp.name, "params.x": 1}, ["first"]),
    ]:
        assert sorted(run.name for run in api.find_runs(query)) == names, query
        assert sorted(run.name for run in offline.find_runs(query)) == names, query


def test_the_first_results_come_before_the_folder_is_listed_and_each_result_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "RACY_NS", 0)
    cache_with_runs(tmp_path, {f"r{i:02d}": {"lr": i % 2} for i in range(40)})
    expected = [f"r{i:02d}" for i in range(1, 40, 2)]
    assert offline_ids(tmp_path, {"params.lr": 1}) == expected
    listings: list[Path] = []
    list_files = index_module.list_files

    def noting(base: Path, nested: bool, racy_ns: int) -> Any:
        listings.append(base)
        return list_files(base, nested, racy_ns)

    monkeypatch.setattr(index_module, "list_files", noting)
    found = iter(mlcache.get_api("offline", cache_dir=str(tmp_path)).find_runs({"params.lr": 1}))
    first = next(found).id
    assert listings == []
    ids = [first, *(run.id for run in found)]
    assert listings == [tmp_path / "metadata" / "run"]
    assert sorted(ids) == expected


def test_a_first_result_is_given_from_the_index_only_while_its_file_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "RACY_NS", 0)
    store = cache_with_runs(tmp_path, {f"r{i:02d}": {"lr": i % 2} for i in range(40)})
    assert len(offline_ids(tmp_path, {"params.lr": 1})) == 20
    time.sleep(0.05)
    for i in range(3, 40, 2):
        edit_in_place(store.path("run", (f"r{i:02d}",)), lambda data: data["params"].update(lr=0))
    edit_in_place(store.path("run", ("r02",)), lambda data: data["params"].update(lr=1))
    store.path("run", ("r01",)).unlink()
    store.put("run", ("new",), run_doc("new", lr=1))
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["new", "r02"]
    assert offline_ids(tmp_path, {"params.lr": 0}) == sorted(
        f"r{i:02d}" for i in range(40) if i not in (1, 2) and (i % 2 == 0 or i >= 3)
    )


def test_an_indexed_file_name_outside_the_kind_folder_is_never_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "RACY_NS", 0)
    cache_with_runs(tmp_path, {"a": {"lr": 1}})
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a"]
    index = tmp_path / "metadata" / "index.sqlite"
    outside = tmp_path / "metadata" / "exp" / "1.json"
    info = outside.stat()
    stamp = struct.pack("<qqqQ", info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino)
    with contextlib.closing(sqlite3.connect(index, isolation_level=None)) as conn:
        row = "SELECT doc, digest FROM entities WHERE kind = 'run' AND key = ?"
        doc, digest = conn.execute(row, ('["a"]',)).fetchone()
        evil = json.dumps({**json.loads(doc), "id": "evil", "name": "evil"})
        for name in ("../exp/1.json", "/" + str(outside).lstrip("/")):
            key = json.dumps([f"evil{len(name)}"])
            conn.execute("INSERT INTO files VALUES ('run', ?, ?, ?, ?)", (name, stamp, key, digest))
            entity = conn.execute(
                "INSERT INTO entities VALUES (NULL, 'run', ?, '1', 'evil', NULL, ?, ?, NULL, 0)", (key, evil, digest)
            ).lastrowid
            conn.execute("INSERT INTO leaves VALUES (?, 'run', 'params.lr', 1)", (entity,))
    assert offline_ids(tmp_path, {"params.lr": 1}) == ["a"]
    with contextlib.closing(sqlite3.connect(index)) as conn:
        assert conn.execute("SELECT file FROM files WHERE kind = 'run' ORDER BY file").fetchall() == [("a.json",)]


@pytest.mark.parametrize(
    "value",
    [2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**20 + 1, math.inf, -math.inf, 1.5, "\ud800", True],
)
def test_a_document_reads_back_from_the_index_as_written(value: Any) -> None:
    doc = {"params": {"x": value, "list": [value]}}
    back = index_module._loads(doc_text(doc, leaves(doc)[1]))
    assert back == doc and type(back["params"]["x"]) is type(value)
    nan = index_module._loads(doc_text({"x": math.nan}, False))["x"]
    assert math.isnan(nan)
