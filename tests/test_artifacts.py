"""Run and model-version artifacts against a real MLflow server and a real S3 store."""

from __future__ import annotations

import json
import os
import stat
import sys
from datetime import timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

import mlcache
from mlcache import CacheMiss, EntityNotFound, MlcacheError, UnsafePath, UntrustedSource
from mlcache.errors import ArtifactUploadError
from mlcache.plugins.mlflow import MlflowApi
from mlcache.testing import InMemoryPlugin, MemoryBackend

from servers import MlflowServer, S3Server


def write_model(path: Path, weights: bytes = b"w" * 5000) -> None:
    path.mkdir()
    (path / "weights.bin").write_bytes(weights)
    (path / "conf").mkdir()
    (path / "conf" / "params.json").write_text('{"layers": 2}')


def files_of(root: Path) -> dict[str, bytes]:
    if root.is_file():
        return {root.name: root.read_bytes()}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def tree_modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")}


@pytest.fixture
def logged(s3_api: MlflowApi, unique: str) -> dict:
    """A run on the S3-backed server with a folder artifact `model` and a single file `notes.txt`."""
    run = s3_api.create_exp(f"art-{unique}").start_run("train")
    s3_api.log_run_artifact(run, write_model, "model")
    s3_api.log_run_artifact(run, lambda p: p.write_text("hello"), "notes.txt")
    mv = s3_api.register_model_version(f"model-{unique}", run, "model", aliases=["prod"])
    return {"run": run, "mv": mv, "name": f"model-{unique}"}


def test_log_then_pull_into_a_fresh_cache(s3_mlflow: MlflowServer, s3_env: dict, logged: dict, tmp_path: Path) -> None:
    run = logged["run"]
    assert run.repo.startswith("s3://bucket/mlartifacts/")
    fresh = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "fresh")
    listed = fresh.list_run_artifacts(run, "model")
    assert [(f.path, f.size) for f in listed] == [("conf/params.json", 13), ("weights.bin", 5000)]
    assert {f.path for f in fresh.list_run_artifacts(run)} == {
        "model/conf/params.json",
        "model/weights.bin",
        "notes.txt",
    }

    path = fresh.get_run_artifact(run, "model")
    assert path == tmp_path / "fresh" / "artifacts" / "runs" / run.id / "model"
    assert files_of(path) == {"conf/params.json": b'{"layers": 2}', "weights.bin": b"w" * 5000}
    assert fresh.get_run_artifact(f"runs:/{run.id}/notes.txt").read_text() == "hello"
    assert fresh.get_run_artifact(run.id, "model/conf/params.json") == path / "conf" / "params.json"
    assert fresh.load_run_artifact(run, "model", lambda p: (p / "weights.bin").stat().st_size) == 5000

    modes = tree_modes(path)
    assert all(not mode & 0o222 for rel, mode in modes.items() if (path / rel).is_file())
    assert all(mode & stat.S_IWUSR for rel, mode in modes.items() if (path / rel).is_dir())

    manifest = json.loads((tmp_path / "fresh" / "manifests" / "runs" / run.id / "model.json").read_text())
    assert manifest["source"] == f"{run.repo}/model" and manifest["size"] == 5013 and manifest["is_dir"]
    assert [f["path"] for f in manifest["files"]] == ["conf/params.json", "weights.bin"]
    import hashlib

    assert manifest["files"][1]["sha256"] == hashlib.sha256(b"w" * 5000).hexdigest()
    assert manifest["pulled_at"].endswith("Z") or manifest["pulled_at"].endswith("+00:00")
    assert len(manifest["source_version"]) == 64

    offline = fresh.in_offline_mode
    assert offline.get_run_artifact(run, "model") == path
    assert [f.path for f in offline.list_run_artifacts(run, "model")] == ["conf/params.json", "weights.bin"]
    with pytest.raises(CacheMiss, match=rf"artifact 'runs:/{run.id}/other' is not in the cache.*cache_run_artifact"):
        offline.get_run_artifact(run, "other")


def test_logging_fills_the_cache_without_a_download(s3_api: MlflowApi, logged: dict) -> None:
    run = logged["run"]
    cached = s3_api.in_offline_mode.get_run_artifact(run, "model")
    assert files_of(cached)["weights.bin"] == b"w" * 5000
    assert s3_api.in_offline_mode.get_model_artifact((logged["name"], "@prod")) == cached


