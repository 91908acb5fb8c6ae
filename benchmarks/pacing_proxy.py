#!/usr/bin/env python
"""A pacing HTTP reverse proxy: an emulated wide-area link in front of a local server.

    python benchmarks/pacing_proxy.py --port P --target http://127.0.0.1:T --delay-ms 20 --rate-mib 40 [--stats FILE]

Every request is forwarded to the target unchanged (method, path with its query, headers, body),
after `--delay-ms` of waiting; the answer comes back unchanged too (status, headers, body), with
each client connection's response bodies capped at `--rate-mib` MiB/s by a token bucket of its own.
What S3 clients need passes through untouched: the `Host` header as the client sent it (SigV4
signs it: a proxy that rewrote it to the target's address would break every signature), all
`x-amz-*`, `Authorization` and `Range` headers, `206 Partial Content` answers and their
`Content-Range`. Only hop-by-hop headers (`Connection`, `Keep-Alive`, `Transfer-Encoding`, ...)
and `Expect` are dropped on the way.

The cap is per connection and there is none on their sum: a client that opens N connections gets
N times the rate, as over a long link where each TCP flow is held back by its own window (which is
why parallel ranged downloads pay off there). The delay is paid once per request, before it is
forwarded, whatever the connection.

Bodies stream in chunks (never held whole: objects can be GiBs), both ways. Client connections are
kept alive (HTTP/1.1), one thread each, and each keeps its own connection to the target. Listens on
127.0.0.1 only and forwards only to a server on this machine. SIGTERM ends it cleanly (listening
socket closed, stats written). Standard library only.

With `--stats FILE` it keeps running totals in FILE as JSON, rewritten atomically after every
request and every 0.1 s while bytes flow (so a watcher sees a long download progress):
`requests`, `connections`, `by_method`, `statuses`, `range_requests`, `bytes_out` (response body
bytes sent to clients), `bytes_in` (request body bytes received), `errors`, `delay_ms`, `rate_mib`.

`start_pacing_proxy(target, ...)` starts one as a process and returns a `PacingProxy` (context
manager; `.url`, `.stats()`, `.stop()`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MiB = 1024 * 1024
CHUNK = 64 * 1024
MAX_CHUNKED_BODY = 256 * MiB  # a chunked request body is held whole: refused beyond this
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "expect"}
)
NO_BODY_STATUSES = frozenset({204, 304})


# ----------------------------------------------------------------------------- pacing
class TokenBucket:
    """At most `rate` bytes/s on average, with bursts of at most `burst` bytes (the bucket's size).

    `take(n)` blocks until `n` bytes may go. Kept as the time up to which the bytes sent so far
    are paid for: each send moves it on by n / rate, and it is never let fall more than `burst`
    bytes' worth behind the clock (an idle spell refills the bucket only up to `burst`)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst_seconds = burst / rate if rate > 0 else 0.0
        self.empty_at = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.empty_at = max(self.empty_at, now - self.burst_seconds) + n / self.rate
        wait = self.empty_at - now
        if wait > 0:
            time.sleep(wait)


class Stats:
    """Running totals, written to a JSON file atomically when changed (at most every 0.1 s while
    bytes stream, and after every request)."""

    def __init__(self, path: Path | None, delay_ms: float, rate_mib: float) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {
            "requests": 0,
            "connections": 0,
            "by_method": {},
            "statuses": {},
            "range_requests": 0,
            "bytes_out": 0,
            "bytes_in": 0,
            "errors": 0,
            "delay_ms": delay_ms,
            "rate_mib": rate_mib,
            "pid": os.getpid(),
        }
        self.dirty = True
        self.written = 0.0

    def add(self, key: str, n: int = 1, sub: str | None = None) -> None:
        with self.lock:
            if sub is None:
                self.data[key] += n
            else:
                table = self.data[key]
                table[sub] = table.get(sub, 0) + n
            self.dirty = True

    def flush(self, force: bool = False) -> None:
        if self.path is None:
            return
        with self.lock:
            now = time.monotonic()
            if not self.dirty or (not force and now - self.written < 0.1):
                return
            text = json.dumps(self.data)
            self.dirty = False
            self.written = now
            tmp = self.path.with_name(f".{self.path.name}.{threading.get_ident()}.tmp")
            tmp.write_text(text)
            tmp.replace(self.path)

    def flusher(self) -> None:
        while True:
            time.sleep(0.1)
            self.flush(force=True)


# ----------------------------------------------------------------------------- the proxy
def make_handler(target_host: str, target_port: int, delay: float, rate: float, stats: Stats) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "pacing-proxy"
        timeout = 300  # an idle client connection is closed after this many seconds

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.bucket = TokenBucket(rate, max(CHUNK, int(rate * 0.01)))
            self.upstream: http.client.HTTPConnection | None = None
            stats.add("connections")

        def finish(self) -> None:
            with contextlib.suppress(OSError):
                super().finish()
            self._drop_upstream()

        def log_message(self, *args: object) -> None:
            return

        def _drop_upstream(self) -> None:
            if self.upstream is not None:
                with contextlib.suppress(OSError):
                    self.upstream.close()
                self.upstream = None

        def _request_body(self) -> tuple[Any, int | None]:
            """The request body as an iterator of chunks (streamed, counted), and its length."""
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                data = _read_chunked(self.rfile)
                stats.add("bytes_in", len(data))
                return (data if data else None), len(data)
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(f"negative Content-Length {length}")
            if not length:
                return None, (0 if "Content-Length" in self.headers else None)

            def chunks() -> Any:
                left = length
                while left:
                    data = self.rfile.read(min(CHUNK, left))
                    if not data:
                        raise ConnectionError("client closed the connection inside a request body")
                    left -= len(data)
                    stats.add("bytes_in", len(data))
                    yield data

            return chunks(), length

        def _forward(self, body: Any, length: int | None) -> http.client.HTTPResponse:
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_HEADERS]
            if length is not None and not any(k.lower() == "content-length" for k, _ in headers):
                headers.append(("Content-Length", str(length)))
            if self.upstream is not None and _closed_by_peer(self.upstream):
                # The target closed this kept-alive connection while it was idle: a new one now,
                # before a streamed body is spent on a dead socket (it could not be sent again).
                self._drop_upstream()
            for attempt in (1, 2):
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(target_host, target_port, timeout=300)
                conn = self.upstream
                try:
                    # putrequest/putheader by hand: the client's own Host (and Accept-Encoding) go
                    # as they came, nothing is added beside them.
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for key, value in headers:
                        conn.putheader(key, value)
                    conn.endheaders()
                    if body is not None:
                        for chunk in body if not isinstance(body, bytes) else (body,):
                            conn.send(chunk)
                    return conn.getresponse()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    # A kept-alive connection the target had closed: once more on a new one, when
                    # no body was sent yet.
                    self._drop_upstream()
                    if attempt == 2 or (body is not None and not isinstance(body, bytes)):
                        raise
            raise AssertionError("unreachable")

        def _handle(self) -> None:
            stats.add("requests")
            stats.add("by_method", sub=self.command)
            if self.headers.get("Range"):
                stats.add("range_requests")
            if delay > 0:
                time.sleep(delay)
            try:
                body, length = self._request_body()
                response = self._forward(body, length)
            except ValueError as exc:  # a malformed Content-Length or chunk size
                stats.add("errors")
                self._drop_upstream()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.send_error(400, f"pacing proxy: bad request body: {exc}")
                stats.flush(force=True)
                return
            except (OSError, http.client.HTTPException) as exc:
                stats.add("errors")
                self._drop_upstream()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.send_error(502, f"pacing proxy: target failed: {exc}")
                stats.flush(force=True)
                return
            stats.add("statuses", sub=str(response.status))
            try:
                self._relay(response)
            finally:
                if response.will_close or not response.isclosed():
                    # The target closes, or the body was not read to its end (client gone): this
                    # upstream connection cannot carry another request.
                    self._drop_upstream()
                stats.flush(force=True)

        def _relay(self, response: http.client.HTTPResponse) -> None:
            self.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_HEADERS:
                    self.send_header(key, value)
            has_body = self.command != "HEAD" and response.status not in NO_BODY_STATUSES and response.status >= 200
            known = response.getheader("Content-Length") is not None
            chunked = has_body and not known
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if not has_body:
                response.read()
                return
            declared = int(response.getheader("Content-Length")) if known else None
            sent = 0
            buffer = bytearray(CHUNK)
            view = memoryview(buffer)
            try:
                while True:
                    n = response.readinto(buffer)
                    if not n:
                        if declared is not None and sent < declared:
                            # http.client ends a body cut short by the target with a read of 0
                            # bytes, not IncompleteRead: the client still waits for the rest.
                            raise http.client.IncompleteRead(b"", declared - sent)
                        break
                    self.bucket.take(n)
                    if chunked:
                        self.wfile.write(f"{n:x}\r\n".encode() + bytes(view[:n]) + b"\r\n")
                    else:
                        self.wfile.write(view[:n])
                    sent += n
                    stats.add("bytes_out", n)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except (OSError, http.client.HTTPException):
                # The client went away mid-body, or the target's body ended short (IncompleteRead):
                # the client got fewer bytes than announced, so its connection must end here.
                stats.add("errors")
                self.close_connection = True

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle

    return Handler


