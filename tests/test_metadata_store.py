"""The metadata store on disk: layout, atomic writes, bad files, concurrent readers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlcache.errors import CorruptMetadata, MlcacheError
from mlcache.layout import CacheLayout
from mlcache.metadata_store import MetadataStore
from mlcache.names import decode_part, encode_part


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_first_write_creates_the_documented_layout(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path / "c"))
    store.put("run", ("r1",), {"id": "r1"})
    root = tmp_path / "c"
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert json.loads((root / "layout.json").read_text()) == {"version": 2}
    body = json.loads((root / "metadata" / "run" / "r1.json").read_text())
    assert body["kind"] == "run" and body["key"] == ["r1"] and body["data"] == {"id": "r1"}
    assert body["cached_at"].endswith("+00:00")
    assert list((root / "tmp").iterdir()) == []
    assert not (root / "locks" / "metadata").exists()


def test_keys_with_separators_and_dots_stay_inside_their_folder(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    for name in ("team/fraud", "..", ".hidden", "a b%c"):
        path = store.path("mv", (name, "1"))
        assert path.parent.parent == tmp_path / "metadata" / "mv"
        assert decode_part(path.parent.name) == name
        store.put("mv", (name, "1"), {"n": name})
    assert sorted(r.key[0] for r in store.scan("mv")) == sorted(["team/fraud", "..", ".hidden", "a b%c"])
    assert encode_part("..") == "%2E."


def test_reads_write_nothing(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path / "c"))
    store.put("exp", ("1",), {"id": "1"})
    before = tree(tmp_path / "c")
    reader = MetadataStore(CacheLayout(tmp_path / "c"))
    assert reader.get("exp", ("1",)) is not None
    assert reader.get("exp", ("2",)) is None
    assert [r.key for r in reader.scan("exp")] == [("1",)]
    assert tree(tmp_path / "c") == before
    assert MetadataStore(CacheLayout(tmp_path / "empty")).get("exp", ("1",)) is None
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"kind": "run", "key": ["r1"], "cached_at": "2026-01-01T00:00:00+00:00", "data": {"id"', "not valid JSON"),
        (b"[]", "expected an object with a 'data' object"),
        (b'{"kind": "exp", "key": ["r1"], "cached_at": "2026-01-01T00:00:00+00:00", "data": {}}', "holds exp"),
        (b'{"kind": "run", "key": ["r2"], "cached_at": "yesterday", "data": {}}', "holds run ['r2'], not ['r1']"),
        (b'{"kind": "run", "key": ["r1"], "data": {"id": "r9"}}', "its 'id' is 'r9', but it is stored as 'r1'"),
    ],
)
def test_malformed_files_are_named_in_the_error(tmp_path: Path, content: bytes, reason: str) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    path = store.path("run", ("r1",))
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(CorruptMetadata) as info:
        store.get("run", ("r1",))
    assert str(path) in str(info.value) and reason in str(info.value)


def test_scan_reports_bad_files_and_goes_on(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    store.put("run", ("a",), {"id": "a"})
    store.put("run", ("c",), {"id": "c"})
    bad = store.path("run", ("b",))
    bad.write_text("{truncated")
    errors: list[CorruptMetadata] = []
    assert [r.key for r in store.scan("run", on_error=errors.append)] == [("a",), ("c",)]
    assert [e.path for e in errors] == [bad]


def test_mark_stale_keeps_the_document(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    store.put("run", ("a",), {"id": "a"})
    store.mark_stale("run", ("a",))
    record = store.get("run", ("a",))
    assert record is not None and record.stale and record.data == {"id": "a"}
    store.mark_stale("run", ("missing",))
    assert store.get("run", ("missing",)) is None


def test_newer_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "layout.json").write_text('{"version": 99}')
    with pytest.raises(MlcacheError, match="layout version 99"):
        MetadataStore(CacheLayout(tmp_path)).put("exp", ("1",), {})


def test_readers_never_see_a_half_written_file_while_another_process_rewrites_it(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    big = {"blob": "x" * 200_000}
    store.put("run", ("r",), {**big, "n": 0})
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from mlcache.layout import CacheLayout
                from mlcache.metadata_store import MetadataStore
                store = MetadataStore(CacheLayout({str(tmp_path)!r}))
                for n in range(1, 301):
                    store.put("run", ("r",), {{"blob": "x" * 200_000, "n": n}})
                """
            ),
        ]
    )
    seen = set()
    try:
        while writer.poll() is None:
            record = store.get("run", ("r",))
            assert record is not None and record.data["blob"] == big["blob"]
            seen.add(record.data["n"])
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0
    assert store.get("run", ("r",)).data["n"] == 300
    assert len(seen) > 1
    assert list((tmp_path / "tmp").iterdir()) == []


