"""Crash safety (a pulling process really SIGKILLed) and one transfer for many concurrent readers."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlcache import CacheMiss
from mlcache.entry_io import verify_entry
from mlcache.manifest import EntryKey
from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer

BIG = 48 * 1024 * 1024


def digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def big_artifact(s3_mlflow: MlflowServer, s3_server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run holding `data/`: one 48 MiB file and 40 files of 256 KiB, logged to the S3 fixture."""
    env = s3_server.env
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        src = tmp_path_factory.mktemp("big") / "data"
        src.mkdir()
        (src / "weights.bin").write_bytes(os.urandom(BIG))
        for i in range(40):
            (src / f"part-{i:02d}.bin").write_bytes(os.urandom(256 * 1024))
        api = MlflowApi(
            tracking_uri=s3_mlflow.url, cache_dir=tmp_path_factory.mktemp("writer"), cache_local_artifacts=False
        )
        run = api.create_exp("crash-safety").start_run("big")
        api.log_run_artifact(run, src, "data")
        return {"run_id": run.id, "digests": digest_tree(src)}
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def puller_code(url: str, cache_dir: Path, run_id: str, bwlimit: str | None, go_file: Path | None = None) -> str:
    extra = f'("--bwlimit", "{bwlimit}")' if bwlimit else "()"
    wait = (
        f"import os, pathlib\npathlib.Path({str(go_file)!r} + f'.ready-{{os.getpid()}}').touch()\n"
        f"while not pathlib.Path({str(go_file)!r}).exists():\n    time.sleep(0.005)\n"
        if go_file
        else ""
    )
    return (
        textwrap.dedent(
            f"""
        import hashlib, logging, sys, time
        from mlcache.plugins.mlflow import MlflowApi
        from mlcache.rclone import RcloneTransfer
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(name)s %(message)s")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        api = MlflowApi(tracking_uri={url!r}, cache_dir={str(cache_dir)!r},
                        transfer=RcloneTransfer(extra_args={extra}), pull_lock_timeout=300)
        api.cache_run_meta({run_id!r})
        """
        )
        + wait
        + textwrap.dedent(
            f"""
        path = api.get_run_artifact({run_id!r}, "data")
        files = sorted(p for p in path.rglob("*") if p.is_file())
        print("DIGEST", hashlib.sha256(b"".join(hashlib.sha256(p.read_bytes()).digest() for p in files)).hexdigest())
        """
        )
    )


def combined(digests: dict[str, str]) -> str:
    return hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in sorted(digests.items()))).hexdigest()


@pytest.mark.parametrize("kill_after", [0.3, 1.5, 3.0, "staged"])
def test_a_pull_killed_at_any_point_is_never_served_and_is_redone(
    s3_mlflow: MlflowServer, s3_env: dict, big_artifact: dict, tmp_path: Path, kill_after: float | str
) -> None:
    cache = tmp_path / "cache"
    run_id = big_artifact["run_id"]
    proc = subprocess.Popen(
        [sys.executable, "-c", puller_code(s3_mlflow.url, cache, run_id, "12M")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest = cache / "manifests" / "runs" / run_id / "data.json"
    deadline = time.monotonic() + 60
    started = None
    while time.monotonic() < deadline and proc.poll() is None:
        stages = list((cache / "tmp").glob("pull-*")) if (cache / "tmp").exists() else []
        if stages and started is None:
            started = time.monotonic()
        if started is not None:
            if kill_after == "staged":
                staged = sum(p.stat().st_size for p in stages[0].rglob("*") if p.is_file()) if stages else 0
                if staged >= BIG + 40 * 256 * 1024:
                    break
            elif time.monotonic() - started >= kill_after:
                break
        time.sleep(0.01)
    assert proc.poll() is None, f"the pull ended before the kill point: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    if kill_after != "staged":
        assert not manifest.exists(), "a pull killed mid-transfer left a manifest behind"
    if not manifest.exists():
        with pytest.raises(CacheMiss):
            MlflowApi(cache_dir=cache, offline_mode=True).get_run_artifact(run_id, "data")

    reader = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=cache, pull_lock_timeout=30)
    path = reader.get_run_artifact(run_id, "data")
    assert digest_tree(path) == big_artifact["digests"]
    key = EntryKey("runs", (run_id, "data"))
    assert verify_entry(reader._artifacts, key, reader._artifacts.read_manifest(key)) == []


def test_a_leftover_entry_without_manifest_is_replaced(
    s3_mlflow: MlflowServer, s3_env: dict, big_artifact: dict, tmp_path: Path
) -> None:
    run_id = big_artifact["run_id"]
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "cache")
    partial = tmp_path / "cache" / "artifacts" / "runs" / run_id / "data"
    partial.mkdir(parents=True)
    (partial / "weights.bin").write_bytes(b"truncated")
    with pytest.raises(Exception, match="not in the cache"):
        api.in_offline_mode.get_run_artifact(run_id, "data")
    path = api.get_run_artifact(run_id, "data")
    assert digest_tree(path) == big_artifact["digests"]


def test_eight_processes_one_transfer(
    s3_mlflow: MlflowServer, s3_env: dict, big_artifact: dict, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    go = tmp_path / "go"
    code = puller_code(s3_mlflow.url, cache, big_artifact["run_id"], None, go)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready-*"))) < len(procs) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.02)
    assert len(list(tmp_path.glob("go.ready-*"))) == len(procs), "not every puller got ready within 120 s"
    go.touch()
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-2000:] for _, err in outputs]
    stdout = "".join(out for out, _ in outputs)
    assert stdout.count("LOG mlcache.artifacts pulling ") == 1
    # a waiter that comes between the holder's lock and its owner note is told "another process"
    waiting = re.findall(
        r"LOG mlcache.artifacts waiting for another process(?: \(pid (\d+) on [^)]+\))? to finish pulling", stdout
    )
    assert waiting and {pid for pid in waiting if pid} <= {str(p.pid) for p in procs}, stdout
    digests = {line.split()[1] for line in stdout.splitlines() if line.startswith("DIGEST")}
    assert digests == {combined(big_artifact["digests"])}
    assert list((cache / "tmp").iterdir()) == []
