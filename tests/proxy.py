"""A real HTTP reverse proxy process for tests: counts requests and can inject faults.

    python tests/proxy.py --port P --target http://127.0.0.1:T --stats FILE [--fail-rate 0.3 --fail-status 503]

Each request is forwarded to the target (method, path, headers, body) unless it is chosen to
fail; the running totals are written to the stats file as JSON after every request, before the
response is sent (so a client that got its answer finds it counted):
`requests`, `failed`, `by_method` (method -> count), `paths` (method -> request path with its
query -> count), `gets` (the same for GET alone), `bytes_out` (bytes of response bodies sent),
`bytes_by_method` (method -> those bytes) and `get_bytes` (GET path -> those bytes).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--require-token", default=None, help="answer 401 unless 'Authorization: Bearer <it>'")
    args = parser.parse_args()
    target = urlparse(args.target)
    stats: dict = {
        "requests": 0,
        "failed": 0,
        "by_method": {},
        "paths": {},
        "gets": {},
        "bytes_out": 0,
        "bytes_by_method": {},
        "get_bytes": {},
    }
    lock = threading.Lock()
    rng = random.Random(args.seed)
    stats_path = Path(args.stats)

    def record(method: str, failed: bool, path: str | None = None, sent: int = 0) -> None:
        with lock:
            stats["requests"] += 1
            stats["failed"] += int(failed)
            stats["by_method"][method] = stats["by_method"].get(method, 0) + 1
            if path is not None:
                by_path = stats["paths"].setdefault(method, {})
                by_path[path] = by_path.get(path, 0) + 1
                stats["bytes_out"] += sent
                stats["bytes_by_method"][method] = stats["bytes_by_method"].get(method, 0) + sent
                if method == "GET":
                    stats["gets"][path] = stats["gets"].get(path, 0) + 1
                    stats["get_bytes"][path] = stats["get_bytes"].get(path, 0) + sent
            tmp = stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stats))
            tmp.replace(stats_path)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            return

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            with lock:
                fail = rng.random() < args.fail_rate
            if args.require_token and self.headers.get("Authorization") != f"Bearer {args.require_token}":
                payload = json.dumps({"error_code": "UNAUTHENTICATED", "message": "token required"}).encode()
                record(self.command, True, self.path, len(payload))
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            if fail:
                code = "RESOURCE_DOES_NOT_EXIST" if args.fail_status == 404 else "TEMPORARILY_UNAVAILABLE"
                payload = json.dumps({"error_code": code, "message": "injected fault"}).encode()
                record(self.command, True, self.path, len(payload))
                self.send_response(args.fail_status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            record(self.command, False, self.path, 0 if self.command == "HEAD" else len(data))
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length if length is not None else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

    record("START", False)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
