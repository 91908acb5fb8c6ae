"""Ranges of big files through one rclone server per pull, on a unix socket of its own.

The server is `rclone rcd --rc-serve`: it answers `GET /[remote:]/path` with a `Range` header by
reading exactly that range from the store, one request to the store per range. (`rclone serve
http` reads through its VFS, which opens every file at offset 0 first and so fetches bytes nobody
asked for.) The pull's source is the root of an alias remote defined in the server's environment,
so no remote name or path is parsed out of a URL. Each stream is an HTTP range request on a
kept-alive connection: requests cost no process each, so they can go in file order (the hashes
follow the streams closely). Nothing from the server is taken on trust: a reply must be `206` with
exactly the asked range of a file of the listed size.

The socket lives in a private temporary folder, and the server asks for a password made for it
(passed in its environment, never on its command line). It runs under a watchdog shell whose
stdin is a pipe from this process: when the pipe ends, because the pull closed it or because this
process died however it died, the watchdog stops the server.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from typing import IO
from urllib.parse import quote

from .errors import TransferError
from .rclone_output import transfer_error
from .transfer import RemoteFile

_WATCHDOG = (
    'folder=$1; shift; exec 3<&0; "$@" </dev/null 3<&- & server=$!; '
    '{ read -r _ <&3; kill "$server" 2>/dev/null; } & reader=$!; exec 3<&-; '
    'wait "$server"; code=$?; kill "$reader" 2>/dev/null; '
    'rm -f "$folder/socket"; rmdir "$folder" 2>/dev/null; exit $code'
)
"""`sh -c` script: run the server (the arguments after the socket's folder), stop it once stdin
ends, then stop the stdin reader (if the server ended first), remove the socket's folder and exit
with the server's code. The arguments are passed as `"$@"`, never parsed by the shell."""

START_TIMEOUT = 30.0
READ_TIMEOUT = 120.0
"""Seconds without a byte before a range request fails (retryably: the next pull resumes)."""

_SERVE_FLAGS = ("--rc-serve", "--buffer-size", "0", "-q")
"""Objects served straight from the store to the socket, with no read-ahead buffer that a killed
pull would have been sent but never written."""
_ROOT = "mlcacheranges"
"""The alias remote whose root is the pull's source (defined by `RCLONE_CONFIG_*` variables)."""


class RangeServer:
    """`rclone rcd --rc-serve` for one pull; `open_range` streams ranges of the files under `root`
    (rclone's path of the listed folder, or of a single file's parent). Its own settings win over
    the user's: `RCLONE_RC_*` variables and `--rc*` flags are not passed on."""

    def __init__(self, binary: str, root: str, env: dict[str, str], extra_args: Sequence[str]) -> None:
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._lock = threading.Lock()
        self._interrupted = threading.Event()
        password = secrets.token_urlsafe(24)
        self.authorization = "Basic " + base64.b64encode(f"mlcache:{password}".encode()).decode()
        server_env = {name: value for name, value in env.items() if not name.startswith("RCLONE_RC_")}
        server_env.update(
            {
                f"RCLONE_CONFIG_{_ROOT.upper()}_TYPE": "alias",
                f"RCLONE_CONFIG_{_ROOT.upper()}_REMOTE": root,
                "RCLONE_RC_USER": "mlcache",
                "RCLONE_RC_PASS": password,
            }
        )
        flags = [arg for arg in extra_args if not arg.startswith("--rc")]
        try:
            self._folder = tempfile.mkdtemp(prefix="mlcache-ranges-")
            self.address = os.path.join(self._folder, "socket")
            """The server's unix socket, in a folder only this user may enter."""
            self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close)
            command = [binary, "rcd", *flags, *_SERVE_FLAGS, "--rc-addr", f"unix://{self.address}"]
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", _WATCHDOG, "mlcache-range-server", self._folder, *command],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
                env=server_env,
                start_new_session=True,  # a signal to the pull's process group leaves it to the watchdog
            )
        except OSError as exc:
            self._discard()
            raise TransferError(f"could not start the range server (rclone rcd): {exc}", retryable=True) from exc
        try:
            self._wait_until_listening()
        except BaseException:
            self.close()
            raise

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.address)
                return
            except OSError:
                self.check_alive()
                if time.monotonic() > deadline:
                    raise TransferError(
                        f"rclone rcd did not start listening within {START_TIMEOUT:.0f} s", retryable=True
                    ) from None
                time.sleep(0.005)
            finally:
                probe.close()

    def check_alive(self) -> None:
        """Raise the server's own error if it has ended; retryable if a signal ended it (the shell
        reports 128 + the signal), since a new pull starts a new server and resumes."""
        code = self._proc.poll()
        if code is not None:
            error = transfer_error("rcd", code, self._logged())
            error.retryable = error.retryable or code < 0 or code > 128
            raise error

    def _logged(self) -> str:
        return os.pread(self._stderr.fileno(), 1 << 20, 0).decode("utf-8", "replace")

    def open_range(self, item: RemoteFile, offset: int, count: int) -> ServedRange:
        """The bytes `[offset, offset + count)` of the listed file `item`."""
        return ServedRange(self, item, offset, count)

    def connection(self) -> tuple[_Connection, bool]:
        """A kept-alive connection if one is idle (True), else a new one (False)."""
        if self._interrupted.is_set():
            raise TransferError("the pull was stopped", retryable=False)
        with self._lock:
            reused = bool(self._idle)
            connection = self._idle.pop() if reused else _Connection(self.address, self._interrupted)
            self._busy.add(connection)
        return connection, reused

    def give_back(self, connection: _Connection) -> None:
        with self._lock:
            self._busy.discard(connection)
            self._idle.append(connection)

    def drop(self, connection: _Connection) -> None:
        """Close a connection that is not to be used again."""
        with self._lock:
            self._busy.discard(connection)
        connection.close()

    def interrupt(self) -> None:
        """Wake every request in progress, which a stalled store could hold for `READ_TIMEOUT`: their
        sockets are shut down, so each fails at once; later requests fail before they connect."""
        self._interrupted.set()
        with self._lock:
            busy = list(self._busy)
        for connection in busy:
            connection.shut()

    def close(self) -> None:
        """Stop the server (end its watchdog's stdin; its whole session if that does not do) and
        remove the socket's folder."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            # rclone lets its handlers finish before it exits; after an interrupt they wait on a
            # stalled store, so its session is killed sooner
            self._proc.wait(timeout=1 if self._interrupted.is_set() else 10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._discard()

    def _discard(self) -> None:
        if hasattr(self, "_stderr"):
            self._stderr.close()
        if hasattr(self, "_folder"):
            shutil.rmtree(self._folder, ignore_errors=True)


@contextlib.contextmanager
def serving(binary: str, root: str, env: dict[str, str], extra_args: Sequence[str]) -> Iterator[RangeServer]:
    """A `RangeServer` while the block runs."""
    server = RangeServer(binary, root, env, extra_args)
    try:
        yield server
    finally:
        server.close()


class _Connection(http.client.HTTPConnection):
    """HTTP over the server's unix socket; once `interrupted` is set it no longer connects, and
    `shut` wakes a request blocked on it."""

    def __init__(self, path: str, interrupted: threading.Event) -> None:
        super().__init__("localhost", timeout=READ_TIMEOUT)
        self._path = path
        self._interrupted = interrupted

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        self.sock = sock  # before connecting, so that `shut` can reach it from another thread
        try:
            sock.connect(self._path)
            if self._interrupted.is_set():
                raise ConnectionAbortedError("the pull was stopped")
        except OSError:
            self.sock = None
            sock.close()
            raise

    def shut(self) -> None:
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


_BROKEN = (OSError, http.client.HTTPException, UnicodeError)


class ServedRange:
    """One range request, checked before a byte is read: `206`, exactly the asked range, of a file
    whose size is the listed one. A kept-alive connection the server has meanwhile closed is
    replaced once."""

    def __init__(self, server: RangeServer, item: RemoteFile, offset: int, count: int) -> None:
        self._server = server
        self._name = item.path
        self._left = count
        last = offset + count - 1
        headers = {"Range": f"bytes={offset}-{last}", "Authorization": server.authorization}
        while True:
            connection, reused = server.connection()
            try:
                path = f"/[{_ROOT}:]/" + "/".join(quote(part, safe="") for part in item.path.split("/"))
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                break
            except _BROKEN as exc:
                server.drop(connection)
                if not reused:
                    server.check_alive()
                    raise TransferError(
                        f"{item.path}: the range server did not answer: {exc!r}", retryable=True
                    ) from exc
        self._connection = connection
        self._response = response
        wanted = f"bytes {offset}-{last}/{item.size}"
        if response.status == 206 and response.getheader("Content-Range") == wanted and response.length == count:
            return
        server.drop(connection)
        if response.status == 206:
            raise TransferError(
                f"{item.path}: the store sent {response.getheader('Content-Range')!r} for {wanted!r} "
                "(the file changed since it was listed?)",
                retryable=True,
            )
        answer = " ".join(response.read(200).decode("utf-8", "replace").split())
        raise TransferError(
            f"{item.path}: the range server answered HTTP {response.status} {response.reason} ({answer})",
            retryable=response.status not in (401, 403),
        )

    def readinto(self, buffer: memoryview) -> int:
        try:
            got = self._response.readinto(buffer) if self._left else 0
        except _BROKEN as exc:
            self._server.drop(self._connection)
            self._server.check_alive()
            raise TransferError(f"{self._name}: the range stream broke: {exc!r}", retryable=True) from exc
        if not got and self._left and len(buffer):
            self._server.drop(self._connection)
            self._server.check_alive()
            raise TransferError(f"{self._name}: the range stream ended {self._left} bytes early", retryable=True)
        self._left -= got
        return got

    def finish(self) -> None:
        """Read to its end: the connection is kept for the next request."""
        if self._left:
            self._server.drop(self._connection)
            raise TransferError(f"{self._name}: the range stream ended {self._left} bytes early", retryable=True)
        self._server.give_back(self._connection)

    def abort(self) -> None:
        self._server.drop(self._connection)
