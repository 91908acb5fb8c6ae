"""Exporting on the in-memory plugin: each document read once, one target store, nothing extra."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

import mlcache
from mlcache import export as export_module
from mlcache import metadata_store
from mlcache.bundle import verify
from mlcache.layout import FileIdentity
from mlcache.testing import InMemoryPlugin, MemoryBackend


def _files(path: Path) -> None:
    path.mkdir()
    (path / "MLmodel").write_text("flavors: {}\n")
    (path / "weights.bin").write_bytes(b"w" * 4096)


@pytest.fixture
def backend(tmp_path: Path) -> MemoryBackend:
    return MemoryBackend(tmp_path / "server")


def test_exporting_one_version_reads_each_document_once_and_opens_one_target(
    backend: MemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    exp = api.create_exp("fraud")
    run = api.create_run(exp, "train")
    model_id, version = backend.add_logged_model(exp.id, "model", _make(tmp_path), run.id, "fraud")
    api.set_model_alias(("fraud", version), "champion")
    api.get_model_artifact(("fraud", "@champion"))

    reads: Counter[str] = Counter()
    opened: list[Path] = []
    real_read = metadata_store.read_regular_identified
    real_init = export_module.ExportTarget.__init__

    def counting_read(path: Path, limit: int = 256 << 20) -> tuple[bytes, FileIdentity] | None:
        reads[path.relative_to(api.cache_dir).as_posix()] += 1
        return real_read(path, limit)

    def counting_init(self: export_module.ExportTarget, cache_root: Path, target: Path | str, timeout: float) -> None:
        opened.append(Path(target))
        real_init(self, cache_root, target, timeout)

    monkeypatch.setattr(metadata_store, "read_regular_identified", counting_read)
    monkeypatch.setattr(export_module.ExportTarget, "__init__", counting_init)
    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    calls = backend.calls.copy()
    out = tmp_path / "release"
    api.in_offline_mode.export_bundle(out, model_versions=[("fraud", "@champion")])

    assert len(opened) == 1
    assert reads and max(reads.values()) == 1, reads
    assert sorted(reads) == sorted(
        [
            "metadata/alias/fraud/champion.json",
            f"metadata/exp/{exp.id}.json",
            "metadata/lm/" + model_id + ".json",
            "metadata/model/fraud.json",
            f"metadata/mv/fraud/{version}.json",
            f"metadata/run/{run.id}.json",
        ]
    )
    assert verify(out) == []
    listed = json.loads((out / "bundle.json").read_text())
    assert listed["contents"]["model_versions"] == [f"models:/fraud/{version}"]
    assert not (out / "index.sqlite").exists()
    assert backend.calls == calls


def _make(tmp_path: Path) -> Path:
    files = tmp_path / "files"
    _files(files)
    return files


def test_repair_pulls_a_damaged_entry_again_or_imports_it_from_a_bundle(backend: MemoryBackend, tmp_path: Path) -> None:
    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    run = api.create_exp("repair").start_run("train")
    mv = api.log_model_version("repair", run, _files, "model", aliases=["prod"])
    path = api.get_model_artifact(mv)
    bundle = api.export_bundle(tmp_path / "b", model_versions=[mv])
    weights = path / "weights.bin"

    def damage() -> None:
        weights.chmod(0o644)
        weights.write_bytes(b"x" * 4096)

    damage()
    assert [p.split(": ")[-1] for p in api.verify_cache()] == ["sha256 differs"]
    report = api.repair_cache()
    assert report.repaired == [f"runs:/{run.id}/model"] and report.failed == []
    assert weights.read_bytes() == b"w" * 4096 and api.verify_cache() == []

    damage()
    backend.down = True
    offline = api.in_offline_mode
    with pytest.raises(mlcache.OfflineModeError, match="needs the server"):
        offline.repair_cache()
    assert offline.repair_cache(bundle).repaired == [f"runs:/{run.id}/model"]
    assert weights.read_bytes() == b"w" * 4096 and offline.verify_cache() == []
    assert offline.repair_cache().repaired == []


@pytest.mark.parametrize("planted", ["symlink", "hardlink"])
def test_a_link_planted_where_a_lock_names_its_holder_is_not_followed(
    backend: MemoryBackend, tmp_path: Path, planted: str
) -> None:
    from mlcache.layout import CacheLayout
    from mlcache.locks import lock_path

    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    run = api.create_exp("planted").start_run("train")
    api.log_run_artifact(run, _files, "model")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    fresh = api.with_cache_dir(tmp_path / "fresh")
    lock = lock_path(CacheLayout(fresh.cache_dir), "artifacts", "runs", run.id, "model")
    lock.parent.mkdir(parents=True, exist_ok=True)
    owner = lock.with_name(lock.name + ".owner")
    if planted == "symlink":
        owner.symlink_to(victim)
    else:
        os.link(victim, owner)
    calls = backend.calls.copy()
    assert (fresh.get_run_artifact(run, "model") / "weights.bin").read_bytes() == b"w" * 4096
    assert backend.calls != calls, "the artifact was not pulled, so the lock was never taken"
    assert victim.read_text() == "precious"


def test_placing_never_writes_into_the_cache_nor_carries_a_planted_link_out(
    backend: MemoryBackend, tmp_path: Path
) -> None:
    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)
    run = api.create_exp("place").start_run("train")
    mv = api.log_model_version("place", run, _files, "model")
    entry = api.get_model_artifact(mv)
    (tmp_path / "alias").symlink_to(api.cache_dir)
    (tmp_path / "elsewhere").mkdir()
    for sneaky in (tmp_path / "alias" / "artifacts" / "extra", tmp_path / "elsewhere" / ".." / "cache" / "x"):
        with pytest.raises(mlcache.MlcacheError, match="cannot place an artifact inside the cache"):
            api.place_model_artifact(mv, sneaky, link=False)
    assert api.verify_cache() == [] and not (api.cache_dir / "x").exists()
    empty = tmp_path / "deploy"
    empty.mkdir(mode=0o700)
    placed = api.place_model_artifact(mv, empty, link=False)
    assert placed == empty and (empty / "weights.bin").read_bytes() == b"w" * 4096
    assert empty.stat().st_mode & 0o777 == 0o700
    secret = tmp_path / "secret"
    secret.write_text("host file")
    entry.chmod(0o755)
    (entry / "leak").symlink_to(secret)
    for link in (False, True):
        with pytest.raises(mlcache.MlcacheError, match="is a link or special file"):
            api.place_model_artifact(mv, tmp_path / f"out-{link}", link=link)
    assert not (tmp_path / "out-False" / "leak").exists()


def test_the_label_du_shows_for_files_of_another_url_cleans_that_entry(backend: MemoryBackend, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    _files(outside)
    api = InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend, allowed_sources=(outside.as_uri(),))
    run = api.create_exp("urls").start_run("train")
    api.create_model("urls")
    mv = api._impl_create_model_version("urls", outside.as_uri(), run.id, {}, None)
    api.get_model_artifact(("urls", mv["version"]))
    [row] = api.usage()
    assert row.key is not None and row.key.kind == "urls" and row.versions == ("urls/1",)
    assert api.clean_cached_model_artifact(row.label) is True and api.usage() == []


def test_a_transfer_of_whole_files_reports_the_bytes_of_a_big_one_as_they_land(tmp_path: Path) -> None:
    import time

    from mlcache.transfer import file_by_file

    seen: list[tuple[int, int | None]] = []

    class Recorder:
        def update(self, done: int, total: int | None, rate: float | None = None) -> None:
            seen.append((done, total))

        def close(self, ok: bool = True) -> None:
            seen.append((-1, None))

    dest = tmp_path / "dest"
    dest.mkdir()
    with file_by_file(Recorder(), "models:/big@prod", 4 << 20, dest) as advanced, (dest / "big.bin").open("wb") as out:
        for _ in range(4):
            out.write(b"x" * (1 << 20))
            out.flush()
            time.sleep(0.6)
        advanced(4 << 20)
    partial = [done for done, total in seen if 0 < done < 4 << 20]
    assert partial and all(total == 4 << 20 for done, total in seen if done >= 0)
    assert seen[-2] == (4 << 20, 4 << 20) and seen[-1] == (-1, None)
