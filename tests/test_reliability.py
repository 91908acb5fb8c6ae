"""Reliability with real processes: injected faults, artifact lifecycle on S3 and Azure (Azurite),
soft locks, and a bounded stress run of many processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcache import CacheMiss, EntityNotFound, LockTimeout, RetryPolicy
from mlcache.layout import CacheLayout
from mlcache.locks import entry_lock, lock_path
from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer, S3Server, ServerProcess, free_port, start_proxy, wait_until

FAST_RETRY = RetryPolicy(attempts=12, initial_wait=0.05, max_wait=0.5)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_DIR = Path(__file__).resolve().parent.parent / ".ci" / "azurite"


def write_model(path: Path, weights: bytes = b"w" * 3000) -> None:
    path.mkdir()
    (path / "weights.bin").write_bytes(weights)
    (path / "conf.json").write_text("{}")


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_whole_workflow_survives_30_percent_of_503s(
    s3_mlflow: MlflowServer, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ml_proxy = start_proxy(tmp_path / "ml-proxy", s3_mlflow.url, fail_rate=0.3)
    s3_proxy = start_proxy(tmp_path / "s3-proxy", s3_server.endpoint, fail_rate=0.3)
    try:
        for name, value in {**s3_server.env, "MLFLOW_S3_ENDPOINT_URL": s3_proxy.url}.items():
            monkeypatch.setenv(name, value)
        api = MlflowApi(tracking_uri=ml_proxy.url, cache_dir=tmp_path / "c", retry=FAST_RETRY)
        exp = api.get_or_create_exp("faulty")
        with exp.start_run("r", tags={"team": "a"}) as run:
            run.log_params({"lr": 0.1})
            run.log_metrics({"acc": 0.9}, step=1)
        mv = api.log_model_version("faulty-model", run, write_model, "model", aliases=["prod"])
        found = list(api.find_runs({"tags.team": "a", "params.lr": 0.1}, exp=exp))
        assert [r.id for r in found] == [run.id] and found[0].metrics == {"acc": 0.9}
        fresh = MlflowApi(tracking_uri=ml_proxy.url, cache_dir=tmp_path / "fresh", retry=FAST_RETRY)
        assert files_of(fresh.get_model_artifact(("faulty-model", "@prod"))) == files_of(api.get_model_artifact(mv))
        assert fresh.get_model_version(("faulty-model", "@prod")).run.params == {"lr": 0.1}
        assert ml_proxy.stats()["failed"] > 0 and s3_proxy.stats()["failed"] > 0
    finally:
        ml_proxy.stop()
        s3_proxy.stop()


def test_client_errors_fail_fast(s3_mlflow: MlflowServer, tmp_path: Path) -> None:
    proxy = start_proxy(tmp_path / "proxy", s3_mlflow.url, fail_rate=1.0, fail_status=404)
    try:
        api = MlflowApi(tracking_uri=proxy.url, cache_dir=tmp_path / "c", retry=RetryPolicy(attempts=5))
        started = time.monotonic()
        with pytest.raises(EntityNotFound, match="run 'abc' does not exist"):
            api.get_run("abc")
        assert time.monotonic() - started < 3
        assert proxy.requests == 1
    finally:
        proxy.stop()


def test_delete_artifacts_from_s3_and_the_cache(s3_api: MlflowApi, s3_server: S3Server, unique: str) -> None:
    exp = s3_api.create_exp(f"lifecycle-{unique}")
    run = exp.start_run("r")
    s3_api.log_run_artifact(run, write_model, "scratch")
    mv = s3_api.log_model_version(f"life-{unique}", run, write_model, "model")
    stored = s3_server.data_dir / run.repo.removeprefix("s3://")
    assert (stored / "scratch" / "weights.bin").exists() and (stored / "model" / "weights.bin").exists()

    s3_api.delete_run_artifact(run, "scratch")
    assert not (stored / "scratch").exists()
    with pytest.raises(CacheMiss):
        s3_api.in_offline_mode.get_run_artifact(run, "scratch")
    with pytest.raises(EntityNotFound):
        s3_api.get_run_artifact(run, "scratch")

    s3_api.delete_model_version_artifact(mv)
    assert not (stored / "model").exists()
    assert "deleted" in s3_api.get_model_version(mv).tags["mlcache"]
    assert list(s3_api.find_model_versions({"model.name": f"life-{unique}"})) == []
    assert [v.version for v in s3_api.find_model_versions({"model.name": f"life-{unique}"}, include_deleted=True)] == [
        "1"
    ]

    archived = s3_api.archive_exp(exp, "-old")
    assert archived.name == f"lifecycle-{unique}-old"
    assert s3_api.delete_exp(archived).lifecycle_stage == "deleted"
    assert s3_api.restore_exp(archived.id).lifecycle_stage == "active"
    assert s3_api.in_offline_mode.get_exp(exp.id).name == f"lifecycle-{unique}-old"


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Azurite (Azure Blob emulator from npm) on a free 127.0.0.1 port, telemetry off."""
    binary = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(f"needs npm (not on PATH) to install the Azurite emulator into {AZURITE_DIR}")
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(AZURITE_DIR), "azurite@3"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if installed.returncode != 0:
            raise RuntimeError(f"npm could not install Azurite into {AZURITE_DIR}: {installed.stderr.strip()[-2000:]}")
    workdir = tmp_path_factory.mktemp("azurite")
    port = free_port()
    process = ServerProcess(
        "azurite",
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--location",
            str(workdir),
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ],
        workdir / "azurite.log",
    )
    process.start()
    try:
        wait_until(
            lambda: "successfully listens" in process.log.read_text(errors="replace"), 60, "azurite", process.proc
        )
        endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint};"
        )
        from mlcache.rclone import RcloneTransfer
        from mlcache.remotes import to_rclone

        target = to_rclone("az://models/x", env={"AZURE_STORAGE_CONNECTION_STRING": conn})
        RcloneTransfer()._run(["mkdir", "MLCACHE_AZ:models"], target.env)
        yield {"AZURE_STORAGE_CONNECTION_STRING": conn, "endpoint": endpoint}
    finally:
        process.stop()


