"""Content-addressed blobs against real servers: a second model version that shares most of its
bytes with one already cached is pulled by downloading only what differs.

Everything is real: `rclone serve s3` as the store, a real `mlflow server` over it, rclone as the
transfer, and a counting reverse-proxy process (tests/proxy.py) between mlcache and the store, so
the requests and bytes the store served are measured on the wire.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from mlcache.blob_hints import Hints, parse_pack
from mlcache.plugins.mlflow import MlflowApi
from mlcache.progress import human_size

from servers import MlflowServer, Proxy, S3Server, start_proxy

BIG = 8 << 20
LISTING_OVERHEAD = 64 << 10
"""Bound on the GET bytes of a pull that are not file bytes: the XML of the store's listings."""


@pytest.fixture
def proxy(tmp_path: Path, s3_server: S3Server) -> Iterator[Proxy]:
    """A counting proxy process in front of the S3 fixture."""
    started = start_proxy(tmp_path / "proxy", s3_server.endpoint)
    yield started
    started.stop()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def disk_usage(cache_dir: Path) -> tuple[int, list[Hints]]:
    """(bytes of distinct file inodes under `artifacts/` and `blobs/sha256/`, the hints of each
    pack under `blobs/store/`): what the cache holds on disk, each inode once."""
    seen: set[tuple[int, int]] = set()
    data = 0
    for top in (cache_dir / "artifacts", cache_dir / "blobs" / "sha256"):
        for folder, _dirs, names in os.walk(top):
            for name in names:
                info = Path(folder, name).lstat()
                if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    data += info.st_size
    packs = sorted((cache_dir / "blobs" / "store").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return data, [parse_pack(pack.read_bytes()) for pack in packs]


def hints_of(files: dict[str, bytes]) -> Hints:
    """The hints a pull of `files` from an S3 store records: ETag MD5 and size -> sha256."""
    return {(f"md5:{hashlib.md5(d).hexdigest()}", len(d)): hashlib.sha256(d).hexdigest() for d in files.values()}


def object_gets(before: dict, after: dict) -> tuple[dict[str, int], dict[str, int], int]:
    """Between two proxy stats: GETs of object keys (path without query, unquoted) -> count and ->
    body bytes, and the GET bytes of everything else (bucket listings)."""
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    other = 0
    for raw, count in after["gets"].items():
        count -= before["gets"].get(raw, 0)
        sent = after["get_bytes"][raw] - before["get_bytes"].get(raw, 0)
        if count == 0:
            continue
        parsed = urlparse(raw)
        _bucket, _, inside = parsed.path.strip("/").partition("/")
        if not inside:  # a GET of the bucket itself: a listing
            other += sent
            continue
        key = unquote(parsed.path)
        counts[key] = counts.get(key, 0) + count
        sizes[key] = sizes.get(key, 0) + sent
    return counts, sizes, other


def object_key(repo: str, rel: str) -> str:
    """The request path of file `rel` of the `model` folder of a run whose artifact URI is `repo`."""
    parsed = urlparse(repo)
    assert parsed.scheme == "s3", repo
    return f"/{parsed.netloc}{parsed.path.rstrip('/')}/model/{rel}"


def pull_reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The pull reports (`<label>: [linked ... from the cache; ]downloaded ...`) logged so far."""
    return [r.getMessage() for r in caplog.records if r.name == "mlcache.pulls" and "downloaded" in r.getMessage()]


def test_second_version_downloads_only_the_files_the_cache_lacks(
    s3_mlflow: MlflowServer,
    s3_env: dict[str, str],
    proxy: Proxy,
    cache_dir: Path,
    tmp_path: Path,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Version 2 (another run) holds version 1's big file and most of its small files under other
    names, plus changed and new files. Pulling v1 then v2 into one cache: the store serves v2's
    differing files alone (one GET each, their bytes plus listing overhead), the cache grows by
    exactly their bytes (plus one store-hash hint each), equal files of both entries are one inode,
    the cache verifies clean, both versions load offline with the logged bytes, and the pull report
    says how many files were linked."""
    rng = random.Random(20260504)
    big = rng.randbytes(BIG)
    smalls = [rng.randbytes(rng.randrange(200, 20_000)) for _ in range(30)]
    v1 = {"weights/big.bin": big, **{f"small/s{i:02d}.txt": data for i, data in enumerate(smalls)}}
    same_path = {f"small/s{i:02d}.txt": smalls[i] for i in range(10)}
    moved = {f"moved/part-{i}.dat": smalls[i] for i in range(10, 26)}
    differing = {
        "small/s26.txt": rng.randbytes(len(smalls[26])),  # same path and size, other bytes
        "small/s27.txt": smalls[27] + b"changed",
        "extra/notes.txt": rng.randbytes(3_000),
        "extra/config.json": b'{"layers": [64, 32], "seed": 7}',
    }
    v2 = {"model.bin": big, **same_path, **moved, **differing}  # small/s28, s29 dropped
    shared = {rel: data for rel, data in v2.items() if rel not in differing}
    assert all(data in v1.values() for data in shared.values())
    assert not any(data in v1.values() for data in differing.values())
    diff_bytes = sum(len(d) for d in differing.values())
    shared_bytes = sum(len(d) for d in shared.values())
    assert shared_bytes / (shared_bytes + diff_bytes) > 0.9

    # Log both versions straight to the store, from a cache of their own.
    logger = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "logger", cache_local_artifacts=False)
    name = f"dedup-{unique}"
    exp = logger.get_or_create_exp(name)
    repos = {}
    for version, files in (("1", v1), ("2", v2)):
        with exp.start_run(f"v{version}") as run:
            pass
        mv = logger.log_model_version(name, run, lambda path, files=files: write_tree(path, files), "model")
        assert str(mv.version) == version
        repos[version] = logger.get_run(run.id).repo

    # From here on, mlcache's rclone reaches the store through the counting proxy only.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", proxy.url)
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=cache_dir)
    caplog.set_level(logging.DEBUG, logger="mlcache.pulls")

    start = proxy.stats()
    first = api.get_model_artifact((name, "1"))
    after_v1 = proxy.stats()
    assert read_tree(first) == v1
    counts, sizes, _ = object_gets(start, after_v1)
    assert counts == {object_key(repos["1"], rel): 1 for rel in v1}
    assert sizes == {object_key(repos["1"], rel): len(data) for rel, data in v1.items()}
    v1_bytes = sum(len(d) for d in v1.values())
    (report,) = pull_reports(caplog)
    assert report.startswith(f"runs:/{first.parent.name}/model: ")
    assert report.endswith(f"downloaded {len(v1)} files, {human_size(v1_bytes)}")
    assert not re.search(r"linked [1-9]", report)
    held_after_v1 = disk_usage(cache_dir)
    assert held_after_v1 == (v1_bytes, [hints_of(v1)])

    caplog.clear()
    second = api.get_model_artifact((name, "2"))
    after_v2 = proxy.stats()
    assert read_tree(second) == v2
    counts, sizes, listing_bytes = object_gets(after_v1, after_v2)
    print(
        f"v1 pull: {after_v1['requests'] - start['requests']} requests, "
        f"{after_v1['bytes_out'] - start['bytes_out']} bytes; "
        f"v2 pull: {after_v2['requests'] - after_v1['requests']} requests "
        f"{ {m: n - after_v1['by_method'].get(m, 0) for m, n in after_v2['by_method'].items()} }, "
        f"{after_v2['bytes_out'] - after_v1['bytes_out']} bytes ({listing_bytes} of listings); "
        f"differing files {len(differing)}, {diff_bytes} bytes"
    )
    assert counts == {object_key(repos["2"], rel): 1 for rel in differing}, "a GET fetched bytes the cache held"
    assert sizes == {object_key(repos["2"], rel): len(data) for rel, data in differing.items()}
    served = after_v2["bytes_out"] - after_v1["bytes_out"]
    assert diff_bytes <= served <= diff_bytes + LISTING_OVERHEAD
    assert served - diff_bytes == listing_bytes + sum(
        after_v2["bytes_by_method"].get(m, 0) - after_v1["bytes_by_method"].get(m, 0)
        for m in after_v2["bytes_by_method"]
        if m != "GET"
    )

    assert disk_usage(cache_dir) == (held_after_v1[0] + diff_bytes, [hints_of(v1), hints_of(differing)])

    by_content = {data: rel for rel, data in v1.items()}
    for rel, data in shared.items():
        ours, theirs = second.joinpath(*rel.split("/")), first.joinpath(*by_content[data].split("/"))
        assert os.stat(ours).st_ino == os.stat(theirs).st_ino, rel
        assert os.stat(ours).st_nlink == 3, rel  # v1's entry, v2's entry and the blob
    for rel in differing:
        assert os.stat(second.joinpath(*rel.split("/"))).st_nlink == 2, rel  # its entry and its blob

    (report,) = pull_reports(caplog)
    assert report == (
        f"runs:/{second.parent.name}/model: linked {len(shared)} files, {human_size(shared_bytes)}, from the cache; "
        f"downloaded {len(differing)} files, {human_size(diff_bytes)}"
    )

    assert api.verify_cache() == []
    offline = api.in_offline_mode
    assert read_tree(offline.get_model_artifact((name, "1"))) == v1
    assert read_tree(offline.get_model_artifact((name, "2"))) == v2
    assert proxy.stats()["requests"] == after_v2["requests"], "an offline read reached the store"