def test_place_links_or_copies(s3_api: MlflowApi, logged: dict, tmp_path: Path) -> None:
    run = logged["run"]
    linked = s3_api.place_run_artifact(run, "model", tmp_path / "linked")
    assert (linked / "weights.bin").is_symlink() and (linked / "conf").is_dir() and not (linked / "conf").is_symlink()
    assert os.readlink(linked / "weights.bin") == str(s3_api.get_run_artifact(run, "model") / "weights.bin")
    copied = s3_api.place_run_artifact(run, "model", tmp_path / "copied", link=False)
    assert files_of(copied) == files_of(linked) and not (copied / "weights.bin").is_symlink()
    assert not stat.S_IMODE((copied / "weights.bin").stat().st_mode) & 0o222
    assert stat.S_IMODE((copied / "conf").stat().st_mode) & stat.S_IWUSR
    with pytest.raises(MlcacheError, match="already exists"):
        s3_api.place_run_artifact(run, "model", tmp_path / "copied")
    again = s3_api.place_run_artifact(run, "notes.txt", tmp_path / "copied", link=False, overwrite=True)
    assert again.read_text() == "hello"
    with pytest.raises(MlcacheError, match="inside the cache"):
        s3_api.place_run_artifact(run, "model", s3_api.cache_dir / "x")


def test_export_makes_a_valid_cache_dir_and_refuses_the_cache_itself(
    s3_api: MlflowApi, logged: dict, tmp_path: Path
) -> None:
    run, name = logged["run"], logged["name"]
    target = tmp_path / "bundle"
    s3_api.export_model_artifact((name, "@prod"), target)
    s3_api.export_run_artifact(run, "notes.txt", target)
    offline = mlcache.get_api("offline", cache_dir=target)
    assert files_of(offline.get_model_artifact(f"models:/{name}@prod"))["weights.bin"] == b"w" * 5000
    assert offline.get_run_artifact(run, "notes.txt").read_text() == "hello"
    exported = target / "artifacts" / "runs" / run.id / "model" / "weights.bin"
    cached = s3_api.get_run_artifact(run, "model") / "weights.bin"
    assert exported.stat().st_ino != cached.stat().st_ino and exported.stat().st_mode & 0o222 == 0
    exported.chmod(0o644)
    exported.write_bytes(b"edited in the bundle")
    assert cached.read_bytes() == b"w" * 5000 and cached.stat().st_mode & 0o222 == 0
    for bad in (s3_api.cache_dir, s3_api.cache_dir / "sub", s3_api.cache_dir.parent):
        with pytest.raises(MlcacheError, match="cannot export into"):
            s3_api.export_run_artifact(run, "model", bad)


def test_clean_cached_artifact(s3_api: MlflowApi, logged: dict) -> None:
    run = logged["run"]
    path = s3_api.get_run_artifact(run, "model")
    assert s3_api.clean_cached_run_artifact(run, "model") is True
    assert not path.exists()
    with pytest.raises(CacheMiss):
        s3_api.in_offline_mode.get_run_artifact(run, "model")
    assert s3_api.clean_cached_run_artifact(run, "model") is False
    assert files_of(s3_api.get_run_artifact(run, "model"))["weights.bin"] == b"w" * 5000
    assert s3_api.clean_cached_model_artifact((logged["name"], 1)) is True
    assert list((s3_api.cache_dir / "tmp").iterdir()) == []


def test_every_identifier_form_with_every_model_artifact_method(
    s3_mlflow: MlflowServer, s3_env: dict, logged: dict, tmp_path: Path
) -> None:
    name, mv = logged["name"], logged["mv"]
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c")
    model = api.get_model(name)
    forms = [
        mv,
        api.get_model_version((name, 1)),
        (name, 1),
        (name, "1"),
        (model, "1"),
        (name, "@prod"),
        f"models:/{name}/1",
        f"models:/{name}@prod",
    ]
    expected = {"conf/params.json": b'{"layers": 2}', "weights.bin": b"w" * 5000}
    for i, form in enumerate(forms):
        assert [f.path for f in api.list_model_artifacts(form)] == ["conf/params.json", "weights.bin"]
        assert files_of(api.cache_model_artifact(form)) == expected
        assert files_of(api.get_model_artifact(form)) == expected
        assert files_of(api.place_model_artifact(form, tmp_path / f"placed-{i}")) == expected
        assert api.load_model_artifact(form, files_of) == expected
        assert files_of(api.export_model_artifact(form, tmp_path / f"export-{i}")) == expected
        assert api.clean_cached_model_artifact(form) is True


def test_always_pull_resyncs_only_when_the_remote_changed(
    s3_mlflow: MlflowServer, s3_env: dict, logged: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = logged["run"]
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c", always_pull_artifacts=True)
    first = api.get_run_artifact(run, "model")
    manifest = tmp_path / "c" / "manifests" / "runs" / run.id / "model.json"
    pulled_at = json.loads(manifest.read_text())["pulled_at"]
    caplog.set_level("INFO", "mlcache.artifacts")
    caplog.clear()
    assert api.get_run_artifact(run, "model") == first
    assert json.loads(manifest.read_text())["pulled_at"] == pulled_at
    assert not [r for r in caplog.records if r.message.startswith("pulling")]

    writer = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "w")
    writer.log_run_artifact(run, lambda p: write_model(p, b"v2" * 100), "model")
    assert files_of(api.get_run_artifact(run, "model"))["weights.bin"] == b"v2" * 100
    assert [r.message for r in caplog.records if r.message.startswith("pulling")]


