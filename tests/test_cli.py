"""The `mlcache` command line, run as users run it: a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

MLCACHE = [sys.executable, "-c", "from mlcache.cli import run; run()"]


def mlcache_cli(*args: str, home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_"))}
    clean.update({"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CACHE_HOME": str(home / "cache")})
    return subprocess.run([*MLCACHE, *args], capture_output=True, text=True, timeout=300, env={**clean, **(env or {})})


def _printed_paths(stdout: str) -> list[Path]:
    """The absolute paths a command printed, without the punctuation that follows them."""
    return [Path(found.rstrip(":,;.")) for found in re.findall(r"(?<!\S)(/\S+)", stdout)]


def _demo_workdir(stdout: str) -> Path:
    """The folder the demo says it kept, from its last line."""
    last = stdout.splitlines()[-1]
    found = re.fullmatch(r"✓ demo files kept in (/\S+) \(rm -rf it when done\)", last)
    assert found, last
    return Path(found[1])


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = mlcache_cli("demo", home=tmp_path, env={"TMPDIR": str(temp)})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.startswith("✓ ") for line in lines), result.stdout  # one line per step, never wrapped
    assert max(len(line) for line in lines) > 100
    assert "offline: models:/mlcache-demo-model@champion -> version 1" in result.stdout
    assert "predicts [2.5, 4.5, 6.5]" in result.stdout
    assert "pulled it into a fresh cache" in result.stdout
    assert "exported a bundle release.tar.gz" in result.stdout
    assert "✓ air-gapped process (no mlflow, no network) loaded it from the bundle: predicts [2.5, 4.5, 6.5]" in lines
    assert "warning" not in result.stderr.lower() and "mlflow" not in result.stderr.lower(), result.stderr

    workdir = _demo_workdir(result.stdout)
    assert workdir.parent == temp and workdir.name.startswith("mlcache-demo-")
    assert (workdir / "store" / "mlflow.db").is_file()
    assert any(p.is_file() for p in (workdir / "store" / "artifacts").rglob("*"))
    assert (workdir / "cache" / "metadata" / "mv" / "mlcache-demo-model" / "1.json").is_file()
    assert (workdir / "release.tar.gz").is_file()
    assert (workdir / "air-gapped-cache" / "metadata" / "mv" / "mlcache-demo-model" / "1.json").is_file()
    paths = _printed_paths(result.stdout)
    assert len(paths) == 3 and all(path.exists() and path.is_relative_to(workdir) for path in paths), paths
    for home_dir in (tmp_path / "data", tmp_path / "cache"):  # XDG_DATA_HOME, XDG_CACHE_HOME
        assert not home_dir.exists() or not any(home_dir.iterdir()), list(home_dir.rglob("*"))

    again = mlcache_cli("demo", home=tmp_path, env={"TMPDIR": str(temp)})
    assert again.returncode == 0, again.stderr
    assert "offline: models:/mlcache-demo-model@champion -> version 1" in again.stdout
    assert _demo_workdir(again.stdout) != workdir and workdir.is_dir()


def test_demo_with_unreachable_server_prints_one_line(tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = mlcache_cli("--tracking-uri", "http://127.0.0.1:9", "demo", home=tmp_path, env={"TMPDIR": str(temp)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: MLflow server at http://127.0.0.1:9 refused the connection")
    assert all(line.startswith("warning: retrying get experiment mlcache-demo") for line in lines[:-1])
    assert len(lines) == 4
    assert "Traceback" not in result.stderr
    assert not any(temp.iterdir())  # a failed demo leaves no folder of its own behind


def test_version_and_help(tmp_path: Path) -> None:
    result = mlcache_cli("--version", home=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("mlcache ")
    usage = mlcache_cli("nonsense", home=tmp_path)
    assert usage.returncode == 2 and "No such command 'nonsense'" in usage.stderr
