"""Bundles, cache management and the CLI, end to end through subprocesses and real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlcache.bundle import BundleError
from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer

CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]


def write_model(path: Path, weights: bytes = b"w" * 4096) -> None:
    path.mkdir()
    (path / "weights.bin").write_bytes(weights)
    (path / "MLmodel").write_text("flavors: {}\n")


def cli(*args: str, env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_"))}
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env={**clean, **env})
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def registered(s3_mlflow: MlflowServer, s3_env: dict, tmp_path: Path, unique: str) -> dict:
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "writer")
    exp = api.create_exp(f"cli-{unique}")
    run = exp.start_run("train", tags={"team": "a"})
    run.log_params({"lr": 0.1})
    name = f"cli-model-{unique}"
    api.log_model_version(name, run, write_model, "model", aliases=["prod"])
    api.log_model_version(name, run, lambda p: write_model(p, b"v" * 100), "model2")
    env = {**s3_env, "MLFLOW_TRACKING_URI": s3_mlflow.url, "MLCACHE_CACHE_DIR": str(tmp_path / "cache")}
    return {"api": api, "exp": exp, "run": run, "name": name, "env": env}


def test_pull_ls_find_and_errors(registered: dict, tmp_path: Path) -> None:
    env, name, run = registered["env"], registered["name"], registered["run"]
    pulled = cli("pull", f"models:/{name}@prod", env=env, check=True)
    path = Path(pulled.stdout.strip())
    assert path == tmp_path / "cache" / "artifacts" / "runs" / run.id / "model"
    assert (path / "weights.bin").read_bytes() == b"w" * 4096
    assert Path(cli("pull", f"runs:/{run.id}/model2", env=env, check=True).stdout.strip()).is_dir()

    listed = cli("ls", f"models:/{name}/1", env=env, check=True).stdout.split("\n")
    assert [line.split() for line in listed if line] == [
        ["size", "path"],
        ["12", "B", "MLmodel"],
        ["4.0", "KiB", "weights.bin"],
    ]

    query = {"exp.id": registered["exp"].id, "tags.team": "a", "params.lr": {"$gt": 0.01}}
    found = cli("find", "runs", json.dumps(query), "--json", env=env, check=True)
    docs = [json.loads(line) for line in found.stdout.splitlines()]
    assert [d["id"] for d in docs] == [run.id] and docs[0]["params"] == {"lr": 0.1}
    versions = cli(
        "find",
        "versions",
        json.dumps({"model.name": name}),
        "--sort",
        "version:-1",
        "--json",
        "--limit",
        "1",
        env=env,
        check=True,
    )
    assert [json.loads(line)["version"] for line in versions.stdout.splitlines()] == ["2"]
    table = cli("find", "models", json.dumps({"name": name}), env=env, check=True)
    assert name in table.stdout and "1 models" in table.stderr

    offline = cli("--offline", "find", "runs", json.dumps({"id": run.id}), "--json", env=env, check=True)
    assert json.loads(offline.stdout)["id"] == run.id

    bad = cli("find", "runs", '{"name": {"$like": "x"}}', env=env)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error: unknown operator '$like'")
    assert "Traceback" not in bad.stderr
    miss = cli("--offline", "pull", f"models:/{name}/3", env=env)
    assert miss.returncode == 1 and "is not in the cache" in miss.stderr and len(miss.stderr.strip().splitlines()) == 1
    usage = cli("find", "nothing", env=env)
    assert usage.returncode == 2


def test_bundle_round_trip_tamper_and_air_gapped_load(registered: dict, tmp_path: Path) -> None:
    env, name = registered["env"], registered["name"]
    folder = tmp_path / "release"
    exported = cli(
        "export",
        f"models:/{name}@prod",
        f"runs:/{registered['run'].id}/model2",
        "--to",
        str(folder),
        env=env,
        check=True,
    )
    assert Path(exported.stdout.strip()) == folder
    manifest = json.loads((folder / "bundle.json").read_text())
    assert manifest["format"] == "mlcache-bundle" and manifest["contents"]["model_versions"] == [f"models:/{name}/1"]
    assert {"creator", "created_at", "mlcache_version", "files"} <= set(manifest)
    assert cli("verify", str(folder), env=env, check=True).stdout.startswith("OK ")

    archive = tmp_path / "release.tar.gz"
    cli("export", f"{name}:@prod", "--to", str(archive), env=env, check=True)
    assert cli("verify", str(archive), env=env, check=True).stdout.startswith("OK ")

    weights = next(folder.rglob("weights.bin"))
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[100] ^= 1
    weights.write_bytes(bytes(data))
    bad = cli("verify", str(folder), env=env)
    rel = weights.relative_to(folder).as_posix()
    assert bad.returncode == 1 and bad.stdout.strip() == f"BAD {rel}: sha256 differs"
    refused = cli("--cache-dir", str(tmp_path / "gapped"), "import", str(folder), env=env)
    assert refused.returncode == 1 and "is damaged, nothing imported" in refused.stderr
    assert not [p for p in (tmp_path / "gapped").rglob("*") if p.is_file() and "artifacts" in p.parts]

    gapped = {"MLCACHE_CACHE_DIR": str(tmp_path / "gapped"), "MLCACHE_OFFLINE": "1"}
    imported = cli("import", str(archive), env=gapped, check=True)
    assert "imported 1 artifact entries (0 already present)" in imported.stdout
    again = cli("import", str(archive), env=gapped, check=True)
    assert "imported 0 artifact entries (1 already present)" in again.stdout

    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "mlflow":
                    raise ImportError("blocked")
        sys.meta_path.insert(0, Block())
        import mlcache
        api = mlcache.get_api()
        path = api.get_model_artifact("models:/{name}@prod")
        print((path / "weights.bin").stat().st_size, api.get_model_version(("{name}", "@prod")).run.params)
        """
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_"))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **gapped})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4096 {'lr': 0.1}"


