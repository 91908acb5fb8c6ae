"""Write-through in bulk: a page of documents is one durable commit and one index transaction, a
process killed while writing pages leaves whole documents, and two writers of the same documents
(no lock between them) leave an index that agrees with the files."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import mlcache
from mlcache import durability
from mlcache import index as index_module
from mlcache import layout as layout_module
from mlcache.layout import CacheLayout
from mlcache.metadata_store import MetadataStore
from mlcache.testing import InMemoryPlugin, MemoryBackend

EXP = {"id": "1", "name": "exp-1", "tags": {}, "artifact_location": None, "lifecycle_stage": "active"}


def run_doc(run_id: str, n: int) -> dict[str, Any]:
    return {"id": run_id, "name": run_id, "exp_id": "1", "status": "FINISHED", "tags": {}, "params": {"n": n}}


def documents_on_disk(root: Path) -> dict[str, int]:
    """The generation `n` of every run document in the cache; each must be a whole JSON document."""
    found = {}
    for path in (root / "metadata" / "run").glob("*.json"):
        body = json.loads(path.read_bytes())
        found[body["key"][0]] = body["data"]["params"]["n"]
    return found


def found_offline(root: Path) -> dict[str, int]:
    api = mlcache.get_api("offline", cache_dir=str(root))
    return {run.id: run.params["n"] for run in api.find_runs({"exp.id": "1"})}


def test_an_online_find_writes_each_page_with_one_index_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = MemoryBackend(page_size=100)
    seed = InMemoryPlugin(cache_dir=tmp_path / "seed", backend=backend)
    exp = seed.create_exp("e")
    ids = [seed.create_run(exp, f"r{i}").id for i in range(250)]

    transactions: list[str] = []
    real_write = index_module.MetadataIndex._write

    def counting_write(self: index_module.MetadataIndex, kind: str, work: Any) -> None:
        transactions.append(kind)
        real_write(self, kind, work)

    batches: list[int] = []
    real_many = layout_module.write_atomic_many

    def counting_many(files: Any, tmp_dir: Path, durable: bool = True) -> None:
        batches.append(len(files))
        real_many(files, tmp_dir, durable)

    monkeypatch.setattr(index_module.MetadataIndex, "_write", counting_write)
    monkeypatch.setattr("mlcache.metadata_store.write_atomic_many", counting_many)
    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    before = backend.calls.copy()
    found = [run.id for run in api.find_runs({"exp.id": exp.id})]
    searches = backend.calls["search_runs"] - before["search_runs"]

    assert sorted(found) == sorted(ids)
    assert searches == 3
    assert batches == [100, 1, 100, 50], "three pages, and the experiment when the first run is composed"
    assert transactions == ["run", "exp", "run", "run"]
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    offline = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend, offline_mode=True)
    assert sorted(run.id for run in offline.find_runs({"exp.id": exp.id})) == sorted(ids)


def test_a_page_of_model_versions_writes_its_alias_pointers_with_it(tmp_path: Path) -> None:
    backend = MemoryBackend(page_size=2)
    seed = InMemoryPlugin(cache_dir=tmp_path / "seed", backend=backend)
    exp = seed.create_exp("e")
    run = seed.create_run(exp, "train")
    source = tmp_path / "model"
    source.mkdir()
    (source / "w.bin").write_bytes(b"w")
    for _ in range(3):
        backend.add_logged_model(exp.id, "model", source, run.id, "m")
    seed.set_model_alias(("m", "3"), "prod")
    seed.set_model_alias(("m", "1"), "old")

    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    assert sorted(mv.version for mv in api.find_model_versions({"model.name": "m"})) == ["1", "2", "3"]
    aliases = tmp_path / "cache" / "metadata" / "alias" / "m"
    assert {p.name: json.loads(p.read_text())["data"] for p in aliases.iterdir()} == {
        "prod.json": {"version": "3"},
        "old.json": {"version": "1"},
    }
    offline = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend, offline_mode=True)
    assert offline.get_model_version(("m", "@prod")).version == "3"


PAGE_WRITER = """
import sys
from mlcache import durability
from mlcache.layout import CacheLayout
durability.UNWRITTEN_LIMIT = int(sys.argv[2])
from mlcache.metadata_store import MetadataStore
store = MetadataStore(CacheLayout(sys.argv[1]))
store.put("exp", ("1",), {"id": "1", "name": "exp-1", "tags": {}})
n = 0
while True:
    page = [("run", (f"r{i:03d}",), {"id": f"r{i:03d}", "name": f"r{i:03d}", "exp_id": "1", "status": "FINISHED",
             "tags": {"pad": "x" * 3000}, "params": {"n": n}}) for i in range(200)]
    store.put_many(page)
    n += 1
    print(n, flush=True)