def test_pull_in_offline_mode_reads_the_store_but_not_the_server(
    s3_mlflow: MlflowServer, s3_env: dict, logged: dict, tmp_path: Path
) -> None:
    run = logged["run"]
    api = MlflowApi(
        tracking_uri="http://127.0.0.1:9",
        cache_dir=tmp_path / "c",
        offline_mode=True,
        pull_artifacts_in_offline_mode=True,
    )
    with pytest.raises(CacheMiss, match=f"run '{run.id}'"):
        api.get_run_artifact(run, "model")
    MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c").cache_run_meta(run)
    assert files_of(api.get_run_artifact(run, "model"))["weights.bin"] == b"w" * 5000


def test_cache_local_artifacts_off_uploads_only(
    s3_mlflow: MlflowServer, s3_env: dict, tmp_path: Path, unique: str
) -> None:
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c", cache_local_artifacts=False)
    run = api.create_exp(f"nolocal-{unique}").start_run("r")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"abc")
    source.chmod(0o644)
    assert api.log_run_artifact(run, source, "w/weights.bin") is None
    with pytest.raises(CacheMiss):
        api.in_offline_mode.get_run_artifact(run, "w/weights.bin")
    assert api.get_run_artifact(run, "w/weights.bin").read_bytes() == b"abc"
    assert stat.S_IMODE(source.stat().st_mode) == 0o644


def test_user_files_keep_their_mode_and_the_cache_is_removable(s3_api: MlflowApi, tmp_path: Path, unique: str) -> None:
    run = s3_api.create_exp(f"modes-{unique}").start_run("r")
    src = tmp_path / "src"
    write_model(src)
    before = tree_modes(src)
    s3_api.log_run_artifact(run, src, "model")
    assert tree_modes(src) == before
    s3_api.place_run_artifact(run, "model", tmp_path / "placed", link=False)
    assert tree_modes(src) == before
    for folder in [p for p in s3_api.cache_dir.rglob("*") if p.is_dir()]:
        assert stat.S_IMODE(folder.stat().st_mode) & stat.S_IWUSR, folder


def test_failures_leave_no_temporary_data(s3_api: MlflowApi, s3_server: S3Server, tmp_path: Path, unique: str) -> None:
    run = s3_api.create_exp(f"fail-{unique}").start_run("r")

    def broken(path: Path) -> None:
        path.mkdir()
        (path / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("dumper failed")

    with pytest.raises(RuntimeError, match="dumper failed"):
        s3_api.log_run_artifact(run, broken, "model")
    assert list((s3_api.cache_dir / "tmp").iterdir()) == []
    with pytest.raises(MlcacheError, match="the dumper wrote nothing"):
        s3_api.log_run_artifact(run, lambda p: None, "model")
    assert list((s3_api.cache_dir / "tmp").iterdir()) == []

    with pytest.raises(EntityNotFound, match="nothing at that location"):
        s3_api.get_run_artifact(run, "never-logged")
    assert list((s3_api.cache_dir / "tmp").iterdir()) == []
    assert not (s3_api.cache_dir / "manifests" / "runs" / run.id / "never-logged.json").exists()


def test_failed_upload_keeps_the_dumped_artifact(
    s3_mlflow: MlflowServer, s3_env: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unique: str
) -> None:
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c")
    run = api.create_exp(f"upfail-{unique}").start_run("r")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    with pytest.raises(ArtifactUploadError) as info:
        api.log_run_artifact(run, write_model, "model")
    kept = info.value.kept_path
    assert kept is not None and f"the artifact is kept at {kept}" in str(info.value)
    assert files_of(kept)["weights.bin"] == b"w" * 5000


def test_environment_is_never_modified(s3_mlflow: MlflowServer, s3_env: dict, tmp_path: Path, unique: str) -> None:
    before = dict(os.environ)
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c")
    run = api.create_exp(f"env-{unique}").start_run("r")
    api.log_run_artifact(run, write_model, "model")
    MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "d").get_run_artifact(run, "model")
    assert dict(os.environ) == before
    assert not any(k.startswith("RCLONE_CONFIG_") for k in os.environ)


