"""The artifact store's on-disk protocol, without servers: staging, verification, links, races."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mlcache.artifact_store import ArtifactStore
from mlcache.entry_io import verify_entry
from mlcache.errors import UnsafeArtifact
from mlcache.layout import CacheLayout
from mlcache.manifest import EntryKey
from mlcache.timeutil import canonical_rfc3339
from mlcache.transfer import Listing, RemoteFile

KEY = EntryKey("runs", ("run1", "model"))


def listing(*files: tuple[str, int], is_dir: bool = True) -> Listing:
    return Listing("s3://bucket/run1/artifacts/model", is_dir, tuple(RemoteFile(p, n) for p, n in files))


def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(CacheLayout(tmp_path / "cache"))


def writer(files: dict[str, bytes], links: dict[str, str] | None = None):
    def fetch(stage: Path, on_file, only=None, plan=None) -> None:
        for rel, data in files.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            (stage / rel).write_bytes(data)
            on_file(rel)
        for rel, target in (links or {}).items():
            os.symlink(target, stage / rel)

    return fetch


def test_a_verified_pull_is_installed_with_its_manifest(tmp_path: Path) -> None:
    s = store(tmp_path)
    path = s.pull(KEY, writer({"a.bin": b"aa", "d/b.bin": b"b"}), lambda: listing(("a.bin", 2), ("d/b.bin", 1)))
    assert path == tmp_path / "cache" / "artifacts" / "runs" / "run1" / "model"
    assert (path / "d" / "b.bin").read_bytes() == b"b"
    manifest = s.read_manifest(KEY)
    assert manifest is not None and [f.path for f in manifest.files] == ["a.bin", "d/b.bin"] and manifest.size == 3
    assert s.lookup(KEY) == path and verify_entry(s, KEY, manifest) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_content_that_differs_from_the_listing_is_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    with pytest.raises(
        UnsafeArtifact, match=r"differs from its listing \(missing \['c.bin'\], extra \[\], size \['a.bin'\]"
    ):
        s.pull(KEY, writer({"a.bin": b"a"}), lambda: listing(("a.bin", 2), ("c.bin", 1)))
    assert s.lookup(KEY) is None and not s.entry_path(KEY).exists()
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_links_out_of_the_tree_are_refused_and_links_inside_are_kept(tmp_path: Path) -> None:
    s = store(tmp_path)
    outside = tmp_path / "secret"
    outside.write_text("x")
    with pytest.raises(UnsafeArtifact, match="link evil points outside the artifact"):
        s.pull(KEY, writer({"a.bin": b"a"}, {"evil": str(outside)}), lambda: listing(("a.bin", 1)))
    with pytest.raises(UnsafeArtifact, match="points outside"):
        s.pull(KEY, writer({"a.bin": b"a"}, {"up": "../../.."}), lambda: listing(("a.bin", 1)))
    assert s.lookup(KEY) is None and list((tmp_path / "cache" / "tmp").iterdir()) == []
    path = s.pull(KEY, writer({"a.bin": b"a"}, {"alias.bin": "a.bin"}), lambda: listing(("a.bin", 1), ("alias.bin", 1)))
    assert (path / "alias.bin").is_symlink() and (path / "alias.bin").read_bytes() == b"a"


def test_a_leftover_without_manifest_is_replaced_but_a_complete_entry_is_kept(tmp_path: Path) -> None:
    s = store(tmp_path)
    leftover = s.entry_path(KEY)
    leftover.mkdir(parents=True)
    (leftover / "a.bin").write_bytes(b"partial")
    assert s.lookup(KEY) is None
    s.pull(KEY, writer({"a.bin": b"first"}), lambda: listing(("a.bin", 5)))
    assert (leftover / "a.bin").read_bytes() == b"first"
    s.pull(KEY, writer({"a.bin": b"other"}), lambda: listing(("a.bin", 5)))
    assert (leftover / "a.bin").read_bytes() == b"first"
    s.pull(KEY, writer({"a.bin": b"newer"}), lambda: listing(("a.bin", 5)), replace=True)
    assert (leftover / "a.bin").read_bytes() == b"newer"


def test_a_single_file_entry(tmp_path: Path) -> None:
    s = store(tmp_path)
    key = EntryKey("runs", ("run1", "dir/w.bin"))
    path = s.pull(key, writer({"w.bin": b"123"}), lambda: listing(("w.bin", 3), is_dir=False))
    assert path.is_file() and path.read_bytes() == b"123" and path.name == "w.bin"
    assert s.covering(EntryKey("runs", ("run1", "dir/w.bin"))) == (key, path)


def test_covering_serves_a_path_inside_a_complete_entry(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.pull(KEY, writer({"d/b.bin": b"b"}), lambda: listing(("d/b.bin", 1)))
    found = s.covering(EntryKey("runs", ("run1", "model/d/b.bin")))
    assert found is not None and found[0] == KEY and found[1].read_bytes() == b"b"
    assert s.covering(EntryKey("runs", ("run1", "model/missing"))) is None
    assert s.covering(EntryKey("runs", ("run1", "modelx"))) is None


def test_remove_and_tampering_is_reported_by_verify(tmp_path: Path) -> None:
    s = store(tmp_path)
    path = s.pull(KEY, writer({"a.bin": b"aa"}), lambda: listing(("a.bin", 2)))
    manifest = s.read_manifest(KEY)
    (path / "a.bin").chmod(0o644)
    (path / "a.bin").write_bytes(b"ab")
    assert verify_entry(s, KEY, manifest) == [f"{path / 'a.bin'}: sha256 differs"]
    assert s.remove(KEY) is True and s.lookup(KEY) is None and not path.exists()
    assert s.remove(KEY) is False


def _partial_writer(final: bytes, replace_after_notice: bytes | None = None):
    """Like rclone: write `x.bin.1a2b3c4d.partial`, announce it, rename it to `x.bin`. With
    `replace_after_notice`, the announced file is then replaced by a new one (a retried transfer)."""

    def fetch(stage: Path, on_file, only=None, plan=None) -> None:
        partial = stage / "x.bin.1a2b3c4d.partial"
        partial.write_bytes(final)
        on_file("x.bin", staged=partial.name)
        if replace_after_notice is not None:
            retried = stage / "x.bin.9f8e7d6c.partial"
            retried.write_bytes(replace_after_notice)
            partial.unlink()
            retried.rename(stage / "x.bin")
        else:
            partial.rename(stage / "x.bin")
        on_file("x.bin")

    return fetch


def test_a_file_announced_under_its_partial_name_is_hashed_once_and_right(tmp_path: Path) -> None:
    import hashlib

    s = store(tmp_path)
    data = os.urandom(3 << 20)
    s.pull(KEY, _partial_writer(data), lambda: listing(("x.bin", len(data)), is_dir=True))
    manifest = s.read_manifest(KEY)
    assert manifest is not None and manifest.files[0].sha256 == hashlib.sha256(data).hexdigest()
    assert verify_entry(s, KEY, manifest) == []


def test_an_early_hash_of_a_file_that_was_replaced_is_not_used(tmp_path: Path) -> None:
    import hashlib

    s = store(tmp_path)
    first, second = os.urandom(1 << 20), os.urandom(1 << 20)
    s.pull(KEY, _partial_writer(first, replace_after_notice=second), lambda: listing(("x.bin", len(second))))
    manifest = s.read_manifest(KEY)
    assert manifest is not None and manifest.files[0].sha256 == hashlib.sha256(second).hexdigest()
    assert (s.entry_path(KEY) / "x.bin").read_bytes() == second
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_an_early_hash_of_a_file_written_to_after_it_is_not_used(tmp_path: Path) -> None:
    import hashlib

    head, tail = os.urandom(1 << 20), os.urandom(1 << 10)

    def fetch(stage: Path, on_file, only=None, plan=None) -> None:
        partial = stage / "x.bin"
        partial.write_bytes(head)
        on_file("x.bin", staged="x.bin")
        time.sleep(1)  # the early hash of the first MiB is done long before
        with open(partial, "ab") as more:  # the same inode, written to after its announcement
            more.write(tail)

    s = store(tmp_path)
    s.pull(KEY, fetch, lambda: listing(("x.bin", len(head) + len(tail))))
    manifest = s.read_manifest(KEY)
    assert manifest is not None and manifest.files[0].sha256 == hashlib.sha256(head + tail).hexdigest()
    assert verify_entry(s, KEY, manifest) == []


def test_big_transfers_whose_bytes_are_all_written_are_announced_once_where_they_sit(
    tmp_path: Path,
) -> None:
    from mlcache.rclone_output import EARLY_HASH_MIN_SIZE, announce_complete_files

    (tmp_path / "d").mkdir()
    for name in ("d/w.bin", "w.bin", "x.bin"):
        (tmp_path / name).write_bytes(b"")
    big = EARLY_HASH_MIN_SIZE
    stats = {
        "transferring": [
            {"name": "d/w.bin", "size": big, "bytes": big},
            {"name": "w.bin", "size": big, "bytes": big - 1},
            {"name": "x.bin", "size": big - 1, "bytes": big - 1},
            {"name": "gone.bin", "size": big, "bytes": big},
        ]
    }
    seen: list[tuple[str, str | None]] = []
    announced: set[str] = set()

    def record(rel: str, staged: str | None = None) -> None:
        seen.append((rel, staged))

    announce_complete_files(stats, tmp_path, record, announced)
    announce_complete_files(stats, tmp_path, record, announced)
    assert seen == [("d/w.bin", "d/w.bin")]
    stats["transferring"][1]["bytes"] = big
    announce_complete_files(stats, tmp_path, record, announced)
    assert seen[1:] == [("w.bin", "w.bin")]
    (tmp_path / "gone.bin").write_bytes(b"")
    announce_complete_files(stats, tmp_path, record, announced)
    assert seen[2:] == []


@pytest.mark.parametrize("name", ["model", "we$ird [1].txt", "x{y}}", "a{{b}}", "back\\slash*", "é€?"])
def test_listing_tells_a_file_from_a_folder_holding_one_file_of_the_same_name(tmp_path: Path, name: str) -> None:
    from mlcache.rclone import RcloneTransfer

    (tmp_path / "as_dir" / name).mkdir(parents=True)
    (tmp_path / "as_dir" / name / name).write_bytes(b"12")
    (tmp_path / "as_file").mkdir()
    (tmp_path / "as_file" / name).write_bytes(b"123")
    (tmp_path / "as_file" / f"{name}.sibling").write_bytes(b"sibling")
    (tmp_path / "as_file" / f"{name}x").mkdir()
    (tmp_path / "as_file" / f"{name}x" / "inside").write_bytes(b"other")
    transfer = RcloneTransfer()
    folder = transfer.list(str(tmp_path / "as_dir" / name))
    assert folder.is_dir and [(f.path, f.size) for f in folder.files] == [(name, 2)]
    single = transfer.list(str(tmp_path / "as_file" / name))
    assert not single.is_dir and [(f.path, f.size) for f in single.files] == [(name, 3)]
    whole = transfer.list(str(tmp_path / "as_file"))
    assert whole.is_dir and sorted(f.path for f in whole.files) == sorted([name, f"{name}.sibling", f"{name}x/inside"])


def test_one_instant_has_one_spelling_in_source_versions() -> None:
    assert canonical_rfc3339("2026-12-02T01:01:16.655+01:00") == "2026-12-02T00:01:16.655000000Z"
    assert canonical_rfc3339("2026-12-02T00:01:16Z") == "2026-12-02T00:01:16.000000000Z"
    assert canonical_rfc3339("2026-12-02T00:01:16.123456789Z") == "2026-12-02T00:01:16.123456789Z"
    assert canonical_rfc3339("2026-12-01T19:01:16.123456789-05:00") == "2026-12-02T00:01:16.123456789Z"
    assert canonical_rfc3339("1969-12-31T23:59:59.5Z") == "1969-12-31T23:59:59.500000000Z"
    assert canonical_rfc3339("not a time") == "not a time"
    utc = Listing("s3://b/m", True, (RemoteFile("a", 1, "2026-12-02T00:01:16.655000000Z"),))
    berlin = Listing("s3://b/m", True, (RemoteFile("a", 1, "2026-12-02T01:01:16.655+01:00"),))
    later = Listing("s3://b/m", True, (RemoteFile("a", 1, "2026-12-02T00:01:16.656000000Z"),))
    assert utc.version() == berlin.version() != later.version()


def test_a_listing_made_in_another_time_zone_has_the_same_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlcache.rclone import RcloneTransfer

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"w")
    url = str(tmp_path / "model")
    monkeypatch.setenv("TZ", "UTC")
    in_utc = RcloneTransfer().list(url)
    monkeypatch.setenv("TZ", "America/New_York")
    in_new_york = RcloneTransfer().list(url)
    assert in_utc.files[0].mtime.endswith("Z") and in_new_york.files[0].mtime.endswith("-05:00")
    assert in_utc.version() == in_new_york.version()
