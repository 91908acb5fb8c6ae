"""Content-addressed blobs on the in-memory plugin: each file stored once, downloads of held files
skipped, accounting by inode, pins, gc, and bundles that carry each blob once or only what a base
lacks. (The same on a real MLflow server and S3 store: test_dedup_server.py; kills: test_blob_crashes.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

import mlcache
from mlcache import hashing
from mlcache.blobs import BlobFolders, BlobStore
from mlcache.bundle import verify
from mlcache.bundle_verify import verify_report
from mlcache.errors import BundleError, UnsafePath
from mlcache.layout import CacheLayout
from mlcache.testing import InMemoryPlugin, MemoryBackend

BIG = 1 << 20
CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]


def _tree(folder: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


@pytest.fixture
def backend(tmp_path: Path) -> MemoryBackend:
    return MemoryBackend(tmp_path / "server")


@pytest.fixture
def api(backend: MemoryBackend, tmp_path: Path) -> InMemoryPlugin:
    return InMemoryPlugin(cache_dir=tmp_path / "cache", backend=backend)


def _two_versions(api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path) -> tuple[str, str]:
    """Version 1, and version 2 in another run sharing the big file and MLmodel under other names."""
    weights = os.urandom(BIG)
    exp = api.create_exp("fraud")
    first = _tree(tmp_path / "v1", {"MLmodel": b"flavors: {}\n", "data/weights.bin": weights, "note.txt": b"one"})
    second = _tree(tmp_path / "v2", {"spec/MLmodel": b"flavors: {}\n", "w.bin": weights, "note.txt": b"two!"})
    _, v1 = backend.add_logged_model(exp.id, "model", first, api.create_run(exp, "a").id, "fraud")
    _, v2 = backend.add_logged_model(exp.id, "model", second, api.create_run(exp, "b").id, "fraud")
    assert v1 is not None and v2 is not None
    return v1, v2


def _disk_bytes(root: Path) -> int:
    seen: dict[tuple[int, int], int] = {}
    for top in ("artifacts", "blobs/sha256"):
        for path in (root / top).rglob("*"):
            info = path.lstat()
            if path.is_file() and not path.is_symlink():
                seen[(info.st_dev, info.st_ino)] = info.st_size
    return sum(seen.values())


def test_a_pull_links_the_files_the_cache_holds_and_downloads_only_the_rest(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same bytes under other names in another run are linked, not copied; the report says so."""
    v1, v2 = _two_versions(api, backend, tmp_path)
    one = api.get_model_artifact(("fraud", v1))
    before = _disk_bytes(api.cache_dir)
    with caplog.at_level(logging.INFO, logger="mlcache.pulls"):
        two = api.get_model_artifact(("fraud", v2))
    assert (one / "data/weights.bin").stat().st_ino == (two / "w.bin").stat().st_ino
    assert (one / "MLmodel").stat().st_ino == (two / "spec/MLmodel").stat().st_ino
    assert (two / "note.txt").read_bytes() == b"two!"
    assert _disk_bytes(api.cache_dir) - before == len(b"two!")
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.name == "mlcache.pulls"] == [
        "linked 2 files, 1.0 MiB, from the cache; downloaded 1 file, 4 B"
    ]
    manifest = json.loads(next((api.cache_dir / "manifests").rglob(f"{two.name}.json")).read_text())
    assert {f["path"]: f["store_hash"][:4] for f in manifest["files"]} == dict.fromkeys(
        ["note.txt", "spec/MLmodel", "w.bin"], "md5:"
    )
    assert api.verify_cache() == []
    offline = api.in_offline_mode
    assert (offline.get_model_artifact(("fraud", v2)) / "w.bin").read_bytes() == (one / "data/weights.bin").read_bytes()
    blob = BlobStore(CacheLayout(api.cache_dir)).held(hashing.sha256_file(two / "w.bin"), BIG)
    assert blob is not None and blob.stat().st_ino == (two / "w.bin").stat().st_ino
    assert blob.stat().st_mode & 0o222 == 0