def test_shell_metacharacters_are_passed_literally(
    s3_mlflow: MlflowServer, s3_env: dict, tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c")
    run = api.create_exp(f"shell-{unique}").start_run("r")
    marker = tmp_path / "marker"
    odd = f'we"ird `touch {marker}` $(touch {marker}) $HOME'
    api.log_run_artifact(run, lambda p: p.write_text("literal"), odd)
    fresh = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "fresh")
    assert fresh.get_run_artifact(run, odd).read_text() == "literal"
    assert not marker.exists()

    client = MlflowClient(s3_mlflow.url)
    name = f"evil-{unique}"
    client.create_registered_model(name)
    client.create_model_version(name, f"s3://bucket/x/$(touch {marker})", run_id=None)
    with pytest.raises(UntrustedSource, match="outside the artifact roots"):
        fresh.get_model_artifact((name, 1))
    allowed = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "fresh", allowed_sources=("s3://bucket/x",))
    with pytest.raises(EntityNotFound):
        allowed.get_model_artifact((name, 1))
    assert not marker.exists()
    with pytest.raises(UnsafePath):
        fresh.get_run_artifact(run, "a\\b")


def test_unsafe_paths_are_refused_even_under_python_O(tmp_path: Path) -> None:
    import subprocess

    code = (
        "import mlcache\n"
        f"api = mlcache.get_api('offline', cache_dir={str(tmp_path)!r})\n"
        "for bad in ['../x', '/etc/passwd', '', 'a/../../b']:\n"
        "    try:\n"
        "        api.get_run_artifact('abc', bad)\n"
        "    except mlcache.UnsafePath as exc:\n"
        "        print('refused', repr(bad))\n"
    )
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines() == [
        "refused '../x'",
        "refused '/etc/passwd'",
        "refused ''",
        "refused 'a/../../b'",
    ], result.stderr


def test_proxied_artifacts_go_through_the_mlflow_client(
    proxied_mlflow: MlflowServer, s3_env: dict, tmp_path: Path, unique: str
) -> None:
    api = MlflowApi(tracking_uri=proxied_mlflow.url, cache_dir=tmp_path / "c")
    run = api.create_exp(f"proxied-{unique}").start_run("r")
    assert run.repo.startswith("mlflow-artifacts:")
    api.log_run_artifact(run, write_model, "model")
    api.log_run_artifact(run, lambda p: p.write_text("hi"), "notes.txt")
    mv = api.register_model_version(f"proxied-{unique}", run, "model", aliases=["prod"])
    fresh = MlflowApi(tracking_uri=proxied_mlflow.url, cache_dir=tmp_path / "fresh")
    path = fresh.get_model_artifact((mv.model.name, "@prod"))
    assert files_of(path) == {"conf/params.json": b'{"layers": 2}', "weights.bin": b"w" * 5000}
    assert fresh.get_run_artifact(run, "notes.txt").read_text() == "hi"
    assert (tmp_path / "fresh" / "manifests" / "runs" / run.id / "model.json").exists()
    assert fresh.in_offline_mode.get_model_artifact(mv) == path


def test_manifest_times_are_utc(s3_api: MlflowApi, logged: dict) -> None:
    from mlcache.manifest import EntryKey

    manifest = s3_api._artifacts.read_manifest(EntryKey("runs", (logged["run"].id, "model")))
    assert manifest is not None and manifest.pulled_at.tzinfo is not None
    assert manifest.pulled_at.utcoffset() == timezone.utc.utcoffset(None)


def test_complete_entries_are_served_with_server_and_store_stopped(tmp_path: Path) -> None:
    import shutil
    import warnings

    backend = MemoryBackend(tmp_path / "store")
    api = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache")
    run = api.create_exp("stopped").start_run("r")
    mv = api.log_model_version("stopped-model", run, write_model, "model", aliases=["prod"])
    fresh = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "fresh")
    expected = files_of(fresh.get_model_artifact(mv))
    fresh.get_run_artifact(run, "model")
    backend.down = True
    shutil.rmtree(tmp_path / "store")
    calls = sum(backend.calls.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for form in [mv, ("stopped-model", 1), "models:/stopped-model/1"]:
            assert files_of(fresh.get_model_artifact(form)) == expected
        assert files_of(fresh.get_run_artifact(run.id, "model")) == expected
        assert files_of(fresh.in_offline_mode.get_model_artifact(("stopped-model", "@prod"))) == expected
    assert sum(backend.calls.values()) == calls
    with pytest.warns(mlcache.CacheFallbackWarning, match="in-memory server is down"):
        assert files_of(fresh.get_model_artifact(("stopped-model", "@prod"))) == expected


def test_progress_bar_option_pulls_the_same_files(
    s3_mlflow: MlflowServer, s3_env: dict, logged: dict, tmp_path: Path
) -> None:
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c", show_progress=True)
    assert files_of(api.get_run_artifact(logged["run"], "model"))["weights.bin"] == b"w" * 5000
