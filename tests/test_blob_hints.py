"""Store-hash hint packs (`mlcache.blob_hints`): one pack per pull, merged when they pile up,
every line a claim checked against the held blobs, and gc keeping only what still holds."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlcache.blob_hints import COMPACT_AFTER, PACK_LIMIT, StoreHashHints, format_pack, parse_pack
from mlcache.blobs import BlobStore
from mlcache.layout import CacheLayout


def hold(blobs: BlobStore, data: bytes) -> tuple[str, int, str]:
    """Put `data` in the blob store as a held blob; (its S3-style store hash, size, sha256)."""
    digest = hashlib.sha256(data).hexdigest()
    path = blobs.path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"md5:{hashlib.md5(data).hexdigest()}", len(data), digest


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    layout = CacheLayout(tmp_path / "cache")
    layout.ensure()
    return BlobStore(layout)


def packs(blobs: BlobStore) -> list[Path]:
    return sorted(blobs.hints.folder.iterdir())


def test_one_pull_writes_one_pack_and_a_match_needs_the_blob_held_with_its_size(blobs: BlobStore) -> None:
    items = [hold(blobs, f"file {i}".encode()) for i in range(50)]
    assert not blobs.has_hints()
    blobs.remember_many(items)
    (pack,) = packs(blobs)
    assert pack.name.endswith(".hints") and len(pack.read_text().splitlines()) == 50
    assert blobs.has_hints()
    store_hash, size, digest = items[7]
    assert blobs.by_store_hash(store_hash, size) == digest
    assert blobs.by_store_hash(store_hash, size + 1) is None
    blobs.path(digest).unlink()
    assert blobs.by_store_hash(store_hash, size) is None
    fresh = BlobStore(blobs.layout)
    assert fresh.by_store_hash(*items[8][:2]) == items[8][2]


def test_hints_already_recorded_write_no_new_pack(blobs: BlobStore) -> None:
    items = [hold(blobs, f"file {i}".encode()) for i in range(5)]
    blobs.remember_many(items)
    BlobStore(blobs.layout).remember_many(items[:3])
    assert len(packs(blobs)) == 1
    blobs.remember_many([*items, hold(blobs, b"new")])
    assert [len(p.read_text().splitlines()) for p in sorted(packs(blobs), key=lambda p: p.stat().st_mtime_ns)] == [5, 1]


def test_packs_piling_up_are_merged_and_every_hint_survives(blobs: BlobStore) -> None:
    items = [hold(blobs, f"file {i}".encode()) for i in range(COMPACT_AFTER + 1)]
    for item in items[:COMPACT_AFTER]:
        blobs.remember_many([item])
    assert len(packs(blobs)) == COMPACT_AFTER
    BlobStore(blobs.layout).remember_many([items[-1]])
    (merged,) = packs(blobs)
    assert parse_pack(merged.read_bytes()) == {(h, size): d for h, size, d in items}
    assert all(blobs.by_store_hash(h, size) == d for h, size, d in items)


def test_lines_that_are_not_hints_and_files_that_are_not_packs_are_ignored(blobs: BlobStore, tmp_path: Path) -> None:
    good = hold(blobs, b"good")
    other = hold(blobs, b"other")
    folder = blobs.hints.folder
    folder.mkdir(parents=True)
    lines = [
        f"{good[0]} {good[1]} {good[2]}",
        f"{other[0]} {other[1]} ../../../etc/passwd",
        f"md5:zz {other[1]} {other[2]}",
        f"{other[0]} -4 {other[2]}",
        f"{other[0]} {other[1]} {other[2]} extra",
        f"{other[0]}\t{other[1]}\t{other[2]}",
        "\x00\xff garbage",
    ]
    (folder / f"{'a' * 32}.hints").write_bytes("\n".join(lines).encode("latin-1"))
    outside = tmp_path / "planted"
    outside.write_bytes(format_pack([((other[0], other[1]), other[2])]))
    os.symlink(outside, folder / f"{'b' * 32}.hints")
    (folder / f"{'c' * 32}.hints").mkdir()
    (folder / "notes.hints").write_bytes(format_pack([((other[0], other[1]), other[2])]))
    with (folder / f"{'d' * 32}.hints").open("wb") as big:
        big.truncate(PACK_LIMIT + 1)
    assert blobs.store_hashes() == {(good[0], good[1]): good[2]}
    assert blobs.by_store_hash(other[0], other[1]) is None


def test_gc_keeps_the_hints_of_held_blobs_in_one_pack_and_removes_everything_else(
    blobs: BlobStore, tmp_path: Path
) -> None:
    kept, dropped = hold(blobs, b"kept"), hold(blobs, b"dropped")
    blobs.remember_many([kept])
    blobs.remember_many([dropped])
    folder = blobs.hints.folder
    legacy = folder / "md5" / kept[0][4:6] / f"{kept[0][6:]}.{kept[1]}"
    legacy.parent.mkdir(parents=True)
    legacy.write_text(kept[2])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    os.symlink(victim, folder / "planted")
    os.link(blobs.path(kept[2]), tmp_path / "an entry's file")
    report = blobs.collect()
    assert (report.removed, blobs.held(dropped[2], dropped[1])) == (1, None)
    (pack,) = packs(blobs)
    assert parse_pack(pack.read_bytes()) == {(kept[0], kept[1]): kept[2]}
    assert (victim / "precious").read_text() == "keep me"


def test_a_pack_a_pull_writes_while_gc_prunes_is_kept(blobs: BlobStore) -> None:
    old, new = hold(blobs, b"old"), hold(blobs, b"new")
    blobs.remember_many([old])
    pulling = StoreHashHints(blobs.layout, blobs.root)

    def held_while_a_pull_records(digest: str, size: int) -> bool:
        pulling.record({(new[0], new[1]): new[2]})
        return blobs.held(digest, size) is not None

    blobs.hints.prune(held_while_a_pull_records)
    assert BlobStore(blobs.layout).store_hashes() == {(old[0], old[1]): old[2], (new[0], new[1]): new[2]}
