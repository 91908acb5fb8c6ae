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
        except BaseException as exc:
            self.process.stop()  # also when interrupted (Ctrl-C, SIGTERM) while it comes up
            if not isinstance(exc, Exception):
                raise
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
    # MLflow's job runner (huey consumers for GenAI jobs) is not used here; off, the server starts
    # sooner and does not poll 2 cores in the background during tests and benchmarks.
    server_env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    process = ServerProcess("mlflow", args, workdir / "mlflow-server.log", server_env)
    server = MlflowServer(f"http://127.0.0.1:{port}", port, process, workdir)
    server.start()
    return server


@dataclass
class S3Server:
    """A real S3-compatible store: `rclone serve s3` over a local folder (buckets are subfolders)."""

    endpoint: str
    port: int
    data_dir: Path
    key_id: str
    secret: str
    process: ServerProcess

    @property
    def env(self) -> dict[str, str]:
        """What MLflow users set to reach it (read by MLflow clients and by mlcache)."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def rclone_env(self, remote: str = "S3") -> dict[str, str]:
        prefix = f"RCLONE_CONFIG_{remote}_"
        return {
            f"{prefix}TYPE": "s3",
            f"{prefix}PROVIDER": "Rclone",
            f"{prefix}REGION": "us-east-1",
            f"{prefix}ENDPOINT": self.endpoint,
            f"{prefix}ACCESS_KEY_ID": self.key_id,
            f"{prefix}SECRET_ACCESS_KEY": self.secret,
        }

    def bucket(self, name: str) -> Path:
        path = self.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        self.process.start()
        try:
            wait_until(lambda: _port_open(self.port), 30, "rclone serve s3", self.process.proc)
        except BaseException:
            self.process.stop()
            raise


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def rclone_binary() -> str:
    from mlcache.rclone import find_rclone

    return find_rclone()


def start_s3_server(workdir: Path, key_id: str = "mlcache-test", secret: str = "mlcache-secret") -> S3Server:
    """Start `rclone serve s3` on a free port over `workdir/data`."""
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        rclone_binary(),
        "serve",
        "s3",
        "--addr",
        f"127.0.0.1:{port}",
        "--auth-key",
        f"{key_id},{secret}",
        "--config",
        "/dev/null",
        str(data),
    ]
    server = S3Server(
        f"http://127.0.0.1:{port}", port, data, key_id, secret, ServerProcess("s3", args, workdir / "s3-server.log")
    )
    server.start()
    return server


@dataclass
class Proxy:
    """A counting (and optionally fault-injecting) HTTP proxy process in front of `target`."""

    url: str
    stats_file: Path
    process: ServerProcess

    def stats(self) -> dict:
        import json

        return json.loads(self.stats_file.read_text())

    @property
    def requests(self) -> int:
        return int(self.stats()["requests"]) - 1

    def stop(self) -> None:
        self.process.stop()


def start_proxy(
    workdir: Path, target: str, fail_rate: float = 0.0, fail_status: int = 503, require_token: str | None = None
) -> Proxy:
    """Start tests/proxy.py on a free port in front of `target`."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    stats = workdir / f"proxy-{port}.json"
    args = [
        sys.executable,
        str(Path(__file__).with_name("proxy.py")),
        "--port",
        str(port),
        "--target",
        target,
        "--stats",
        str(stats),
        "--fail-rate",
        str(fail_rate),
        "--fail-status",
        str(fail_status),
        *(["--require-token", require_token] if require_token else []),
    ]
    proxy = Proxy(f"http://127.0.0.1:{port}", stats, ServerProcess("proxy", args, workdir / f"proxy-{port}.log"))
    proxy.process.start()
    wait_until(lambda: _port_open(port) and stats.exists(), 20, "proxy", proxy.process.proc)
    return proxy


SILENT_SERVER = """
import selectors, socket, sys, time

port, lifetime = int(sys.argv[1]), float(sys.argv[2])
listener = socket.create_server(("127.0.0.1", port), backlog=64)
selector = selectors.DefaultSelector()
selector.register(listener, selectors.EVENT_READ)
print("listening", flush=True)
end = time.monotonic() + lifetime
while (left := end - time.monotonic()) > 0:
    for key, _ in selector.select(timeout=min(left, 1.0)):
        if key.fileobj is listener:
            conn, _ = listener.accept()
            selector.register(conn, selectors.EVENT_READ)
            print("accepted", flush=True)
            continue
        try:
            data = key.fileobj.recv(65536)
        except OSError:
            data = b""
        if data:
            print("read", len(data), flush=True)
        else:
            selector.unregister(key.fileobj)
            key.fileobj.close()
"""


@dataclass
class SilentServer:
    """A real process on 127.0.0.1 that accepts connections and reads requests but never answers."""

    url: str
    port: int
    process: ServerProcess

    def accepted(self) -> int:
        """Connections accepted so far."""
        return self.process.log.read_text().splitlines().count("accepted")

    def stop(self) -> None:
        self.process.stop()


def start_silent_server(workdir: Path, lifetime: float = 600.0) -> SilentServer:
    """Start a silent server on a free port; it exits by itself after `lifetime` seconds."""
    port = free_port()
    args = [sys.executable, "-c", SILENT_SERVER, str(port), str(lifetime)]
    process = ServerProcess("silent", args, workdir / f"silent-{port}.log").start()
    server = SilentServer(f"http://127.0.0.1:{port}", port, process)
    try:
        wait_until(lambda: "listening" in process.log.read_text(), 20, "silent server", process.proc)
    except Exception:
        server.stop()
        raise
    return server
