"""Warm hits read only what they must, and still see every change: stamps, documents, entries."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mlcache import CacheMiss, CorruptMetadata
from mlcache.testing import InMemoryPlugin, MemoryBackend


def published(tmp_path: Path) -> tuple[MemoryBackend, InMemoryPlugin, str]:
    """A run with a `model` folder registered as version 1 of `m` (alias `prod`), pulled once."""
    backend = MemoryBackend(tmp_path / "server")
    api = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache")
    run = api.create_exp("e").start_run("r", tags={"team": "a"})
    source = tmp_path / "model"
    source.mkdir()
    (source / "weights.bin").write_bytes(b"w" * 4096)
    api.log_run_artifact(run, source, "model")
    api.cache_model_version_meta(run.register_model_version("m", "model", aliases=["prod"]))
    api.get_model_artifact(("m", "1"))
    return backend, api, run.id


def used_stamp(cache: Path, run_id: str) -> Path:
    return cache / "manifests" / "runs" / run_id / "model.used"


def test_a_hit_writes_the_last_used_stamp_at_most_once_a_minute_per_process(tmp_path: Path) -> None:
    backend, _, run_id = published(tmp_path)
    stamp = used_stamp(tmp_path / "cache", run_id)
    hour_ago = time.time() - 3600
    offline = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache", offline_mode=True)

    os.utime(stamp, (hour_ago, hour_ago))
    offline.get_model_artifact(("m", "1"))
    assert stamp.stat().st_mtime > hour_ago + 3000

    os.utime(stamp, (hour_ago, hour_ago))
    for _ in range(5):
        offline.get_model_artifact(("m", "1"))
        offline.get_model_artifact(offline.get_model_version(("m", "@prod")))
    assert stamp.stat().st_mtime == pytest.approx(hour_ago)

    InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache", offline_mode=True).get_model_artifact(("m", "1"))
    assert stamp.stat().st_mtime > hour_ago + 3000


def test_an_unchanged_document_gives_the_same_handle_and_a_changed_one_is_read_again(tmp_path: Path) -> None:
    backend, api, run_id = published(tmp_path)
    offline = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache", offline_mode=True)
    first = offline.get_run(run_id)
    assert offline.get_run(run_id) is first
    assert offline.get_model_version(("m", "1")).run is not None

    api.set_tags_on_run(run_id, {"team": "b"})
    api.get_run(run_id)
    assert offline.get_run(run_id).tags == {"team": "b"}

    document = tmp_path / "cache" / "metadata" / "run" / f"{run_id}.json"
    before = document.stat()
    time.sleep(0.05)
    edited = document.read_bytes().replace(b'"team":"b"', b'"team":"c"')
    assert edited != document.read_bytes()
    with document.open("r+b") as handle:
        handle.write(edited)
    os.utime(document, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert document.stat().st_size == before.st_size
    assert offline.get_run(run_id).tags == {"team": "c"}

    document.write_bytes(b"{ not json")
    with pytest.raises(CorruptMetadata, match="not valid JSON"):
        offline.get_run(run_id)


def test_a_held_handle_rechecks_that_its_entry_is_still_complete(tmp_path: Path) -> None:
    backend, api, _ = published(tmp_path)
    offline = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache", offline_mode=True)
    handle = offline.get_model_version(("m", "@prod"))
    path = offline.get_model_artifact(handle)
    assert (path / "weights.bin").read_bytes() == b"w" * 4096

    assert offline.clean_cached_model_artifact(handle)
    with pytest.raises(CacheMiss, match="models:/m/1"):
        offline.get_model_artifact(handle)

    online_handle = api.get_model_version(("m", "1"))
    assert api.get_model_artifact(online_handle) == path
    assert offline.get_model_artifact(handle) == path
    manifest = json.loads((tmp_path / "cache" / "manifests" / "runs" / handle.run_id / "model.json").read_text())
    assert [row["path"] for row in manifest["files"]] == ["weights.bin"]


def test_an_alias_moved_by_another_client_is_followed_offline(tmp_path: Path) -> None:
    backend, api, run_id = published(tmp_path)
    offline = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache", offline_mode=True)
    first = offline.get_model_artifact(("m", "@prod"))
    run = api.get_run(run_id)
    other = tmp_path / "other"
    other.mkdir()
    (other / "weights.bin").write_bytes(b"v" * 10)
    api.log_run_artifact(run, other, "other")
    version = run.register_model_version("m", "other")
    api.set_model_alias(version, "prod")
    api.get_model_artifact(("m", "@prod"))

    moved = offline.get_model_artifact(("m", "@prod"))
    assert moved != first
    assert (moved / "weights.bin").read_bytes() == b"v" * 10