def test_index_of_another_version_is_rebuilt_and_stale_index_is_refreshed(tmp_path: Path) -> None:
    import sqlite3

    from mlcache.query import compile_query

    store = MetadataStore(CacheLayout(tmp_path))
    store.put("run", ("a",), {"id": "a", "exp_id": "1", "params": {"lr": 1}})

    def found(query: dict) -> list:
        from mlcache.index_sql import sql_filter

        return [entry.key for entry in store.index.candidates("run", sql_filter(compile_query(query)._definition, {}))]

    assert found({"params.lr": 1}) == [("a",)]
    store.index.close()
    with sqlite3.connect(tmp_path / "metadata" / "index.sqlite") as conn:
        conn.execute("DELETE FROM leaves")
        conn.execute("PRAGMA user_version = 1")
    fresh = MetadataStore(CacheLayout(tmp_path))
    store = fresh
    assert found({"params.lr": 1}) == [("a",)]
    path = store.path("run", ("b",))
    path.write_text(
        '{"kind": "run", "key": ["b"], "cached_at": "2026-01-01T00:00:00+00:00", "data": '
        '{"id": "b", "exp_id": "1", "params": {"lr": 1}}}'
    )
    assert sorted(found({"params.lr": 1})) == [("a",), ("b",)]


def test_an_index_that_cannot_be_written_falls_back_to_memory(tmp_path: Path) -> None:
    from mlcache.index_sql import sql_filter
    from mlcache.query import compile_query

    store = MetadataStore(CacheLayout(tmp_path))
    store.put("run", ("a",), {"id": "a", "exp_id": "1", "params": {"lr": 1}})
    store.index.close()
    (tmp_path / "metadata" / "index.sqlite").unlink()
    (tmp_path / "metadata" / "index.sqlite").mkdir()
    reader = MetadataStore(CacheLayout(tmp_path))
    flt = sql_filter(compile_query({"params.lr": 1})._definition, {})
    assert [entry.key for entry in reader.index.candidates("run", flt)] == [("a",)]
    assert (tmp_path / "metadata" / "index.sqlite").is_dir()


def test_a_file_edited_in_place_behind_the_index_is_read_not_the_indexed_copy(tmp_path: Path) -> None:
    from mlcache.index_sql import sql_filter
    from mlcache.query import compile_query

    def candidates(query: dict) -> list:
        return list(store.index.candidates("run", sql_filter(compile_query(query)._definition, {})))

    store = MetadataStore(CacheLayout(tmp_path))
    store.put("run", ("a",), {"id": "a", "exp_id": "1", "params": {"lr": 1}})
    [entry] = candidates({"params.lr": 1})
    record = store.get("run", ("a",), entry)
    assert record is not None and record.data is entry.data and not record.stale
    path = store.path("run", ("a",))
    body = json.loads(path.read_text())
    body["data"]["params"]["lr"] = 2
    with path.open("r+b") as handle:  # same name, same folder: the folder's mtime does not change
        handle.truncate(0)
        handle.write(json.dumps(body).encode())
    record = store.get("run", ("a",), entry)
    assert record is not None and record.data["params"]["lr"] == 2
    assert candidates({"params.lr": 1}) == []
    assert [e.data["params"]["lr"] for e in candidates({"params.lr": 2})] == [2]
    path.write_text("not json")
    with pytest.raises(CorruptMetadata) as info:
        store.get("run", ("a",), entry)
    assert str(path) in str(info.value)


def test_conditions_are_probed_from_the_most_selective_one(tmp_path: Path) -> None:
    from mlcache.index_sql import _ordered, sql_filter
    from mlcache.query import compile_query

    store = MetadataStore(CacheLayout(tmp_path))
    for i in range(100):
        store.put("run", (f"r{i}",), {"id": f"r{i}", "tags": {"team": "a", "commit": f"c{i // 3}"}, "n": [i, i + 1]})
    query = {"tags.team": "a", "n": {"$gte": 10}, "tags.commit": "c7"}
    flt = sql_filter(compile_query(query)._definition, {})
    conn = store.index.ensure_fresh("run")
    assert _ordered(conn, "run", flt.conditions)[0].path == "tags.commit"
    assert sorted(entry.key for entry in store.index.candidates("run", flt)) == [("r21",), ("r22",), ("r23",)]
