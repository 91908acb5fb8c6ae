"""A cache that others share and disks that fail: readers never lose files, names never escape,
sources stay inside their roots, full and read-only disks give one clear error, settings are parsed
one way everywhere."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_trust_bundles import WEIGHTS, fill_cache

import mlcache
from mlcache.artifact_store import ArtifactStore
from mlcache.bundle import BundleError
from mlcache.layout import CacheLayout, IncompatibleCache
from mlcache.manifest import EntryKey
from mlcache.metadata_store import MetadataStore
from mlcache.names import LONG_NAME, UnsafePath
from mlcache.plugins.mlflow.repository import api_from_environment
from mlcache.staging import Stage

CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLCACHE_", "MLFLOW_"))}
    return {**env, **extra}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=clean_env(**env), timeout=300)


@pytest.fixture
def api(tmp_path: Path) -> mlcache.BaseMlflowApi:
    return fill_cache(tmp_path / "cache", tmp_path / "src")


def start(code: str, *args: str) -> subprocess.Popen[str]:
    """A real process running `code`, which prints a first line once it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, text=True, env=clean_env()
    )
    assert proc.stdout is not None
    return proc


def wait_ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"helper process died ({proc.poll()})"
    return line


# ----------------------------------------------------------------- readers keep their files
def test_clean_all_leaves_what_live_processes_hold(api: mlcache.BaseMlflowApi, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    reader = start(
        """
        import sys, time, mlcache
        from pathlib import Path
        api = mlcache.get_api("offline", cache_dir=sys.argv[1])
        def load(path):
            print("reading", flush=True)
            while not Path(sys.argv[2]).exists():
                time.sleep(0.01)
            return (path / "weights.bin").read_bytes()
        print(len(api.load_model_artifact(("m", "1"), load)), flush=True)
        """,
        str(api.cache_dir),
        str(gate),
    )
    stager = start(
        """
        import sys, time
        from mlcache.layout import CacheLayout
        from mlcache.staging import Stage
        with Stage(CacheLayout(sys.argv[1]), "pull") as stage:
            (stage / "half.bin").write_bytes(b"x" * 100)
            print(stage, flush=True)
            time.sleep(60)
        """,
        str(api.cache_dir),
    )
    try:
        assert wait_ready(reader) == "reading"
        staged = Path(wait_ready(stager))
        report = api.clean_all_cache()
        assert report.entries_busy == ["runs:/r1/model"] and report.entries_removed == 0
        assert report.metadata_removed == 5 and report.temp_busy == 1
        assert (staged / "half.bin").read_bytes() == b"x" * 100
        gate.touch()
        assert reader.stdout is not None and reader.stdout.readline().strip() == str(len(WEIGHTS))
        assert reader.wait(30) == 0
    finally:
        for proc in (reader, stager):
            proc.kill()
            proc.wait()
    report = api.clean_all_cache()
    assert report.entries_removed == 1 and report.temp_removed == 1 and not staged.exists()
    assert not (api.cache_dir / "artifacts" / "runs" / "r1" / "model").exists()


def test_an_entry_handed_out_by_mlcache_uri_survives_prune_while_its_process_reads(
    api: mlcache.BaseMlflowApi, tmp_path: Path
) -> None:
    reader = start(
        """
        import os, sys, time
        os.environ["MLCACHE_CACHE_DIR"] = sys.argv[1]
        os.environ["MLCACHE_OFFLINE"] = "1"
        from mlcache.plugins.mlflow.repository import MlcacheArtifactRepository
        path = MlcacheArtifactRepository("mlcache://models/m").download_artifacts("1")
        print(path, flush=True)
        reads = failures = 0
        end = time.monotonic() + 4
        while time.monotonic() < end:
            try:
                for name in ("weights.bin", "MLmodel"):
                    (open(os.path.join(path, name), "rb")).read()
                reads += 1
            except OSError:
                failures += 1
        print(reads, failures, flush=True)
        """,
        str(api.cache_dir),
    )
    try:
        path = Path(wait_ready(reader))
        assert path == api.cache_dir / "artifacts" / "runs" / "r1" / "model"
        prunes = 0
        while reader.poll() is None and prunes < 200:
            report = api.prune(0)
            assert report.removed == [] and [row.label for row in report.busy] == ["runs:/r1/model"]
            prunes += 1
        assert reader.stdout is not None
        reads, failures = (int(n) for n in reader.stdout.readline().split())
        assert reader.wait(30) == 0
    finally:
        reader.kill()
        reader.wait()
    assert failures == 0 and reads > 0 and prunes > 0
    assert [row.label for row in api.prune(0).removed] == ["runs:/r1/model"]


def test_prune_and_clean_say_what_they_kept(api: mlcache.BaseMlflowApi) -> None:
    holder = start(
        """
        import sys, time
        from mlcache.layout import CacheLayout
        from mlcache.locks import entry_lock
        with entry_lock(CacheLayout(sys.argv[1]), "artifacts", "runs", "r1", "model", timeout=5):
            print("locked", flush=True)
            time.sleep(60)
        """,
        str(api.cache_dir),
    )
    try:
        assert wait_ready(holder) == "locked"
        pruned = cli("prune", "--max-size", "0", MLCACHE_CACHE_DIR=str(api.cache_dir), MLCACHE_OFFLINE="1")
        assert pruned.returncode == 0 and "kept runs:/r1/model (4.0 KiB): another process is using it" in pruned.stderr
        cleaned = cli("clean", "--all", MLCACHE_CACHE_DIR=str(api.cache_dir), MLCACHE_OFFLINE="1")
        assert cleaned.returncode == 0 and "kept runs:/r1/model: another process is using it" in cleaned.stderr
        assert "removed 0 artifact entries" in cleaned.stdout
    finally:
        holder.kill()
        holder.wait()
    assert (api.cache_dir / "artifacts" / "runs" / "r1" / "model" / "weights.bin").read_bytes() == WEIGHTS


# ----------------------------------------------------------------- names and layout
def test_long_names_are_stored_under_digests(tmp_path: Path) -> None:
    store = MetadataStore(CacheLayout(tmp_path))
    name = "m" * 300
    store.put("model", (name,), {"name": name, "tags": {}, "aliases": {"a": "1"}})
    store.put("mv", (name, "1"), {"model_name": name, "version": "1", "source": "s3://b/x"})
    store.put("alias", (name, "a"), {"version": "1"})
    for path in (tmp_path / "metadata").rglob("*"):
        assert len(path.name.encode()) <= LONG_NAME + len(".json")
    for path in (tmp_path / "locks").rglob("*"):
        assert len(path.name.encode()) <= 255
    assert store.get("model", (name,)).data["name"] == name
    assert [r.key for r in store.scan("mv")] == [(name, "1")]
    offline = mlcache.get_api("offline", cache_dir=tmp_path)
    assert [m.name for m in offline.find_models({"name": name})] == [name]
    assert offline.get_model_version((name, "@a")).version == "1"


def test_a_long_artifact_path_works_and_an_unstorable_one_is_one_clear_error(tmp_path: Path) -> None:
    store = ArtifactStore(CacheLayout(tmp_path / "cache"))
    deep = "/".join(["d" * 60] * 5) + "/model"
    assert len(deep) > 255
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w")
    key = EntryKey("runs", ("r1", deep))
    path = store.adopt(key, src, "s3://b/x", "v", move=False)
    assert (path / "w.bin").read_bytes() == b"w" and store.read_manifest(key) is not None
    assert [k for k, _ in store.entries()] == [key]
    with pytest.raises(UnsafePath, match="longer than a file name can be"):
        EntryKey("runs", ("r1", "x" * 300))
    offline = mlcache.get_api("offline", cache_dir=tmp_path / "cache")
    with pytest.raises(UnsafePath, match="longer than a file name can be"):
        offline.get_run_artifact("r1", "x" * 300)


def test_a_cache_of_another_layout_version_is_refused_offline(api: mlcache.BaseMlflowApi) -> None:
    (api.cache_dir / "layout.json").write_text(json.dumps({"version": 99}))
    fresh = mlcache.get_api("offline", cache_dir=api.cache_dir)
    for read in (
        lambda: fresh.get_model_version(("m", "1")),
        lambda: fresh.get_model_artifact(("m", "1")),
        lambda: list(fresh.find_runs()),
        fresh.usage,
    ):
        with pytest.raises(IncompatibleCache, match="has layout version 99; this mlcache reads versions 1, 2:"):
            read()
    result = cli("--offline", "pull", "models:/m/1", MLCACHE_CACHE_DIR=str(api.cache_dir))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "layout version 99" in result.stderr


def test_a_garbage_manifest_is_reported_and_its_space_reclaimed(api: mlcache.BaseMlflowApi) -> None:
    manifest = api.cache_dir / "manifests" / "runs" / "r1" / "model.json"
    manifest.write_bytes(b"\x00garbage")
    rows = api.usage()
    assert [(r.label, r.size, r.damaged is not None) for r in rows] == [
        ("runs:/r1/model", len(WEIGHTS) + len("flavors: {}\n") + 8, True)
    ]
    assert "not a valid manifest" in (rows[0].damaged or "")
    report = api.prune(0)
    assert [r.label for r in report.removed] == ["runs:/r1/model"]
    assert not manifest.exists() and not (api.cache_dir / "artifacts" / "runs" / "r1" / "model").exists()


def test_exporting_metadata_into_the_cache_is_refused(api: mlcache.BaseMlflowApi) -> None:
    for inside in (api.cache_dir / "metadata", api.cache_dir, api.cache_dir.parent):
        with pytest.raises(mlcache.MlcacheError, match="cannot export into"):
            api.export_run_meta("r1", inside)
    for inside in (api.cache_dir / "b", api.cache_dir / "metadata" / "b.tar.gz"):
        with pytest.raises(mlcache.MlcacheError, match=f"cannot export into {inside}: it is the cache"):
            api.export_bundle(inside, model_versions=[("m", "1")])
    assert not list(api.cache_dir.rglob("*.partial"))


def test_links_planted_in_a_shared_cache_are_never_written_through(api: mlcache.BaseMlflowApi, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = api.cache_dir / "metadata" / "mv" / "victim"
    planted.symlink_to(outside)
    store = MetadataStore(CacheLayout(api.cache_dir))
    with pytest.raises(UnsafePath, match="is a link or a file where mlcache keeps its own folder"):
        store.put("mv", ("victim", "1"), {"model_name": "victim", "version": "1", "source": "s3://b/x"})
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------- sources
def test_a_source_outside_the_artifact_roots_is_refused_unless_allowed(
    api: mlcache.BaseMlflowApi, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret").write_text("root:x:0:0")
    store = MetadataStore(CacheLayout(api.cache_dir))
    store.put(
        "mv",
        ("m", "2"),
        {"model_name": "m", "version": "2", "run_id": "r1", "source": (host / "secret").as_uri(), "tags": {}},
    )
    store.put(
        "mv",
        ("m", "3"),
        {"model_name": "m", "version": "3", "run_id": "r1", "source": "s3://bucket/art/1/../../other/x", "tags": {}},
    )
    pulling = api.model_copy(update={"pull_artifacts_in_offline_mode": True})
    with pytest.raises(mlcache.UntrustedSource, match="outside the artifact roots the server uses for it"):
        pulling.get_model_artifact(("m", "2"))
    with pytest.raises(mlcache.UntrustedSource, match="climbs with"):
        pulling.get_model_artifact(("m", "3"))
    assert not list((api.cache_dir / "artifacts").glob("urls/*"))
    allowed = pulling.model_copy(update={"allowed_sources": (host.as_uri(),)})
    assert allowed.get_model_artifact(("m", "2")).read_text() == "root:x:0:0"


# ----------------------------------------------------------------- full and read-only disks
def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.decode().strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem of this test's own."""
    mount = tmp_path / "small"
    _mount_tmpfs(mount, "1m")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def read_only_cache(tmp_path: Path) -> Iterator[Path]:
    """A filled cache seen through a read-only bind mount."""
    filled = tmp_path / "filled"
    fill_cache(filled, tmp_path / "src")
    leftover = filled / "tmp" / "old-leftover"
    leftover.mkdir(parents=True, exist_ok=True)
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    mount = tmp_path / "ro"
    mount.mkdir()
    bound = subprocess.run(["mount", "--bind", str(filled), str(mount)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root): {bound.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True, capture_output=True)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_clear_error_and_is_not_retried(
    small_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    origin = tmp_path / "origin" / "art" / "1" / "r1" / "artifacts" / "model"
    origin.mkdir(parents=True)
    (origin / "weights.bin").write_bytes(os.urandom(3 << 20))
    cache = small_disk / "cache"
    store = MetadataStore(CacheLayout(cache))
    location = (tmp_path / "origin" / "art" / "1").as_uri()
    store.put("exp", ("1",), {"id": "1", "name": "e", "artifact_location": location})
    store.put("run", ("r1",), {"id": "r1", "exp_id": "1", "repo": f"{location}/r1/artifacts"})
    api = mlcache.get_api("offline", cache_dir=cache, pull_artifacts_in_offline_mode=True)
    with caplog.at_level(logging.WARNING, logger="mlcache.retry"), pytest.raises(mlcache.CacheNotWritable) as info:
        api.get_run_artifact("r1", "model")
    assert "no space left on the filesystem of" in str(info.value) and "mlcache prune" in str(info.value)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]
    assert list((cache / "tmp").iterdir()) == []
    assert not (cache / "artifacts" / "runs" / "r1" / "model").exists()
    result = cli("--offline", "pull", "runs:/r1/model", MLCACHE_CACHE_DIR=str(cache), MLCACHE_OFFLINE="1")
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_a_read_only_cache_reads_and_refuses_writes_clearly(read_only_cache: Path, tmp_path: Path) -> None:
    api = mlcache.get_api("offline", cache_dir=read_only_cache)
    assert (api.get_model_artifact(("m", "@prod")) / "weights.bin").read_bytes() == WEIGHTS
    assert [r.id for r in api.find_runs({"params.lr": 0.1})] == ["r1"]
    for write in (api.clean_all_cache, lambda: api.prune(0), api.clean_temp_artifacts):
        with pytest.raises(mlcache.CacheNotWritable, match="is not writable"):
            write()
    bundle = fill_cache(tmp_path / "other", tmp_path / "src2").export_bundle(
        tmp_path / "b", model_versions=[("m", "1")]
    )
    with pytest.raises(mlcache.CacheNotWritable, match="is not writable"):
        api.import_bundle(bundle)
    env = {"MLCACHE_CACHE_DIR": str(read_only_cache), "MLCACHE_OFFLINE": "1"}
    for args in (("clean", "--all"), ("clean",), ("prune", "--max-size", "0"), ("import", str(bundle))):
        result = cli(*args, **env)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stderr.count("\n") == 1 and "is not writable" in result.stderr, (args, result.stderr)
        assert "removed" not in result.stdout


# ----------------------------------------------------------------- settings
@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("MLCACHE_OFFLINE", "y", "use one of 1, true, yes, on or 0, false, no, off"),
        ("MLCACHE_OFFLINE", "maybe", "use one of 1, true, yes, on or 0, false, no, off"),
        ("MLCACHE_METADATA_MAX_AGE", "abc", "use a finite number >= 0"),
        ("MLCACHE_METADATA_MAX_AGE", "inf", "use a finite number >= 0"),
        ("MLCACHE_METADATA_MAX_AGE", "-5", "use a finite number >= 0"),
        ("MLCACHE_LOCK_MODE", "flock", "use one of os, soft"),
        ("MLCACHE_RETRY_ATTEMPTS", "0", "is not a whole number >= 1"),
        ("MLCACHE_RETRY_PULL_MAX_WAIT", "soon", "is not a number of seconds"),
    ],
)
def test_a_bad_setting_is_one_error_naming_it_in_library_cli_and_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, accepted: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(mlcache.InvalidSetting, match=f"{name}={value!r}") as info:
        mlcache.get_api(cache_dir=tmp_path)
    assert accepted in str(info.value)
    result = cli("du", MLCACHE_CACHE_DIR=str(tmp_path), **{name: value})
    assert result.returncode == 1 and result.stderr.strip() == f"error: {info.value}"
    monkeypatch.setenv("MLCACHE_CACHE_DIR", str(tmp_path))
    with pytest.raises(mlcache.InvalidSetting) as loaded:
        api_from_environment()
    assert str(loaded.value) == str(info.value)


def test_accepted_spellings_mean_the_same_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for word, expected in (("YES", True), ("on", True), ("1", True), ("Off", False), ("0", False), ("", False)):
        monkeypatch.setenv("MLCACHE_OFFLINE", word)
        assert mlcache.get_api(cache_dir=tmp_path).offline_mode is expected
    monkeypatch.setenv("MLCACHE_LOCK_MODE", "SOFT")
    assert mlcache.get_api(cache_dir=tmp_path).lock_mode == "soft"
    with pytest.raises(mlcache.InvalidSetting, match="lock_mode"):
        mlcache.get_api(cache_dir=tmp_path, lock_mode="hard")


def test_a_stage_is_held_by_its_process_only(tmp_path: Path) -> None:
    layout = CacheLayout(tmp_path)
    with Stage(layout, "pull") as stage:
        (stage / "x").write_bytes(b"x")
        assert mlcache.get_api("offline", cache_dir=tmp_path).clean_temp_artifacts() == 0
        assert stage.exists()
    assert not stage.exists() and list((tmp_path / "locks" / "tmp").iterdir()) == []


def test_importing_into_a_cache_needs_a_bundle(tmp_path: Path) -> None:
    api = mlcache.get_api("offline", cache_dir=tmp_path / "c")
    with pytest.raises(BundleError, match="no bundle at"):
        api.import_bundle(tmp_path / "nothing.tar.gz")
    assert list(ArtifactStore(CacheLayout(tmp_path / "c")).entries()) == []
