"""Bulk work runs with the cyclic collector paused: pauses nest and overlap across threads, leave
a collector the user disabled disabled, and a page of documents is written without a collection."""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

import pytest

from mlcache.collector import collector_paused
from mlcache.layout import CacheLayout
from mlcache.metadata_store import OVERLAP_FROM, MetadataStore


def test_pauses_nest_and_the_collector_comes_back_after_the_last() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_pause_ending_in_one_thread_leaves_another_threads_pause_in_force() -> None:
    entered, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def other() -> None:
        with collector_paused():
            entered.set()
            release.wait(10)
            seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    with collector_paused():
        thread.start()
        assert entered.wait(10)
    assert not gc.isenabled()
    release.set()
    thread.join(10)
    assert seen == [False]
    assert gc.isenabled()


def test_a_collector_the_user_disabled_stays_disabled() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_an_error_inside_a_pause_gives_the_collector_back() -> None:
    with pytest.raises(RuntimeError, match="boom"), collector_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_page_of_documents_is_written_without_a_collection(
    tmp_path: Path, eager_collector: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MetadataStore(CacheLayout(tmp_path / "cache"))
    inside: list[int] = []
    real_put_many = MetadataStore._put_many

    def watched(self: MetadataStore, *args: Any) -> Any:
        before = len(eager_collector)
        try:
            return real_put_many(self, *args)
        finally:
            inside.append(len(eager_collector) - before)

    monkeypatch.setattr(MetadataStore, "_put_many", watched)
    page = [
        ("run", (f"r{i}",), {"id": f"r{i}", "exp_id": "1", "params": {"n": str(i)}, "tags": {"t": "x"}})
        for i in range(max(OVERLAP_FROM, 300))
    ]
    store.put_many(page)
    store.put_many([(kind, key, {**data, "status": "RUNNING"}) for kind, key, data in page[: OVERLAP_FROM - 1]])
    paged, unpaused = inside
    assert paged == 0
    assert unpaused > 10  # a write below a page runs as it always did