def test_import_never_replaces_different_content(registered: dict, tmp_path: Path) -> None:
    api: MlflowApi = registered["api"]
    name = registered["name"]
    bundle = api.export_bundle(tmp_path / "b", model_versions=[(name, "@prod")])
    other = api.with_cache_dir(tmp_path / "other")
    other.get_model_artifact((name, 1))
    assert other.import_bundle(bundle).entries_present == [f"runs:/{registered['run'].id}/model"]
    entry = other.get_model_artifact((name, 1))
    manifest_path = next((tmp_path / "other" / "manifests").rglob("model.json"))
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="already holds different content"):
        other.import_bundle(bundle)
    assert entry.exists()
    with pytest.raises(BundleError, match="already exists"):
        api.export_bundle(bundle, model_versions=[(name, 1)])
    with pytest.raises(BundleError, match="nothing selected"):
        api.export_bundle(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_du_prune_lru_and_a_locked_entry_survives(registered: dict, tmp_path: Path) -> None:
    env, name, run = registered["env"], registered["name"], registered["run"]
    api = MlflowApi(tracking_uri=env["MLFLOW_TRACKING_URI"], cache_dir=tmp_path / "cache")
    old = api.get_run_artifact(run, "model")
    api.get_run_artifact(run, "model2")
    stamps = sorted((tmp_path / "cache" / "manifests").rglob("*.used"))
    now = time.time()
    for stamp in stamps:
        os.utime(stamp, (now - 3600, now - 3600) if stamp.name == "model.used" else (now, now))
    lines = [json.loads(line) for line in cli("du", "--json", env=env, check=True).stdout.splitlines()]
    usage, total = lines[:-1], lines[-1]["total"]
    assert total == {"on_disk": 4108 + 112 - 12, "loose_blobs": 0, "dedup": True}  # one MLmodel file both hold
    assert [(u["entry"], u["size"]) for u in usage] == [
        (f"runs:/{run.id}/model", 4108),
        (f"runs:/{run.id}/model2", 112),
    ]

    pruned = cli("prune", "--max-size", "200", env=env, check=True)
    assert pruned.stdout.strip() == f"removed runs:/{run.id}/model (4.0 KiB)"
    assert not old.exists() and api.in_offline_mode.get_run_artifact(run, "model2").exists()

    api.get_run_artifact(run, "model")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
            import sys, time
            from mlcache.layout import CacheLayout
            from mlcache.locks import entry_lock
            with entry_lock(CacheLayout({str(tmp_path / "cache")!r}), "artifacts", "runs", {run.id!r}, "model2",
                            timeout=10):
                print("locked", flush=True)
                time.sleep(60)
            """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        report = api.prune(0)
        assert [r.label for r in report.removed] == [f"runs:/{run.id}/model"]
        assert [r.label for r in report.busy] == [f"runs:/{run.id}/model2"]
        assert api.in_offline_mode.get_run_artifact(run, "model2").exists()
    finally:
        holder.kill()
        holder.wait()
    assert [r.label for r in api.prune("0").removed] == [f"runs:/{run.id}/model2"]

    old, young = tmp_path / "cache" / "tmp" / "leftover", tmp_path / "cache" / "tmp" / "being-written.tmp"
    old.mkdir(parents=True)
    young.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert "removed 1 temporary item(s)" in cli("clean", env=env, check=True).stdout
    assert not old.exists() and young.exists()
    api.get_model_artifact((name, 1))
    assert (
        cli("clean", "--entry", f"models:/{name}/1", env=env, check=True).stdout.strip() == f"removed models:/{name}/1"
    )
    cleaned = cli("clean", "--all", env=env, check=True)
    assert "removed 0 artifact entries, 5 metadata documents" in cleaned.stdout and cleaned.stderr == ""
    assert not list((tmp_path / "cache" / "metadata").rglob("*.json"))
    assert not [p for p in (tmp_path / "cache" / "artifacts").rglob("*") if p.is_file()]
    assert cli("verify", env=env, check=True).stdout.startswith("OK")
