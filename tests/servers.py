"""Real server processes for the tests: started on free 127.0.0.1 ports, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll `check` (bounded) until it is true; fail with `what` and the log when it never is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not ready after {timeout:g}s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return response.status == 200


@dataclass
class ServerProcess:
    """One server process in its own process group, with its log file."""

    name: str
    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen(
                self.args,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


@dataclass
class MlflowServer:
    """A real `mlflow server` with a sqlite backend."""

    url: str
    port: int
    process: ServerProcess
    workdir: Path

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        """(Re)start on the same port and store."""
        self.process.start()
        try:
            wait_until(lambda: http_ok(f"{self.url}/health"), 90, "mlflow server", self.process.proc)
        except Exception as exc:
            self.process.stop()
            raise RuntimeError(f"{exc}\n{self.process.log_tail()}") from exc


def start_mlflow_server(
    workdir: Path,
    artifact_root: str | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> MlflowServer:
    """Start `mlflow server` on a free port over a sqlite store in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
        "--default-artifact-root",
        artifact_root or (workdir / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        *(extra_args or []),
    ]
    process = ServerProcess("mlflow", args, workdir / "mlflow-server.log", env or {})
    server = MlflowServer(f"http://127.0.0.1:{port}", port, process, workdir)
    server.start()
    return server