def test_azure_blob_upload_pull_and_delete(
    s3_mlflow: MlflowServer, azurite: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, unique: str
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite["AZURE_STORAGE_CONNECTION_STRING"])
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "c")
    exp = api.create_exp(
        f"azure-{unique}", artifact_location="wasbs://models@devstoreaccount1.blob.core.windows.net/mlartifacts"
    )
    run = exp.start_run("r")
    assert run.repo.startswith("wasbs://models@devstoreaccount1.blob.core.windows.net/mlartifacts/")
    mv = api.log_model_version(f"azure-model-{unique}", run, write_model, "model", aliases=["prod"])
    fresh = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "fresh")
    assert files_of(fresh.get_model_artifact(("azure-model-" + unique, "@prod"))) == {
        "conf.json": b"{}",
        "weights.bin": b"w" * 3000,
    }
    assert [f.path for f in fresh.list_model_artifacts(mv)] == ["conf.json", "weights.bin"]
    api.delete_model_version_artifact(mv)
    with pytest.raises(EntityNotFound):
        fresh.with_cache_dir(tmp_path / "third").get_model_artifact(mv)
    assert fresh.in_offline_mode.get_model_artifact(mv).exists()


def test_soft_locks_exclude_and_a_stale_one_is_broken(tmp_path: Path) -> None:
    layout = CacheLayout(tmp_path, soft_locks=True, stale_lock_age=2)
    with entry_lock(layout, "artifacts", "runs", "r", "model", timeout=1):
        assert lock_path(layout, "artifacts", "runs", "r", "model").exists()
        with (
            pytest.raises(LockTimeout, match="still held by another process"),
            entry_lock(layout, "artifacts", "runs", "r", "model", timeout=0.2),
        ):
            pass
    left = lock_path(layout, "artifacts", "runs", "r", "model")
    left.write_text("crashed holder")
    old = time.time() - 10
    os.utime(left, (old, old))
    started = time.monotonic()
    with entry_lock(layout, "artifacts", "runs", "r", "model", timeout=0.5):
        pass
    assert time.monotonic() - started < 3
    api = MlflowApi(cache_dir=tmp_path / "c", lock_mode="soft", offline_mode=True)
    assert api.layout.soft_locks


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mlcache.layout import CacheLayout
    from mlcache.locks import entry_lock
    with entry_lock(CacheLayout(sys.argv[1]), "artifacts", "runs", "r", "model", timeout=5, on_wait=print):
        Path(sys.argv[2]).touch()
        time.sleep(60)
    """
)


def test_a_waiter_is_told_which_process_holds_the_lock(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "cache"), str(ready)])
    try:
        wait_until(ready.exists, 60, "the holder taking the lock", holder)
        told: list[str | None] = []
        with (
            pytest.raises(LockTimeout, match=r"still held by another process after 0\.2s"),
            entry_lock(
                CacheLayout(tmp_path / "cache"), "artifacts", "runs", "r", "model", timeout=0.2, on_wait=told.append
            ),
        ):
            pass
        assert told == [f"pid {holder.pid} on {socket.gethostname()}"]
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with entry_lock(CacheLayout(tmp_path / "cache"), "artifacts", "runs", "r", "model", timeout=5, on_wait=told.append):
        pass
    assert len(told) == 1, "a lock its killed holder left is free at once"


STRESS_WORKER = textwrap.dedent(
    """
    import random, sys, time
    from mlcache.plugins.mlflow import MlflowApi
    from mlcache import RetryPolicy
    url, cache, seed, run_ids = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
    rng = random.Random(seed)
    api = MlflowApi(tracking_uri=url, cache_dir=cache, retry=RetryPolicy(attempts=6, initial_wait=0.05),
                    lock_timeout=120)
    offline = api.in_offline_mode
    deadline = time.monotonic() + float(sys.argv[5])
    done = 0
    while time.monotonic() < deadline and done < 400:
        choice = rng.random()
        run_id = run_ids[0] if rng.random() < 0.5 else rng.choice(run_ids)
        if choice < 0.45:
            size = api.load_run_artifact(
                run_id, "model", lambda p: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            )
            assert size == 3002, size
        elif choice < 0.65:
            api.cache_run_meta(run_id)
        elif choice < 0.85:
            list(offline.find_runs({"tags.worker": {"$exists": True}}))
        elif choice < 0.95:
            api.prune(3002 * 2)
        else:
            api.clean_cached_run_artifact(run_id, "model")
        done += 1
    print("DONE", done)
    """
)


def test_stress_many_processes(
    s3_mlflow: MlflowServer, s3_server: S3Server, s3_env: dict, tmp_path: Path, unique: str
) -> None:
    writer = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "writer", cache_local_artifacts=False)
    exp = writer.create_exp(f"stress-{unique}")
    run_ids = []
    for i in range(4):
        run = exp.start_run(f"r{i}", tags={"worker": i})
        writer.log_run_artifact(
            run, lambda p: (p.mkdir(), (p / "w.bin").write_bytes(b"x" * 3000), (p / "c.json").write_text("{}")), "model"
        )
        run_ids.append(run.id)
    cache = tmp_path / "shared-cache"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STRESS_WORKER, s3_mlflow.url, str(cache), str(seed), ",".join(run_ids), "15"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **s3_server.env},
        )
        for seed in range(8)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-1500:] for _, err in outputs]
    assert all(out.startswith("DONE") for out, _ in outputs)
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=cache)
    assert api.verify_cache() == []
    assert sum(u.size for u in api.usage()) <= 3002 * 4