def test_a_hint_naming_a_blob_the_cache_does_not_hold_is_not_followed(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store-hash hint is a claim: it is followed only to a held blob of the listed size; else the
    file is downloaded (and then shares the blob its bytes name)."""
    v1, v2 = _two_versions(api, backend, tmp_path)
    api.get_model_artifact(("fraud", v1))
    (pack,) = (api.cache_dir / "blobs" / "store").iterdir()
    lines = pack.read_text().splitlines()
    assert len(lines) == 3
    pack.write_text("".join(line.rpartition(" ")[0] + " " + "0" * 64 + "\n" for line in lines))
    with caplog.at_level(logging.DEBUG, logger="mlcache.pulls"):
        two = api.get_model_artifact(("fraud", v2))
    assert [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.name == "mlcache.pulls"] == [
        "downloaded 3 files, 1.0 MiB"
    ]
    assert (two / "w.bin").stat().st_nlink == 3 and api.verify_cache() == []


def test_du_counts_a_shared_blob_once_and_says_what_each_entry_alone_holds(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    v1, v2 = _two_versions(api, backend, tmp_path)
    api.get_model_artifact(("fraud", v1))
    api.get_model_artifact(("fraud", v2))
    usage = api.cache_usage()
    sizes = {row.versions: (row.size, row.unique) for row in usage.entries}
    shared = BIG + len(b"flavors: {}\n")
    assert sizes == {(f"fraud/{v1}",): (shared + 3, 3), (f"fraud/{v2}",): (shared + 4, 4)}
    assert usage.on_disk == shared + 7 == _disk_bytes(api.cache_dir)
    assert usage.loose_blobs == 0 and usage.dedup


def test_prune_counts_shared_blobs_once_and_frees_only_what_nothing_else_holds(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    v1, v2 = _two_versions(api, backend, tmp_path)
    one = api.get_model_artifact(("fraud", v1))
    api.get_model_artifact(("fraud", v2))
    stamp = next((api.cache_dir / "manifests").rglob(f"{one.name}.used"))
    os.utime(stamp, (stamp.stat().st_mtime - 60, stamp.stat().st_mtime - 60))
    shared = BIG + len(b"flavors: {}\n")
    assert api.prune(shared + 7).removed == []
    report = api.prune(shared + 6)
    assert [row.versions for row in report.removed] == [(f"fraud/{v1}",)] and report.freed == 3
    assert _disk_bytes(api.cache_dir) == shared + 4
    assert len(list(BlobStore(CacheLayout(api.cache_dir)).all())) == 3
    assert api.prune(0).freed == shared + 4
    assert _disk_bytes(api.cache_dir) == 0 and list(BlobStore(CacheLayout(api.cache_dir)).all()) == []


def test_pinned_entries_and_aliased_versions_stay_through_prune_across_processes(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    """A pin is on disk: a prune in another process (the CLI, offline) keeps the entry."""
    v1, v2 = _two_versions(api, backend, tmp_path)
    api.pin_artifact(("fraud", v1))
    api.get_model_artifact(("fraud", v2))
    api.set_model_alias(("fraud", v2), "champion")
    api.get_model_version(("fraud", v2), force_refresh=True)
    env = {**os.environ, "MLCACHE_CACHE_DIR": str(api.cache_dir), "MLCACHE_OFFLINE": "1"}
    kept = subprocess.run([*CLI, "prune", "--max-size", "0", "--keep-aliases"], capture_output=True, text=True, env=env)
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == "" and "freed 0 B" in kept.stderr
    listed = subprocess.run([*CLI, "du", "--json"], capture_output=True, text=True, env=env)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((row["versions"], row["pinned"]) for row in rows[:-1]) == [
        ([f"fraud/{v1}"], True),
        ([f"fraud/{v2}@champion"], False),
    ]
    assert [row.versions for row in api.prune(0).removed] == [(f"fraud/{v2}@champion",)]
    assert api.unpin_artifact(("fraud", v1)) is True and api.unpin_artifact(("fraud", v1)) is False
    assert [row.versions for row in api.prune(0).removed] == [(f"fraud/{v1}",)]


def test_gc_removes_loose_blobs_and_orphaned_staging_but_not_a_blob_a_pull_links(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    v1, _ = _two_versions(api, backend, tmp_path)
    one = api.get_model_artifact(("fraud", v1))
    blobs = BlobStore(CacheLayout(api.cache_dir))
    loose = tmp_path / "loose"
    loose.write_bytes(b"nobody holds me")
    loose.chmod(0o444)
    assert blobs.adopt(loose, hashing.sha256_file(loose), loose.stat().st_size)
    loose.unlink()
    linking = api.cache_dir / "tmp" / "pull-abandoned"
    linking.mkdir()
    assert blobs.link_into(hashing.sha256_file(one / "note.txt"), 3, linking / "note.txt")
    api.clean_cached_model_artifact(("fraud", v1))
    assert len(list(blobs.all())) == 2
    report = api.gc()
    assert (report.blobs_removed, report.freed) == (1, len(b"nobody holds me"))
    assert report.temp_removed == 0 and report.temp_busy == 1
    assert [d for d, _, _ in blobs.all()] == [hashing.sha256_file(linking / "note.txt")]


def test_verify_hashes_a_blob_shared_by_entries_once(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = _two_versions(api, backend, tmp_path)
    api.get_model_artifact(("fraud", v1))
    api.get_model_artifact(("fraud", v2))
    read: list[int] = []
    real = hashing.sha256_file

    def counting(path: Path | str) -> str:
        read.append(os.stat(path).st_ino)
        return real(path)

    monkeypatch.setattr("mlcache.entry_io.sha256_file", counting)
    monkeypatch.setattr("mlcache.bundle.sha256_file", counting)
    assert api.verify_cache() == []
    assert len(read) == len(set(read)) == 4


def test_a_bundle_stores_each_blob_once_as_a_folder_and_as_an_archive(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    v1, v2 = _two_versions(api, backend, tmp_path)
    versions = [("fraud", v1), ("fraud", v2)]
    folder = api.export_bundle(tmp_path / "both", versions)
    archive = api.export_bundle(tmp_path / "both.tar.gz", versions)
    assert _disk_bytes(folder) == BIG + len(b"flavors: {}\n") + 7
    assert BIG < archive.stat().st_size < BIG * 1.05
    for bundle in (folder, archive):
        assert verify(bundle) == []
        fresh = InMemoryPlugin(cache_dir=tmp_path / f"into-{bundle.name}", backend=backend, offline_mode=True)
        assert len(fresh.import_bundle(bundle).entries_added) == 2
        assert fresh.verify_cache() == [] and _disk_bytes(fresh.cache_dir) == _disk_bytes(api.cache_dir)


def test_a_differential_bundle_holds_only_what_its_base_lacks(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    v1, v2 = _two_versions(api, backend, tmp_path)
    base = api.export_bundle(tmp_path / "v1.tar.gz", [("fraud", v1)])
    full = api.export_bundle(tmp_path / "v2-full.tar.gz", [("fraud", v2)])
    diff = api.export_bundle(tmp_path / "v2-diff.tar.gz", [("fraud", v2)], base=base)
    assert diff.stat().st_size < full.stat().st_size * 0.05
    report = verify_report(diff)
    assert report.problems == [] and report.base is not None and report.base.name == "v1.tar.gz"
    assert sorted(report.relies.values()) == [len(b"flavors: {}\n"), BIG]
    folder = api.export_bundle(tmp_path / "v2-diff", [("fraud", v2)], base=tmp_path / "v1.tar.gz")
    assert not (folder / "artifacts").exists()
    assert [p.relative_to(folder).parts[:2] for p in (folder / "blobs").rglob("*") if p.is_file()] == [
        ("blobs", "sha256")
    ]

    empty = InMemoryPlugin(cache_dir=tmp_path / "empty", backend=backend, offline_mode=True)
    with pytest.raises(BundleError, match=r"differential over v1\.tar\.gz .*lacks 2 of the 2 blobs .*nothing imported"):
        empty.import_bundle(diff)
    written = [p for p in empty.cache_dir.rglob("*") if p.is_file() and "locks" not in p.parts]
    assert {p.relative_to(empty.cache_dir).as_posix() for p in written} <= {"CACHEDIR.TAG", "layout.json"}

    empty.import_bundle(base)
    assert empty.import_bundle(diff).entries_added and empty.verify_cache() == []
    two = empty.get_model_artifact(("fraud", v2))
    assert (two / "note.txt").read_bytes() == b"two!" and (two / "w.bin").stat().st_nlink == 3


def test_a_bundle_member_linking_to_what_it_did_not_read_first_is_refused(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    """Hardlinks in an archive may only repeat an artifact file read earlier in it."""
    v1, _ = _two_versions(api, backend, tmp_path)
    good = api.export_bundle(tmp_path / "good.tar", [("fraud", v1)])
    with tarfile.open(good) as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]  # type: ignore[union-attr]
    for target in ("./bundle.json", "./artifacts/later", "../outside"):
        bad = tmp_path / f"bad-{len(target)}.tar"
        with tarfile.open(bad, "w") as out:
            for member, data in members:
                out.addfile(member, io.BytesIO(data) if data is not None else None)
            link = tarfile.TarInfo("./artifacts/extra")
            link.type, link.linkname = tarfile.LNKTYPE, target
            out.addfile(link)
        with pytest.raises(BundleError, match="refused member"):
            api.with_cache_dir(tmp_path / f"into-{len(target)}").import_bundle(bad)


def test_a_bundle_blob_whose_bytes_do_not_match_its_name_is_refused(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path
) -> None:
    v1, v2 = _two_versions(api, backend, tmp_path)
    base = api.export_bundle(tmp_path / "b1", [("fraud", v1)])
    diff = api.export_bundle(tmp_path / "b2", [("fraud", v2)], base=base)
    blob = next(p for p in (diff / "blobs").rglob("*") if p.is_file())
    blob.chmod(0o644)
    blob.write_bytes(b"tw0!")
    rel = blob.relative_to(diff).as_posix()
    assert verify(diff) == [f"{rel}: sha256 differs"]
    with pytest.raises(BundleError, match=f"{rel}: sha256 differs"):
        api.with_cache_dir(tmp_path / "into").import_bundle(diff)
    document = json.loads((diff / "bundle.json").read_text())
    for row in document["files"]:
        if row["path"] == rel:
            row["sha256"] = hashing.sha256_file(blob)
    (diff / "bundle.json").write_text(json.dumps(document))
    assert f"{rel}: its bytes do not hash to its name" in verify(diff)


def test_a_cache_that_cannot_hardlink_holds_copies_and_du_says_dedup_is_off(
    api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = _two_versions(api, backend, tmp_path)

    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    fresh = api.with_cache_dir(tmp_path / "copies")
    one, two = fresh.get_model_artifact(("fraud", v1)), fresh.get_model_artifact(("fraud", v2))
    assert (one / "data/weights.bin").stat().st_nlink == 1 and (two / "w.bin").stat().st_nlink == 1
    assert fresh.verify_cache() == [] and fresh.cache_usage().dedup is False
    env = {**os.environ, "MLCACHE_CACHE_DIR": str(fresh.cache_dir), "MLCACHE_OFFLINE": "1"}
    monkeypatch.undo()
    (fresh.cache_dir / "blobs").chmod(0o555)
    try:
        du = subprocess.run([*CLI, "du"], capture_output=True, text=True, env=env)
    finally:
        (fresh.cache_dir / "blobs").chmod(0o755)
    assert du.returncode == 0, du.stderr
    if os.geteuid() != 0:
        assert "dedup is off here" in du.stderr


def test_gc_and_pin_from_the_cli(api: InMemoryPlugin, backend: MemoryBackend, tmp_path: Path) -> None:
    v1, _ = _two_versions(api, backend, tmp_path)
    api.get_model_artifact(("fraud", v1))
    env = {**os.environ, "MLCACHE_CACHE_DIR": str(api.cache_dir), "MLCACHE_OFFLINE": "1"}
    pinned = subprocess.run([*CLI, "pin", f"models:/fraud/{v1}"], capture_output=True, text=True, env=env)
    assert pinned.returncode == 0 and pinned.stdout.startswith(f"pinned models:/fraud/{v1} ("), pinned.stderr
    api.clean_cached_model_artifact(("fraud", v1))
    assert not list((api.cache_dir / "manifests").rglob("*.pin"))
    gc = subprocess.run([*CLI, "gc", "--json"], capture_output=True, text=True, env=env)
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout) == {"blobs_removed": 0, "freed": 0, "blobs_kept": 0, "temp_removed": 0, "temp_busy": 0}
    missing = subprocess.run([*CLI, "pin", f"models:/fraud/{v1}"], capture_output=True, text=True, env=env)
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1


def test_a_cache_of_the_previous_layout_is_read_hit_and_pruned_with_no_download(tmp_path: Path) -> None:
    """A cache written by the release before blobs (layout 1, built here by that code) keeps working."""
    repo = Path(__file__).resolve().parents[1]
    old = tmp_path / "old-release"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "f3bdd5e", "mlcache"], capture_output=True, check=False
    )
    # A shallow clone lacks that commit: the same code is kept as `git archive` wrote it.
    source = io.BytesIO(archive.stdout) if archive.returncode == 0 else None
    kept = Path(__file__).with_name("data") / "mlcache-layout1-release.tar.gz"
    with tarfile.open(fileobj=source) if source is not None else tarfile.open(kept) as tar:
        tar.extractall(old, filter="data")
    cache = tmp_path / "cache"
    script = f"""
import os
from pathlib import Path
from mlcache.testing import InMemoryPlugin, MemoryBackend
backend = MemoryBackend(Path({str(tmp_path / "server")!r}))
api = InMemoryPlugin(cache_dir={str(cache)!r}, backend=backend)
run = api.create_exp("old").start_run("train")
def files(path):
    path.mkdir()
    (path / "MLmodel").write_text("flavors: {{}}\\n")
    (path / "weights.bin").write_bytes(b"w" * 4096)
api.log_model_version("old", run, files, "model", aliases=["prod"])
api.get_model_artifact(("old", "@prod"))
"""
    built = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(old)},
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    assert json.loads((cache / "layout.json").read_text()) == {"version": 1} and not (cache / "blobs").exists()

    offline = mlcache.get_api("offline", cache_dir=cache)
    path = offline.get_model_artifact(("old", "@prod"))
    assert (path / "weights.bin").read_bytes() == b"w" * 4096
    assert offline.verify_cache() == [] and offline.usage()[0].size == 4096 + len("flavors: {}\n")
    report = offline.prune(0)
    assert len(report.removed) == 1 and report.freed == 4096 + len("flavors: {}\n")
    assert json.loads((cache / "layout.json").read_text()) == {"version": 2}
    with pytest.raises(mlcache.CacheMiss):
        offline.get_model_artifact(("old", "@prod"))


def test_a_file_rewritten_between_the_listing_and_the_copy_records_no_store_hash(tmp_path: Path) -> None:
    """The listing's MD5 describes the object it listed; bytes of a newer object written in between
    (another modification time) must not be recorded under it, or a later pull would link them for
    the old file."""
    import hashlib as md5lib

    from mlcache.artifact_store import ArtifactStore
    from mlcache.manifest import EntryKey
    from mlcache.transfer import Listing, RemoteFile

    store = ArtifactStore(CacheLayout(tmp_path / "cache"))
    old, new = b"old weights", b"new weights"
    listed = Listing(
        "s3://bucket/r/model",
        True,
        (
            RemoteFile("w.bin", len(old), "2026-01-01T00:00:00.000000000Z", f"md5:{md5lib.md5(old).hexdigest()}"),
            RemoteFile("same.bin", 4, "2026-01-01T00:00:00.000000000Z", f"md5:{md5lib.md5(b'same').hexdigest()}"),
        ),
    )

    def fetch(stage: Path, on_file: object, only: object = None, plan: object = None) -> None:
        (stage / "w.bin").write_bytes(new)
        (stage / "same.bin").write_bytes(b"same")
        when = 1767225600 * 1_000_000_000
        os.utime(stage / "same.bin", ns=(when, when))

    key = EntryKey("runs", ("0" * 32, "model"))
    store.pull(key, fetch, lambda: listed)
    manifest = store.read_manifest(key)
    assert manifest is not None
    assert {f.path: f.store_hash for f in manifest.files} == {"same.bin": listed.files[1].hash, "w.bin": None}
    assert store.blobs.by_store_hash(listed.files[0].hash, len(old)) is None
    assert store.blobs.by_store_hash(listed.files[1].hash, 4) == md5lib.sha256(b"same").hexdigest()


def _staged_blob(layout: CacheLayout, data: bytes, name: str = "file.bin") -> tuple[Path, str]:
    """A hashed, read-only file in a stage of `layout`, with its sha256."""
    layout.ensure()
    staged = layout.tmp / "pull-test" / name
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_bytes(data)
    staged.chmod(0o444)
    return staged, hashing.sha256_file(staged)


@pytest.mark.parametrize("per_tree", [False, True], ids=["one-file", "a-tree's-files"])
def test_a_blob_folder_swapped_for_a_link_is_never_linked_through(tmp_path: Path, per_tree: bool) -> None:
    layout = CacheLayout(tmp_path / "cache")
    store = BlobStore(layout)
    folders = BlobFolders(store) if per_tree else None
    outside = tmp_path / "outside"
    outside.mkdir()
    staged, digest = _staged_blob(layout, b"weights" * 100)
    folder = store.path(digest).parent
    folder.mkdir(parents=True)
    folder.rmdir()
    folder.symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePath, match="is a link or a file where mlcache keeps its own folder"):
        store.adopt(staged, digest, 700, folders)
    assert list(outside.iterdir()) == []
    assert store.held(digest, 700) is None


def _same_prefix(layout: CacheLayout, digest: str, name: str) -> tuple[Path, str]:
    """Another staged file (`name`) whose sha256 starts like `digest`: its blob shares the folder."""
    for n in range(100_000):
        data = f"other {n}".encode()
        if hashlib.sha256(data).hexdigest()[:2] == digest[:2]:
            staged = layout.tmp / "pull-test" / name
            staged.write_bytes(data)
            staged.chmod(0o444)
            return staged, hashing.sha256_file(staged)
    raise AssertionError("no digest with that prefix")


def _one_adopted(tmp_path: Path) -> tuple[BlobStore, BlobFolders, str, Path, str]:
    """A tree's first file adopted through `BlobFolders`; (store, folders, its digest, a second
    staged file whose blob goes in the same folder, that file's digest)."""
    layout = CacheLayout(tmp_path / "cache")
    store = BlobStore(layout)
    first, digest = _staged_blob(layout, b"first" * 100)
    second, other = _same_prefix(layout, digest, "second.bin")
    folders = BlobFolders(store)
    assert store.adopt(first, digest, 500, folders)
    return store, folders, digest, second, other


def test_a_blob_folder_removed_during_a_trees_adoption_is_made_again(tmp_path: Path) -> None:
    store, folders, digest, second, other = _one_adopted(tmp_path)
    store.path(digest).unlink()
    store.path(digest).parent.rmdir()
    assert store.adopt(second, other, second.stat().st_size, folders)
    assert store.path(other).samefile(second)
    assert not store.path(digest).exists()


@pytest.mark.parametrize("swapped", ["prefix", "sha256"])
def test_a_blob_folder_swapped_for_a_link_during_a_trees_adoption_is_refused(tmp_path: Path, swapped: str) -> None:
    store, folders, digest, second, other = _one_adopted(tmp_path)
    folder = store.path(digest).parent if swapped == "prefix" else store.root / "sha256"
    folder.rename(tmp_path / "moved")  # out of the cache, on the same filesystem
    folder.symlink_to(tmp_path / "moved", target_is_directory=True)
    with pytest.raises(UnsafePath, match="is a link or a file where mlcache keeps its own folder"):
        store.adopt(second, other, second.stat().st_size, folders)
    assert sorted(p.name for p in (tmp_path / "moved").rglob("*") if p.is_file()) == [digest[2:]]


def test_a_missing_blob_folder_is_made_on_adoption(tmp_path: Path) -> None:
    layout = CacheLayout(tmp_path / "cache")
    store = BlobStore(layout)
    staged, digest = _staged_blob(layout, b"layer" * 100)
    assert not store.path(digest).parent.exists()
    assert store.adopt(staged, digest, 500)
    assert store.held(digest, 500) == store.path(digest)
    assert store.path(digest).samefile(staged)


ADOPT_AS_ANOTHER_USER = """
import json, sys
from pathlib import Path
from mlcache.blobs import BlobFolders, BlobStore
from mlcache.layout import CacheLayout
store = BlobStore(CacheLayout(Path(sys.argv[1])))
folders = BlobFolders(store) if sys.argv[4] == "tree" else None
adopted = store.adopt(Path(sys.argv[2]), sys.argv[3], int(sys.argv[5]), folders)
linked = store.link_into(sys.argv[3], int(sys.argv[5]), Path(sys.argv[2]).with_name("linked.bin"))
print(json.dumps([adopted, linked]))
"""


def _kernel_refuses_links_without_capabilities() -> bool:
    """Whether this test can make the kernel refuse a link, tried once: root gives a read-only file
    to another user, setpriv can drop the capabilities that bypass `protected_hardlinks`, and `ln`
    run without them fails to link the file."""
    try:
        if os.geteuid() != 0:
            return False
        with tempfile.TemporaryDirectory() as folder:
            theirs, link = Path(folder, "theirs"), Path(folder, "link")
            theirs.write_bytes(b"x")
            os.chown(theirs, 65534, 65534)
            theirs.chmod(0o444)
            dropped = ["/usr/bin/setpriv", "--bounding-set=-fowner,-dac_override", "--"]
            if subprocess.run([*dropped, "true"], capture_output=True, timeout=30).returncode != 0:
                return False
            subprocess.run([*dropped, "ln", str(theirs), str(link)], capture_output=True, timeout=30)
            return not link.exists()
    except (OSError, AttributeError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(
    not _kernel_refuses_links_without_capabilities(),
    reason="needs root (to give the blob to another user and drop capabilities), protected_hardlinks and setpriv",
)
@pytest.mark.parametrize("per_tree", [False, True], ids=["one-file", "a-tree's-files"])
def test_a_blob_of_another_user_the_kernel_will_not_link_is_neither_shared_nor_linked(
    tmp_path: Path, per_tree: bool
) -> None:
    layout = CacheLayout(tmp_path / "cache")
    store = BlobStore(layout)
    data = b"weights" * 100
    held, digest = _staged_blob(layout, data)
    assert store.adopt(held, digest, len(data))
    os.chown(store.path(digest), 65534, 65534)  # the blob now belongs to another user, read-only
    staged, _ = _staged_blob(layout, data, "second.bin")
    before = os.stat(staged)
    # a process of this user without CAP_FOWNER / CAP_DAC_OVERRIDE: what a plain user is
    result = subprocess.run(
        [
            "/usr/bin/setpriv",
            "--bounding-set=-fowner,-dac_override",
            "--",
            sys.executable,
            "-c",
            ADOPT_AS_ANOTHER_USER,
            str(layout.root),
            str(staged),
            digest,
            "tree" if per_tree else "file",
            str(len(data)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [False, False]  # neither shared nor linked into the stage
    assert not (staged.parent / "linked.bin").exists()
    after = os.stat(staged)
    assert (after.st_ino, after.st_nlink) == (before.st_ino, 1)
    assert staged.read_bytes() == data
    assert os.stat(store.path(digest)).st_nlink == 2  # the first file and the blob, nothing more
    assert [p.name for p in staged.parent.iterdir() if p.name.endswith(".blob")] == []
