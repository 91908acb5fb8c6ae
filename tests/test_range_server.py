"""The range server of a pull (`rclone rcd --rc-serve` on a private socket), against a real
`rclone serve s3` behind a real pacing proxy: exact ranges, one store request each, answers checked,
a password of its own, and a server that ends with its pull, even when the pull is killed."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from mlcache.errors import TransferError
from mlcache.range_server import RangeServer, ServedRange, serving
from mlcache.transfer import RemoteFile

from servers import rclone_binary

REPO = Path(__file__).resolve().parent.parent
NAME = "we ird%#?é.bin"
SIZE = 3 << 20


@pytest.fixture(scope="module")
def stored(s3_server, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    """A bucket of its own with `model/<NAME>` (SIZE random bytes): rclone's root, the bytes."""
    bucket = f"served-{uuid.uuid4().hex[:12]}"
    source = tmp_path_factory.mktemp("served")
    blob = os.urandom(SIZE)
    (source / NAME).write_bytes(blob)
    upload = [rclone_binary(), "copy", "--config", "/dev/null", str(source), f"S3:{bucket}/model"]
    subprocess.run(upload, env={**os.environ, **s3_server.rclone_env("S3")}, check=True, timeout=60)
    return f"S3:{bucket}/model", blob


@pytest.fixture
def proxied(s3_server) -> Iterator[tuple[object, dict[str, str]]]:  # type: ignore[no-untyped-def]
    """A pacing proxy in front of the store (no delay, no cap worth noticing) and the environment
    that sends rclone through it."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pacing_proxy import start_pacing_proxy

    with start_pacing_proxy(s3_server.endpoint, delay_ms=0, rate_mib=1000) as proxy:
        yield proxy, {**os.environ, **s3_server.rclone_env("S3"), "RCLONE_CONFIG_S3_ENDPOINT": proxy.url}


def _read(stream: ServedRange) -> bytes:
    out = bytearray()
    buffer = memoryview(bytearray(64 << 10))
    while got := stream.readinto(buffer):
        out += buffer[:got]
    stream.finish()
    return bytes(out)


def _settled(proxy) -> dict:  # type: ignore[no-untyped-def]
    time.sleep(0.3)  # the proxy writes its counters every 0.1 s
    return proxy.stats()  # type: ignore[no-any-return]


def test_each_range_comes_exactly_as_asked_in_one_store_request(stored, proxied) -> None:  # type: ignore[no-untyped-def]
    root, blob = stored
    proxy, env = proxied
    item = RemoteFile(NAME, SIZE, "", "")
    asked = [(0, 1), (5, 70_000), (1 << 20, 1 << 20), (SIZE - 10, 10)]
    with serving(rclone_binary(), root, env, ()) as server:
        before = _settled(proxy)
        for offset, count in asked:
            assert _read(server.open_range(item, offset, count)) == blob[offset : offset + count]
        after = _settled(proxy)
    assert after["bytes_out"] - before["bytes_out"] == sum(count for _, count in asked)
    assert after["by_method"].get("GET", 0) - before["by_method"].get("GET", 0) == len(asked)


def test_a_kept_connection_the_server_closed_is_replaced_once(stored, s3_server) -> None:  # type: ignore[no-untyped-def]
    root, blob = stored
    item = RemoteFile(NAME, SIZE, "", "")
    with serving(rclone_binary(), root, {**os.environ, **s3_server.rclone_env("S3")}, ()) as server:
        assert _read(server.open_range(item, 0, 10)) == blob[:10]
        (kept,) = server._idle
        assert kept.sock is not None
        kept.sock.shutdown(socket.SHUT_RDWR)  # as when the server drops an idle connection
        assert _read(server.open_range(item, 100, 1000)) == blob[100:1100]
        (fresh,) = server._idle
        assert fresh is not kept


def test_a_file_that_changed_since_its_listing_is_refused(stored, proxied) -> None:  # type: ignore[no-untyped-def]
    root, _ = stored
    _, env = proxied
    changed = r"the store sent 'bytes 0-9/3145728' for 'bytes 0-9/3145729'"
    with serving(rclone_binary(), root, env, ()) as server, pytest.raises(TransferError, match=changed) as err:
        server.open_range(RemoteFile(NAME, SIZE + 1, "", ""), 0, 10)
    assert err.value.retryable


def test_a_file_gone_from_the_store_is_an_error_worth_a_retry(stored, proxied) -> None:  # type: ignore[no-untyped-def]
    """rclone answers 404 for a transient failure to open too; the retry lists the folder again."""
    root, _ = stored
    _, env = proxied
    gone = r"gone\.bin: the range server answered HTTP 404 Not Found"
    with serving(rclone_binary(), root, env, ()) as server, pytest.raises(TransferError, match=gone) as err:
        server.open_range(RemoteFile("gone.bin", SIZE, "", ""), 0, 10)
    assert err.value.retryable


def test_the_server_answers_only_with_its_password(stored, proxied) -> None:  # type: ignore[no-untyped-def]
    root, _ = stored
    _, env = proxied
    with serving(rclone_binary(), root, env, ()) as server:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.connect(server.address)
        connection = http.client.HTTPConnection("localhost")
        connection.sock = raw
        connection.request("GET", "/[mlcacheranges:]/" + quote(NAME, safe=""), headers={"Range": "bytes=0-9"})
        assert connection.getresponse().status == 401
        connection.close()
        assert oct(os.stat(os.path.dirname(server.address)).st_mode & 0o777) == "0o700"


def test_a_server_that_cannot_start_says_why_at_once(stored, proxied) -> None:  # type: ignore[no-untyped-def]
    root, _ = stored
    _, env = proxied
    started = time.monotonic()
    with pytest.raises(TransferError, match=r"rclone rcd failed \(exit \d+\): .*no-such-flag"):
        RangeServer(rclone_binary(), root, env, ("--no-such-flag",))
    assert time.monotonic() - started < 10


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


KEEP_SERVING = """
import sys, time
from mlcache.range_server import RangeServer
server = RangeServer(sys.argv[1], sys.argv[2], dict(__import__("os").environ), ())
print(server.address, flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("killed", ["the pull", "its process group"])
def test_a_killed_pull_takes_its_server_with_it(stored, proxied, killed: str) -> None:  # type: ignore[no-untyped-def]
    root, _ = stored
    _, env = proxied
    child = subprocess.Popen(
        [sys.executable, "-c", KEEP_SERVING, rclone_binary(), root],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        address = child.stdout.readline().strip()
        assert os.path.exists(address)
        assert _processes_mentioning(address)  # the server and its watchdog
    finally:
        if killed == "the pull":
            os.kill(child.pid, signal.SIGKILL)
        else:
            os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_processes_mentioning(os.path.dirname(address)) or os.path.exists(address)):
        time.sleep(0.05)
    assert _processes_mentioning(os.path.dirname(address)) == []
    assert not os.path.exists(os.path.dirname(address))


def test_the_password_is_on_no_command_line(stored, proxied) -> None:  # type: ignore[no-untyped-def]
    root, _ = stored
    _, env = proxied
    with serving(rclone_binary(), root, env, ()) as server:
        password = base64.b64decode(server.authorization.removeprefix("Basic ")).decode().partition(":")[2]
        assert len(password) >= 24
        assert _processes_mentioning(password) == []
        assert _processes_mentioning(server.address)  # the scan does see the server


def test_a_server_killed_midway_fails_the_stream_retryably(stored, s3_server) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pacing_proxy import start_pacing_proxy

    root, _ = stored
    with start_pacing_proxy(s3_server.endpoint, delay_ms=0, rate_mib=0.5) as proxy:
        env = {**os.environ, **s3_server.rclone_env("S3"), "RCLONE_CONFIG_S3_ENDPOINT": proxy.url}
        with serving(rclone_binary(), root, env, ()) as server:
            stream = server.open_range(RemoteFile(NAME, SIZE, "", ""), 0, SIZE)
            buffer = memoryview(bytearray(64 << 10))
            assert stream.readinto(buffer) > 0
            (rclone,) = [pid for pid in _processes_mentioning(server.address) if _argv(pid)[1:2] == [b"rcd"]]
            os.kill(rclone, signal.SIGKILL)
            assert server._proc.wait(timeout=30) == 128 + signal.SIGKILL  # the watchdog saw it end
            with pytest.raises(TransferError, match=r"rclone rcd failed \(exit 137\)") as err:
                while stream.readinto(buffer):
                    pass
                stream.finish()
            assert err.value.retryable


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def test_a_pull_by_ranges_leaves_no_server_behind(stored, s3_env, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mlcache.ranged import RangedSettings
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import PullPlan

    root, blob = stored
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    url = "s3://" + root.removeprefix("S3:")
    transfer = RcloneTransfer(
        ranged=RangedSettings(min_size=1 << 20, streams=3, chunk_size=256 << 10, request_size=512 << 10)
    )
    digests: dict[str, str | None] = {}
    plan = PullPlan(lambda: transfer.list(url), tmp_path / "r")
    transfer.pull(
        url, tmp_path / "tree", False, lambda rel, digest=None, **_: digests.update({rel: digest}), [NAME], plan
    )
    assert (tmp_path / "tree" / NAME).read_bytes() == blob
    assert digests == {NAME: hashlib.sha256(blob).hexdigest()}  # by ranges: their own digest
    assert list(temporary.iterdir()) == []
    assert _processes_mentioning(str(temporary)) == []


@pytest.fixture
def stalled_env(s3_server, tmp_path: Path) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """rclone's S3 remote pointed at a server that accepts connections and never answers."""
    from servers import start_silent_server

    silent = start_silent_server(tmp_path / "silent", lifetime=120)
    try:
        yield {**os.environ, **s3_server.rclone_env("S3"), "RCLONE_CONFIG_S3_ENDPOINT": silent.url}
    finally:
        silent.stop()


def _in_thread(call) -> tuple[threading.Thread, list[BaseException]]:  # type: ignore[no-untyped-def]
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def test_an_interrupt_wakes_a_request_a_stalled_store_holds(stored, stalled_env) -> None:  # type: ignore[no-untyped-def]
    root, _ = stored
    with serving(rclone_binary(), root, stalled_env, ()) as server:
        thread, raised = _in_thread(lambda: server.open_range(RemoteFile(NAME, SIZE, "", ""), 0, SIZE))
        thread.join(1.0)
        assert thread.is_alive()  # held by the store, for up to READ_TIMEOUT (120 s)
        server.interrupt()
        thread.join(10)
        assert not thread.is_alive()
        (error,) = raised
        assert isinstance(error, TransferError) and "did not answer" in str(error)
        with pytest.raises(TransferError, match="the pull was stopped"):
            server.open_range(RemoteFile(NAME, SIZE, "", ""), 0, 10)


def test_a_stop_interrupts_the_ranges_of_a_pull_from_a_stalled_store(stored, stalled_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from mlcache.ranged import RangedSettings
    from mlcache.rclone_ranges import SharedProgress, pull_big_files
    from mlcache.transfer import Listing

    root, _ = stored
    item = RemoteFile(NAME, SIZE, "", "")
    listing = Listing("s3://b/model", True, (item,))
    stop = threading.Event()

    @contextlib.contextmanager
    def serve(is_dir: bool) -> Iterator[RangeServer]:
        with serving(rclone_binary(), root, stalled_env, ()) as server:
            yield server

    settings = RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10)
    thread, raised = _in_thread(
        lambda: pull_big_files(
            listing, [item], settings, tmp_path / "tree", serve, SharedProgress(None), None, tmp_path / "r", stop
        )
    )
    thread.join(1.0)
    assert thread.is_alive()
    stop.set()
    thread.join(15)
    assert not thread.is_alive()
    (error,) = raised
    assert isinstance(error, TransferError) and str(error) == "the pull was stopped"
    assert not (tmp_path / "tree" / NAME).exists()