"""


@pytest.mark.parametrize("commit", ["one filesystem sync", "an fsync each"])
@pytest.mark.parametrize("pages_before_kill", [1, 4, 9])
def test_a_process_killed_while_writing_pages_leaves_whole_documents_the_index_agrees_with(
    tmp_path: Path, pages_before_kill: int, commit: str
) -> None:
    limit = 1 << 40 if commit == "one filesystem sync" else -1
    writer = subprocess.Popen(
        [sys.executable, "-c", PAGE_WRITER, str(tmp_path), str(limit)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        for _ in range(pages_before_kill):
            assert writer.stdout.readline().strip()
        time.sleep(0.002 * pages_before_kill)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    on_disk = documents_on_disk(tmp_path)
    assert len(on_disk) == 200
    generations = set(on_disk.values())
    assert generations <= set(range(pages_before_kill - 1, pages_before_kill + 60)), generations
    assert found_offline(tmp_path) == on_disk
    assert all(path.suffix == ".tmp" for path in (tmp_path / "tmp").iterdir())


RIVAL_WRITER = """
import sys
from mlcache.layout import CacheLayout
from mlcache.metadata_store import MetadataStore
store = MetadataStore(CacheLayout(sys.argv[1]))
base = int(sys.argv[2])
for n in range(base, base + 40):
    store.put_many([("run", (f"r{i}",), {"id": f"r{i}", "name": f"r{i}", "exp_id": "1", "status": "FINISHED",
                     "tags": {}, "params": {"n": n}}) for i in range(50)])
"""


def test_two_writers_of_the_same_documents_leave_an_index_that_agrees_with_the_files(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    store.put("exp", ("1",), EXP)
    store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", -1)) for i in range(50)])
    assert set(found_offline(tmp_path).values()) == {-1}
    writers = [
        subprocess.Popen([sys.executable, "-c", RIVAL_WRITER, str(tmp_path), str(base)]) for base in (1000, 2000)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    on_disk = documents_on_disk(tmp_path)
    assert set(on_disk) == {f"r{i}" for i in range(50)}
    assert set(on_disk.values()) <= {1039, 2039}
    assert found_offline(tmp_path) == on_disk
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_batch_that_fails_midway_leaves_no_temp_file_and_the_documents_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    store.put("exp", ("1",), EXP)
    store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", 0)) for i in range(20)])
    real_replace = os.replace
    renamed: list[str] = []

    def failing_replace(src: Any, dst: Any) -> None:
        if len(renamed) == 5:
            raise OSError(28, "No space left on device")
        renamed.append(Path(dst).name)
        real_replace(src, dst)

    monkeypatch.setattr(layout_module.os, "replace", failing_replace)
    with pytest.raises(mlcache.CacheNotWritable, match="no space left"):
        store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", 1)) for i in range(20)])
    monkeypatch.undo()
    assert list((tmp_path / "tmp").iterdir()) == []
    on_disk = documents_on_disk(tmp_path)
    assert sorted(on_disk.values()) == [0] * 15 + [1] * 5
    assert found_offline(tmp_path) == on_disk


def committed_by(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The directories whose filesystem `write_atomic_many` flushed in one call, as it happens."""
    synced: list[Path] = []
    real_sync = layout_module.sync_filesystem

    def recording_sync(directory: Path) -> None:
        synced.append(directory)
        real_sync(directory)

    monkeypatch.setattr(layout_module, "sync_filesystem", recording_sync)
    return synced


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_a_large_page_is_made_durable_by_one_filesystem_sync_and_a_small_one_by_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durability, "UNWRITTEN_LIMIT", 1 << 40)
    synced = committed_by(monkeypatch)
    store = MetadataStore(CacheLayout(tmp_path))
    store.put("exp", ("1",), EXP)
    store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", 0)) for i in range(durability.SYNCFS_FROM - 1)])
    assert synced == []
    store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", 1)) for i in range(durability.SYNCFS_FROM)])
    assert synced == [tmp_path / "tmp"]
    on_disk = documents_on_disk(tmp_path)
    assert on_disk == {f"r{i}": 1 for i in range(durability.SYNCFS_FROM)}
    assert found_offline(tmp_path) == on_disk
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_large_page_fsyncs_each_file_while_the_machine_has_much_else_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durability, "UNWRITTEN_LIMIT", -1)
    synced = committed_by(monkeypatch)
    store = MetadataStore(CacheLayout(tmp_path))
    store.put("exp", ("1",), EXP)
    store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", 2)) for i in range(100)])
    assert synced == []
    assert documents_on_disk(tmp_path) == {f"r{i}": 2 for i in range(100)}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/meminfo is Linux's")
def test_the_machine_s_unwritten_bytes_are_read_from_proc_meminfo() -> None:
    pending = durability.unwritten_bytes()
    assert isinstance(pending, int) and pending >= 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_a_filesystem_sync_that_cannot_open_its_directory_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        durability.sync_filesystem(tmp_path / "absent")


def test_a_sandbox_that_refuses_syncfs_gets_each_file_fsynced_and_is_not_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def refusing_syncfs(fd: int) -> int:
        calls.append(fd)
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(durability, "_probed", True)
    monkeypatch.setattr(durability, "_syncfs", refusing_syncfs)
    monkeypatch.setattr(durability, "UNWRITTEN_LIMIT", 1 << 40)
    store = MetadataStore(CacheLayout(tmp_path))
    store.put("exp", ("1",), EXP)
    store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", 3)) for i in range(100)])
    store.put_many([("run", (f"r{i}",), run_doc(f"r{i}", 4)) for i in range(100)])
    assert len(calls) == 1
    assert durability._syncfs is None
    assert documents_on_disk(tmp_path) == {f"r{i}": 4 for i in range(100)}
    assert list((tmp_path / "tmp").iterdir()) == []
