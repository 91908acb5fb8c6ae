"""Hostile and damaged bundles: names that climb, links, unlisted or swapped content, archive bombs.

The caches here are filled without a server (documents and entries written through the stores), and
bundles are made by `export_bundle` of the offline plugin, then tampered with as an attacker would:
including rewriting `bundle.json` so that its list matches the tampered files.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest

import mlcache
from mlcache.artifact_store import ArtifactStore
from mlcache.bundle import BundleError, BundleLimits, verify
from mlcache.hashing import sha256_file
from mlcache.layout import CacheLayout
from mlcache.manifest import EntryKey
from mlcache.metadata_store import MetadataStore

WEIGHTS = b"w" * 4096
SOURCE = "s3://bucket/art/1/r1/artifacts/model"


def fill_cache(root: Path, scratch: Path, weights: bytes = WEIGHTS) -> mlcache.BaseMlflowApi:
    """A cache holding experiment 1, run r1, model m with version 1 (@prod) and its files."""
    meta = MetadataStore(CacheLayout(root))
    meta.put("exp", ("1",), {"id": "1", "name": "e", "tags": {}, "artifact_location": "s3://bucket/art/1"})
    meta.put(
        "run",
        ("r1",),
        {
            "id": "r1",
            "name": "train",
            "exp_id": "1",
            "status": "FINISHED",
            "tags": {},
            "params": {"lr": 0.1},
            "metrics": {},
            "repo": "s3://bucket/art/1/r1/artifacts",
        },
    )
    meta.put("model", ("m",), {"name": "m", "tags": {}, "aliases": {"prod": "1"}})
    meta.put("alias", ("m", "prod"), {"version": "1"})
    meta.put(
        "mv",
        ("m", "1"),
        {"model_name": "m", "version": "1", "run_id": "r1", "source": SOURCE, "tags": {}, "aliases": ["prod"]},
    )
    src = scratch / "model"
    src.mkdir(parents=True)
    (src / "weights.bin").write_bytes(weights)
    (src / "MLmodel").write_text("flavors: {}\n")
    ArtifactStore(CacheLayout(root)).adopt(EntryKey("runs", ("r1", "model")), src, SOURCE, "v1", move=False)
    return mlcache.get_api("offline", cache_dir=root)


@pytest.fixture
def api(tmp_path: Path) -> mlcache.BaseMlflowApi:
    return fill_cache(tmp_path / "cache", tmp_path / "src")


@pytest.fixture
def bundle(api: mlcache.BaseMlflowApi, tmp_path: Path) -> Path:
    return api.export_bundle(tmp_path / "bundle", model_versions=[("m", "1")])


def relist(folder: Path) -> None:
    """Rewrite `bundle.json` so that it lists exactly the files now in the folder (an attacker's move)."""
    document = json.loads((folder / "bundle.json").read_text())
    document["files"] = [
        {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and p.name != "bundle.json"
    ]
    (folder / "bundle.json").write_text(json.dumps(document))


def pack(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    return archive


def new_cache(tmp_path: Path, name: str = "target") -> mlcache.BaseMlflowApi:
    return mlcache.get_api("offline", cache_dir=tmp_path / name)


def nothing_installed(root: Path) -> bool:
    """No entry, manifest or document in the cache at `root` (its empty skeleton may exist)."""
    return not [p for top in ("artifacts", "manifests", "metadata") for p in (root / top).rglob("*") if p.is_file()]


def test_an_intact_bundle_verifies_and_imports_in_both_forms(bundle: Path, tmp_path: Path) -> None:
    archive = pack(bundle, tmp_path / "b.tar.gz")
    for source in (bundle, archive):
        assert verify(source) == []
        target = new_cache(tmp_path, f"target-{source.name}")
        report = target.import_bundle(source)
        assert report.entries_added == ["runs:/r1/model"]
        assert (target.get_model_artifact(("m", "@prod")) / "weights.bin").read_bytes() == WEIGHTS
        assert target.import_bundle(source).entries_present == ["runs:/r1/model"]
    with pytest.raises(BundleError, match="cannot import a bundle into itself"):
        mlcache.get_api("offline", cache_dir=bundle).import_bundle(bundle)


def _manifest(key: list[str], files: list[dict]) -> dict:
    now = "2026-01-01T00:00:00+00:00"
    size = sum(f["size"] for f in files)
    return {
        "version": 1,
        "kind": "runs",
        "key": key,
        "source": "s3://x",
        "is_dir": True,
        "files": files,
        "size": size,
        "source_version": "v",
        "pulled_at": now,
        "last_used": "2000-01-01T00:00:00+00:00",
    }


@pytest.mark.parametrize(
    ("file_name", "key"),
    [
        ("%2Ftmp%2Fvictim.json", ["r1", "/VICTIM"]),
        ("..%2F..%2F..%2Fvictim.json", ["r1", "../../../victim"]),
        ("model.json", ["r1", "../../../victim"]),
        ("evil.json", ["r1", "model"]),
    ],
)
def test_hostile_manifests_are_refused_by_verify_and_import(
    bundle: Path, tmp_path: Path, file_name: str, key: list[str]
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    key = [part.replace("VICTIM", str(victim).lstrip("/")) for part in key]
    folder = bundle / "manifests" / "runs" / "r1"
    (folder / file_name).write_text(json.dumps(_manifest(key, [{"path": "x", "size": 1, "sha256": "0" * 64}])))
    relist(bundle)
    problems = verify(bundle)
    assert any(p.startswith(f"manifests/runs/r1/{file_name}: ") for p in problems), problems
    target = new_cache(tmp_path)
    with pytest.raises(BundleError, match="is damaged, nothing imported"):
        target.import_bundle(bundle)
    assert (victim / "precious").read_text() == "keep me"
    assert nothing_installed(tmp_path / "target")


def test_hostile_manifests_planted_in_a_cache_never_make_prune_touch_outside(
    api: mlcache.BaseMlflowApi, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me")
    folder = api.cache_dir / "manifests" / "runs" / "r1"
    planted = {
        "%2F" + "%2F".join(victim.parts[1:]) + ".json": ["r1", str(victim)],
        "..%2F..%2F..%2Fvictim.json": ["r1", "../../../victim"],
    }
    for name, key in planted.items():
        huge = [{"path": "x", "size": 10**15, "sha256": "0" * 64}]
        (folder / name).write_text(json.dumps(_manifest(key, huge)))
    rows = api.usage()
    damaged = sorted(row.label for row in rows if row.damaged)
    assert damaged == sorted(f"manifests/runs/r1/{name}" for name in planted)
    assert all(row.size < 10**6 for row in rows)
    report = api.prune(0)
    assert sorted(row.label for row in report.removed) == sorted([*damaged, "runs:/r1/model"])
    assert (victim / "precious").read_text() == "keep me"
    assert not any(folder.glob("*victim*"))


def test_misplaced_and_foreign_documents_are_refused(bundle: Path, tmp_path: Path) -> None:
    run = json.loads((bundle / "metadata" / "run" / "r1.json").read_text())
    (bundle / "metadata" / "run" / "r2.json").write_text(json.dumps(run))
    (bundle / "metadata" / "evil").mkdir()
    (bundle / "metadata" / "evil" / "x.json").write_text("{}")
    (bundle / "notes.txt").write_text("hello")
    relist(bundle)
    problems = verify(bundle)
    assert "metadata/run/r2.json: holds run ['r1'], not a run document" not in problems
    assert any(p.startswith("metadata/run/r2.json: holds run ['r1'], whose file is") for p in problems), problems
    assert "metadata/evil/x.json: not a metadata document of this layout" in problems
    assert "notes.txt: not part of an mlcache bundle" in problems
    with pytest.raises(BundleError, match="nothing imported"):
        new_cache(tmp_path).import_bundle(bundle)


def test_links_are_refused_in_folder_bundles(bundle: Path, tmp_path: Path) -> None:
    host = tmp_path / "host-secret"
    host.write_text("secret")
    entry = bundle / "artifacts" / "runs" / "r1" / "model"
    (entry / "weights.bin").chmod(0o644)
    (entry / "weights.bin").unlink()
    (entry / "weights.bin").symlink_to(host)
    problems = verify(bundle)
    assert problems == [f"{bundle}: refused artifacts/runs/r1/model/weights.bin: a link; bundles hold only files"]
    target = new_cache(tmp_path)
    with pytest.raises(BundleError, match="a link; bundles hold only files"):
        target.import_bundle(bundle)
    assert nothing_installed(tmp_path / "target")


def _tar_with(archive: Path, bundle: Path, extra: tarfile.TarInfo, data: bytes | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=".")
        tar.addfile(extra, io.BytesIO(data) if data is not None else None)
    return archive


def _info(name: str, kind: bytes, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for field, value in fields.items():
        setattr(info, field, value)
    return info


@pytest.mark.parametrize(
    ("member", "data", "reason"),
    [
        (_info("./artifacts/runs/r1/model/link", tarfile.SYMTYPE, linkname="/etc/passwd"), None, "a link"),
        (_info("./artifacts/runs/r1/model/hard", tarfile.LNKTYPE, linkname="./bundle.json"), None, "a link"),
        (_info("./artifacts/runs/r1/model/pipe", tarfile.FIFOTYPE), None, "a special file"),
        (_info("/etc/evil", tarfile.REGTYPE, size=1), b"x", "must be relative"),
        (_info("./../../evil", tarfile.REGTYPE, size=1), b"x", "must not climb"),
        (_info("./bundle.json", tarfile.REGTYPE, size=2), b"{}", "appears twice"),
    ],
)
def test_hostile_archive_members_are_refused_with_one_line(
    bundle: Path, tmp_path: Path, member: tarfile.TarInfo, data: bytes | None, reason: str
) -> None:
    archive = _tar_with(tmp_path / "evil.tar.gz", bundle, member, data)
    problems = verify(archive)
    assert len(problems) == 1 and reason in problems[0] and "\n" not in problems[0], problems
    with pytest.raises(BundleError, match=reason) as info:
        new_cache(tmp_path).import_bundle(archive)
    assert "\n" not in str(info.value)
    assert nothing_installed(tmp_path / "target") and not (tmp_path / "evil").exists()
    assert list((tmp_path / "target" / "tmp").iterdir()) == []


def _drop_row(folder: Path, rel: str) -> None:
    document = json.loads((folder / "bundle.json").read_text())
    document["files"] = [row for row in document["files"] if row["path"] != rel]
    (folder / "bundle.json").write_text(json.dumps(document))


def test_unlisted_content_is_refused_and_named(api: mlcache.BaseMlflowApi, tmp_path: Path) -> None:
    def fresh(name: str) -> Path:
        return api.export_bundle(tmp_path / name, model_versions=[("m", "1")])

    cases: dict[str, tuple[Path, str]] = {}
    extra_entry = fresh("extra-entry")
    entry = extra_entry / "artifacts" / "runs" / "r1" / "other"
    entry.mkdir()
    (entry / "w").write_bytes(b"x")
    manifest = _manifest(["r1", "other"], [{"path": "w", "size": 1, "sha256": sha256_file(entry / "w")}])
    (extra_entry / "manifests" / "runs" / "r1" / "other.json").write_text(json.dumps(manifest))
    cases["an unlisted entry"] = (extra_entry, "artifacts/runs/r1/other/w: not listed in bundle.json")

    extra_file = fresh("extra-file")
    (extra_file / "artifacts" / "runs" / "r1" / "model" / "payload.py").write_text("import os")
    cases["an unlisted file in an entry"] = (extra_file, "artifacts/runs/r1/model/payload.py: not listed")

    extra_doc = fresh("extra-doc")
    alias = {"kind": "alias", "key": ["m", "champion"], "stale": False, "data": {"version": "1"}}
    (extra_doc / "metadata" / "alias" / "m" / "champion.json").write_text(json.dumps(alias))
    cases["an unlisted document"] = (extra_doc, "metadata/alias/m/champion.json: not listed")

    empty = fresh("empty-list")
    document = json.loads((empty / "bundle.json").read_text())
    document["files"] = []
    (empty / "bundle.json").write_text(json.dumps(document))
    cases["an empty list"] = (empty, "metadata/run/r1.json: not listed in bundle.json")

    tampered = fresh("tampered")
    weights = tampered / "artifacts" / "runs" / "r1" / "model" / "weights.bin"
    weights.chmod(0o644)
    weights.write_bytes(b"evil" * 1024)
    _drop_row(tampered, "artifacts/runs/r1/model/weights.bin")
    cases["a tampered file without its row"] = (tampered, "artifacts/runs/r1/model/weights.bin: not listed")

    relisted = fresh("relisted")
    (relisted / "artifacts" / "runs" / "r1" / "model" / "payload.py").write_text("import os")
    relist(relisted)
    cases["an extra file, relisted"] = (
        relisted,
        "artifacts/runs/r1/model/payload.py: not part of any entry (no manifest lists it)",
    )

    for what, (folder, expected) in cases.items():
        problems = verify(folder)
        assert any(p.startswith(expected) for p in problems), (what, problems)
        target = new_cache(tmp_path, f"target-{folder.name}")
        with pytest.raises(BundleError, match="nothing imported"):
            target.import_bundle(folder)
        assert nothing_installed(tmp_path / f"target-{folder.name}"), what


def test_an_archive_swapped_during_imports_never_installs_its_bytes(
    api: mlcache.BaseMlflowApi, bundle: Path, tmp_path: Path
) -> None:
    genuine = pack(bundle, tmp_path / "genuine.tar.gz")
    weights = bundle / "artifacts" / "runs" / "r1" / "model" / "weights.bin"
    weights.chmod(0o644)
    weights.write_bytes(b"evil" * 1024)
    tampered = pack(bundle, tmp_path / "tampered.tar.gz")
    live = tmp_path / "release.tar.gz"
    live.write_bytes(genuine.read_bytes())
    swapper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, shutil, time
                end = time.monotonic() + 20
                n = 0
                while time.monotonic() < end:
                    src = {str(tampered)!r} if n % 2 else {str(genuine)!r}
                    shutil.copyfile(src, {str(live)!r} + ".new")
                    os.replace({str(live)!r} + ".new", {str(live)!r})
                    n += 1
                """
            ),
        ]
    )
    outcomes = {"imported": 0, "refused": 0}
    try:
        deadline = time.monotonic() + 8
        i = 0
        while time.monotonic() < deadline and i < 60:
            target = new_cache(tmp_path, f"t{i}")
            try:
                target.import_bundle(live)
            except BundleError as exc:
                assert "is damaged, nothing imported" in str(exc)
                assert nothing_installed(tmp_path / f"t{i}")
                outcomes["refused"] += 1
            else:
                assert (target.get_model_artifact(("m", "1")) / "weights.bin").read_bytes() == WEIGHTS
                outcomes["imported"] += 1
            i += 1
    finally:
        swapper.kill()
        swapper.wait()
    assert outcomes["imported"] > 0 and outcomes["refused"] > 0, outcomes


def test_a_folder_bundle_shares_no_inode_with_the_cache(api: mlcache.BaseMlflowApi, bundle: Path) -> None:
    cached = api.get_model_artifact(("m", "1")) / "weights.bin"
    exported = bundle / "artifacts" / "runs" / "r1" / "model" / "weights.bin"
    assert exported.stat().st_ino != cached.stat().st_ino
    exported.chmod(0o644)
    exported.write_bytes(b"edited")
    assert cached.read_bytes() == WEIGHTS and cached.stat().st_mode & 0o222 == 0


def test_export_refuses_a_damaged_cache_entry(api: mlcache.BaseMlflowApi, tmp_path: Path) -> None:
    cached = api.get_model_artifact(("m", "1")) / "weights.bin"
    cached.chmod(0o644)
    cached.write_bytes(b"x" * len(WEIGHTS))
    with pytest.raises(mlcache.UnsafeArtifact, match="is damaged"):
        api.export_bundle(tmp_path / "out", model_versions=[("m", "1")])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_reimporting_the_genuine_bundle_undoes_a_planted_document(
    api: mlcache.BaseMlflowApi, bundle: Path, tmp_path: Path
) -> None:
    target = new_cache(tmp_path)
    target.import_bundle(bundle)
    planted = tmp_path / "target" / "metadata" / "alias" / "m" / "prod.json"
    doc = json.loads(planted.read_text())
    doc["data"]["version"], doc["cached_at"] = "9", "2099-01-01T00:00:00+00:00"
    planted.write_text(json.dumps(doc))
    future = time.time() + 3 * 365 * 86400
    os.utime(planted, (future, future))
    report = target.import_bundle(bundle)
    assert report.metadata_written == 1
    assert json.loads(planted.read_text())["data"]["version"] == "1"
    assert planted.stat().st_mtime <= time.time() + 1


def test_truncated_and_foreign_archives_are_one_line_errors(bundle: Path, tmp_path: Path) -> None:
    archive = pack(bundle, tmp_path / "b.tar.gz")
    truncated = tmp_path / "cut.tar.gz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(4096))
    for bad in (truncated, garbage):
        problems = verify(bad)
        assert len(problems) == 1 and "is truncated or not a readable .tar/.tar.gz archive" in problems[0]
        with pytest.raises(BundleError, match="truncated or not a readable"):
            new_cache(tmp_path, f"c-{bad.name}").import_bundle(bad)
    cli = [sys.executable, "-c", "from mlcache.cli import run; run()"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCACHE_", "MLFLOW_"))}
    env["MLCACHE_CACHE_DIR"] = str(tmp_path / "cli-cache")
    result = subprocess.run([*cli, "import", str(truncated)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "truncated or not a readable" in result.stderr
    assert "Aborted" not in result.stderr and "Traceback" not in result.stderr


def test_an_archive_bomb_is_bounded_and_verify_writes_nothing(bundle: Path, tmp_path: Path) -> None:
    member = _info("./artifacts/runs/r1/model/zeros.bin", tarfile.REGTYPE, size=64 << 20)
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname=".")
        tar.addfile(member, io.BytesIO(bytes(64 << 20)))
    assert archive.stat().st_size < 1 << 20
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    code = f"from mlcache.bundle import verify; print(verify({str(archive)!r})[0])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "TMPDIR": str(scratch)}
    )
    assert result.stdout.startswith("artifacts/runs/r1/model/zeros.bin: not listed"), result.stderr
    assert list(scratch.iterdir()) == []
    with pytest.raises(BundleError, match="holds more than 16777216 bytes"):
        new_cache(tmp_path).import_bundle(archive, BundleLimits(max_bytes=16 << 20))
    assert list((tmp_path / "target" / "tmp").iterdir()) == []
    with pytest.raises(BundleError, match="more than 3 files"):
        new_cache(tmp_path, "few").import_bundle(archive, BundleLimits(max_files=3))


def test_import_needs_no_tarfile_extraction_filter(bundle: Path, tmp_path: Path) -> None:
    archive = pack(bundle, tmp_path / "b.tar.gz")
    code = textwrap.dedent(
        f"""
        import tarfile
        del tarfile.data_filter
        def no_filters(self, *args, **kwargs):
            raise TypeError("extractall() got an unexpected keyword argument 'filter'")
        tarfile.TarFile.extractall = no_filters
        tarfile.TarFile.extract = no_filters
        import mlcache
        from mlcache.bundle import verify
        assert verify({str(archive)!r}) == []
        api = mlcache.get_api("offline", cache_dir={str(tmp_path / "old-python")!r})
        print(api.import_bundle({str(archive)!r}).entries_added)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['runs:/r1/model']"


def test_a_killed_export_leaves_nothing_the_next_one_keeps(api: mlcache.BaseMlflowApi, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    for name in ("a.bin", "b.bin"):
        (big / name).write_bytes(os.urandom(1 << 20))
    store = ArtifactStore(CacheLayout(api.cache_dir))
    source = "s3://bucket/art/1/r1/artifacts/big"
    store.adopt(EntryKey("runs", ("r1", "big")), big, source, "v1", move=False)
    out = tmp_path / "release"
    ready = tmp_path / "first-file-copied"
    # The exporter stops for good once its first file is in the bundle, so the kill lands mid-export
    # on any machine, however fast its disk.
    code = textwrap.dedent(
        f"""
        import pathlib, time
        import mlcache
        from mlcache import entry_io

        copy = entry_io.copy_hashed

        def copy_then_stop(src, dst):
            result = copy(src, dst)
            pathlib.Path({str(ready)!r}).touch()
            time.sleep(120)
            return result

        entry_io.copy_hashed = copy_then_stop
        api = mlcache.get_api("offline", cache_dir={str(api.cache_dir)!r})
        api.export_bundle({str(out)!r}, runs=["runs:/r1/big"])
        """
    )
    exporter = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ready.exists() and exporter.poll() is None:
            time.sleep(0.01)
        assert ready.exists(), f"the export never started: {exporter.poll()=}"
        assert list(tmp_path.glob(".release.*.partial"))
    finally:
        exporter.kill()
        _, errors = exporter.communicate()
    assert exporter.returncode == -signal.SIGKILL, errors
    assert not out.exists() and list(tmp_path.glob(".release.*.partial"))
    api.export_bundle(out, model_versions=[("m", "1")])
    assert verify(out) == []
    assert not list(tmp_path.glob(".release.*"))
