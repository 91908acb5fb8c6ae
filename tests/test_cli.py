"""The `mlcache` command line, run as users run it: a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MLCACHE = [sys.executable, "-c", "from mlcache.cli import run; run()"]


def mlcache_cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_"))}
    clean.update({"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CACHE_HOME": str(home / "cache")})
    return subprocess.run([*MLCACHE, *args], capture_output=True, text=True, timeout=300, env={**clean, **(env or {})})


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    result = mlcache_cli("demo", home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "offline: models:/mlcache-demo-model@champion -> version 1" in result.stdout
    assert "predicts [2.5, 4.5, 6.5]" in result.stdout
    assert "pulled it into a fresh cache" in result.stdout
    assert "exported a bundle release.tar.gz" in result.stdout
    assert "air-gapped process (no mlflow, no network) loaded it from the bundle: predicts [2.5, 4.5, 6.5]" in (
        " ".join(result.stdout.split())
    )
    assert (tmp_path / "data" / "mlcache" / "mlflow.db").is_file()
    assert (tmp_path / "cache" / "mlcache" / "metadata" / "mv" / "mlcache-demo-model" / "1.json").is_file()
    again = mlcache_cli("demo", home=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "offline: models:/mlcache-demo-model@champion -> version 2" in again.stdout


def test_demo_with_unreachable_server_prints_one_line(tmp_path: Path) -> None:
    result = mlcache_cli("--tracking-uri", "http://127.0.0.1:9", "demo", home=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: MLflow server at http://127.0.0.1:9 refused the connection")
    assert all(line.startswith("retrying get experiment mlcache-demo") for line in lines[:-1]) and len(lines) == 4
    assert "Traceback" not in result.stderr


def test_version_and_help(tmp_path: Path) -> None:
    result = mlcache_cli("--version", home=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("mlcache ")
    usage = mlcache_cli("nonsense", home=tmp_path)
    assert usage.returncode == 2 and "No such command 'nonsense'" in usage.stderr