def _closed_by_peer(conn: http.client.HTTPConnection) -> bool:
    """Whether the target closed (or reset) this idle connection: an idle socket that is readable
    holds an EOF (or stray bytes), and either way cannot carry the next request."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _read_chunked(rfile: Any) -> bytes:
    """A `Transfer-Encoding: chunked` request body, decoded (rare for S3 clients; kept whole, so
    refused with ValueError beyond MAX_CHUNKED_BODY). Each pass reads one chunk, and the end of the
    stream reads as the last chunk: the loop ends with the body or the connection."""
    parts = []
    total = 0
    while True:
        size = int(rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
        total += size
        if size < 0 or total > MAX_CHUNKED_BODY:
            raise ValueError(f"chunked request body over {MAX_CHUNKED_BODY} bytes")
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        parts.append(rfile.read(size))
        rfile.readline()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="pacing HTTP reverse proxy (emulated wide-area link)")
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1 to listen on")
    parser.add_argument("--target", required=True, help="http://127.0.0.1:PORT of the server to forward to")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="wait before forwarding each request")
    parser.add_argument("--rate-mib", type=float, default=40.0, help="response body MiB/s per connection (0: no cap)")
    parser.add_argument("--stats", default=None, help="JSON file of running totals")
    args = parser.parse_args(argv)
    target = urlparse(args.target)
    if target.scheme != "http" or target.hostname not in LOOPBACK:
        parser.error(f"--target must be an http:// URL on this machine (127.0.0.1), got {args.target!r}")
    stats = Stats(Path(args.stats) if args.stats else None, args.delay_ms, args.rate_mib)
    handler = make_handler(target.hostname, target.port or 80, args.delay_ms / 1000, args.rate_mib * MiB, stats)
    server = Server(("127.0.0.1", args.port), handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stats.flush(force=True)
    threading.Thread(target=stats.flusher, daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        stats.flush(force=True)


# ----------------------------------------------------------------------------- for benchmarks
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PacingProxy:
    """A running pacing proxy process (its own process group); `stop()` ends it."""

    def __init__(self, url: str, port: int, stats_file: Path, proc: subprocess.Popen, workdir: Path | None) -> None:
        self.url = url
        self.port = port
        self.stats_file = stats_file
        self.proc = proc
        self._workdir = workdir

    def stats(self) -> dict[str, Any]:
        """The latest totals (at most ~0.1 s old while a body streams)."""
        for _ in range(50):  # bounded: the file is replaced atomically, so this only waits for it
            try:
                return json.loads(self.stats_file.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.02)
        raise RuntimeError(f"pacing proxy stats unreadable: {self.stats_file}")

    def bytes_out(self) -> int:
        return int(self.stats()["bytes_out"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self._workdir is not None:
            with contextlib.suppress(OSError):
                for path in self._workdir.iterdir():
                    path.unlink()
                self._workdir.rmdir()
            self._workdir = None

    def __enter__(self) -> PacingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_pacing_proxy(
    target: str,
    delay_ms: float = 20.0,
    rate_mib: float = 40.0,
    workdir: Path | None = None,
    timeout: float = 20.0,
) -> PacingProxy:
    """Start a pacing proxy process on a free 127.0.0.1 port in front of `target`, with its stats
    file (and log) in `workdir` (a temporary folder, removed at `stop()`, when not given)."""
    own = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="pacing-proxy-")) if own else Path(workdir)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    stats = folder / f"pacing-{port}.json"
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--port",
        str(port),
        "--target",
        target,
        "--delay-ms",
        str(delay_ms),
        "--rate-mib",
        str(rate_mib),
        "--stats",
        str(stats),
    ]
    with open(folder / f"pacing-{port}.log", "ab") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    proxy = PacingProxy(f"http://127.0.0.1:{port}", port, stats, proc, folder if own else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            proxy.stop()
            raise RuntimeError(f"pacing proxy exited with {proc.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if stats.exists() and sock.connect_ex(("127.0.0.1", port)) == 0:
                return proxy
        time.sleep(0.05)
    proxy.stop()
    raise TimeoutError(f"pacing proxy not listening after {timeout:g}s")


if __name__ == "__main__":
    main()
