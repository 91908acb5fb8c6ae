"""Big files by ranges: chunks resume only when their log line and bytes agree, the store's MD5 is
checked, hostile leftovers are removed, never followed; against rclone serve s3, with a real kill."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from mlcache.errors import InvalidSetting, TransferError
from mlcache.ranged import RangedSettings, pull_ranged
from mlcache.transfer import RemoteFile

from servers import rclone_binary

REPO = Path(__file__).resolve().parent.parent
KiB = 1024
SETTINGS = RangedSettings(min_size=64 * KiB, streams=3, chunk_size=16 * KiB)
MTIME = "2026-01-02T03:04:05.000000000Z"


class FileRanges:
    """Ranges of a local file, counted; `fail_after` bytes into the pull, every stream fails."""

    def __init__(self, path: Path, fail_after: int | None = None) -> None:
        self.path = path
        self.fail_after = fail_after
        self.sent = 0
        self.lock = threading.Lock()
        self.asked: list[tuple[int, int]] = []

    def __call__(self, item: RemoteFile, offset: int, count: int) -> FileRanges.Stream:
        with self.lock:
            self.asked.append((offset, count))
        return FileRanges.Stream(self, offset, count)

    class Stream:
        def __init__(self, owner: FileRanges, offset: int, count: int) -> None:
            self.owner, self.offset, self.left = owner, offset, count

        def readinto(self, buffer: memoryview) -> int:
            owner = self.owner
            with owner.lock:
                if owner.fail_after is not None and owner.sent >= owner.fail_after:
                    raise TransferError("injected: the link went down", retryable=True)
                n = min(len(buffer), self.left, 4 * KiB)
                with open(owner.path, "rb") as handle:
                    handle.seek(self.offset)
                    data = handle.read(n)
                owner.sent += len(data)
            buffer[: len(data)] = data
            self.offset += len(data)
            self.left -= len(data)
            return len(data)

        def finish(self) -> None:
            return

        def abort(self) -> None:
            return


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, RemoteFile]:
    source = tmp_path / "remote.bin"
    source.write_bytes(os.urandom(200 * KiB + 123))
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    return source, RemoteFile("model/weights.bin", source.stat().st_size, MTIME, f"md5:{md5}")


def _pull(item: RemoteFile, ranges: FileRanges, state: Path, dest: Path) -> dict[str, str]:
    told: dict[str, str] = {}

    def on_file(rel: str, staged: str | None = None, digest: str | None = None) -> None:
        assert digest is not None
        told[rel] = digest

    pull_ranged([(item, "s3://b/model/weights.bin", dest)], ranges, state, SETTINGS, on_file)
    return told


def test_a_ranged_file_lands_whole_with_its_sha256_and_the_listed_time(
    tmp_path: Path, remote: tuple[Path, RemoteFile]
) -> None:
    source, item = remote
    state, dest = tmp_path / "ranged", tmp_path / "tree" / "model" / "weights.bin"
    told = _pull(item, FileRanges(source), state, dest)
    assert dest.read_bytes() == source.read_bytes()
    assert told == {"model/weights.bin": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert dest.stat().st_mtime_ns == 1767323045 * 1_000_000_000
    assert list(state.iterdir()) == []


def test_a_stop_ends_the_pull_between_two_reads_of_a_chunk(tmp_path: Path, remote: tuple[Path, RemoteFile]) -> None:
    source, item = remote
    state, dest = tmp_path / "ranged", tmp_path / "tree" / "weights.bin"
    stop = threading.Event()

    class Stopping(FileRanges):
        """Sets `stop` once 8 KiB were read: mid-way through the first 128 KiB chunk."""

        def __call__(self, item: RemoteFile, offset: int, count: int) -> FileRanges.Stream:
            stream = super().__call__(item, offset, count)
            read = stream.readinto

            def readinto(buffer: memoryview) -> int:
                got = read(buffer)
                if self.sent >= 8 * KiB:
                    stop.set()
                return got

            stream.readinto = readinto  # type: ignore[method-assign]
            return stream

    ranges = Stopping(source)
    one_stream = RangedSettings(min_size=64 * KiB, streams=1, chunk_size=128 * KiB)
    with pytest.raises(TransferError, match="the pull was stopped"):
        pull_ranged([(item, "s3://b/model/weights.bin", dest)], ranges, state, one_stream, stop=stop)
    assert ranges.sent == 8 * KiB
    assert not dest.exists()
    again = FileRanges(source)
    pull_ranged([(item, "s3://b/model/weights.bin", dest)], again, state, one_stream)
    assert dest.read_bytes() == source.read_bytes()
    assert again.asked[0][0] == 0  # the chunk left half-read was not kept


def test_a_failed_stream_wakes_the_stalled_ones_and_is_the_error(
    tmp_path: Path, remote: tuple[Path, RemoteFile]
) -> None:
    source, item = remote
    woken = threading.Event()
    interrupts: list[bool] = []

    class OneFailsOneStalls(FileRanges):
        """The first range fails at once; the second waits until interrupted (or 60 s)."""

        def __call__(self, item: RemoteFile, offset: int, count: int) -> FileRanges.Stream:
            stream = super().__call__(item, offset, count)

            def readinto(buffer: memoryview) -> int:
                if offset == 0:
                    raise TransferError("injected: the link went down", retryable=True)
                woken.wait(60)
                raise TransferError("woken: the request was interrupted", retryable=True)

            stream.readinto = readinto  # type: ignore[method-assign]
            return stream

    def interrupt() -> None:
        interrupts.append(True)
        woken.set()

    two = RangedSettings(min_size=64 * KiB, streams=2, chunk_size=16 * KiB, request_size=16 * KiB)
    files = [(item, "s3://b/w", tmp_path / "w.bin")]
    with pytest.raises(TransferError, match="injected: the link went down"):
        pull_ranged(files, OneFailsOneStalls(source), tmp_path / "r", two, interrupt=interrupt)
    assert len(interrupts) == 1


def test_a_failed_pull_resumes_from_its_verified_chunks_only(tmp_path: Path, remote: tuple[Path, RemoteFile]) -> None:
    source, listed = remote
    item = listed._replace(hash="")  # no store hash: each chunk is checked by its CRC-32
    state, dest = tmp_path / "ranged", tmp_path / "tree" / "w.bin"
    with pytest.raises(TransferError, match="the link went down"):
        _pull(item, FileRanges(source, fail_after=120 * KiB), state, dest)
    assert not dest.exists()
    (log,) = state.glob("*.log")
    lines = log.read_text().splitlines()
    assert json.loads(lines[0])["size"] == item.size
    kept = [int(line.split()[0]) for line in lines[1:]]
    assert len(kept) >= 4
    # A chunk whose bytes no longer match its line is fetched again; so is one without a line.
    (data,) = state.glob("*.data")
    with open(data, "r+b") as handle:
        handle.seek(kept[0] * SETTINGS.chunk_size)
        handle.write(b"\0" * 10)
    second = FileRanges(source)
    _pull(item, second, state, dest)
    assert dest.read_bytes() == source.read_bytes()

    def length(index: int) -> int:
        return min(SETTINGS.chunk_size, item.size - index * SETTINGS.chunk_size)

    assert second.sent == item.size - sum(length(index) for index in kept[1:])


def test_with_a_store_md5_a_chunk_spoiled_after_its_line_spoils_the_file_and_is_dropped(
    tmp_path: Path, remote: tuple[Path, RemoteFile]
) -> None:
    source, item = remote
    state, dest = tmp_path / "ranged", tmp_path / "tree" / "w.bin"
    with pytest.raises(TransferError, match="the link went down"):
        _pull(item, FileRanges(source, fail_after=120 * KiB), state, dest)
    (log,) = state.glob("*.log")
    assert log.read_text().splitlines()[1].endswith(" -")
    (data,) = state.glob("*.data")
    first = int(log.read_text().splitlines()[1].split()[0])
    with open(data, "r+b") as handle:
        handle.seek(first * SETTINGS.chunk_size)
        handle.write(b"\0" * 10)
    with pytest.raises(TransferError, match="do not match the store's MD5"):
        _pull(item, FileRanges(source), state, dest)
    assert not dest.exists()
    third = FileRanges(source)
    _pull(item, third, state, dest)
    assert third.sent == item.size
    assert dest.read_bytes() == source.read_bytes()


def test_a_changed_remote_file_is_fetched_anew(tmp_path: Path, remote: tuple[Path, RemoteFile]) -> None:
    source, item = remote
    state, dest = tmp_path / "ranged", tmp_path / "tree" / "w.bin"
    with pytest.raises(TransferError):
        _pull(item, FileRanges(source, fail_after=120 * KiB), state, dest)
    source.write_bytes(os.urandom(item.size))
    changed = item._replace(
        mtime="2026-01-02T03:05:00.000000000Z", hash=f"md5:{hashlib.md5(source.read_bytes()).hexdigest()}"
    )
    again = FileRanges(source)
    _pull(changed, again, state, dest)
    assert again.sent == item.size
    assert dest.read_bytes() == source.read_bytes()


def test_bytes_that_disagree_with_the_store_md5_are_refused_and_dropped(
    tmp_path: Path, remote: tuple[Path, RemoteFile]
) -> None:
    source, item = remote
    state, dest = tmp_path / "ranged", tmp_path / "tree" / "w.bin"
    lying = item._replace(hash="md5:" + "0" * 32)
    with pytest.raises(TransferError, match="do not match the store's MD5"):
        _pull(lying, FileRanges(source), state, dest)
    assert not dest.exists()
    (data,) = state.glob("*.data")
    assert data.stat().st_size == 0


def test_hostile_leftovers_are_replaced_never_followed(tmp_path: Path, remote: tuple[Path, RemoteFile]) -> None:
    source, item = remote
    state, dest = tmp_path / "ranged", tmp_path / "tree" / "w.bin"
    state.mkdir(mode=0o700)
    name = hashlib.sha256(item.path.encode()).hexdigest()[:32]
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    os.symlink(outside, state / f"{name}.data")
    os.symlink(outside, state / f"{name}.log")
    _pull(item, FileRanges(source), state, dest)
    assert outside.read_text() == "keep me"
    assert dest.read_bytes() == source.read_bytes()


def test_a_state_folder_others_may_write_is_refused(tmp_path: Path, remote: tuple[Path, RemoteFile]) -> None:
    source, item = remote
    state = tmp_path / "ranged"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(TransferError, match="not a private folder"):
        _pull(item, FileRanges(source), state, tmp_path / "w.bin")


def test_settings_that_cannot_work_are_refused_up_front() -> None:
    with pytest.raises(InvalidSetting, match="streams >= 1"):
        RangedSettings(streams=0)
    refused = r"request_size >= chunk_size; .* chunk_size=8388608, request_size=4194304"
    with pytest.raises(InvalidSetting, match=refused):
        RangedSettings(chunk_size=8 << 20, request_size=4 << 20)


def test_requests_go_in_file_order_and_none_is_longer_than_asked(
    tmp_path: Path, remote: tuple[Path, RemoteFile]
) -> None:
    source, item = remote
    ranges = FileRanges(source)
    settings = RangedSettings(min_size=64 * KiB, streams=1, chunk_size=16 * KiB, request_size=40 * KiB)
    pull_ranged([(item, "s3://b/model/weights.bin", tmp_path / "w.bin")], ranges, tmp_path / "r", settings)
    assert (tmp_path / "w.bin").read_bytes() == source.read_bytes()
    # 13 chunks (the last one 123 bytes) in requests of at most 2 chunks, asked in file order
    assert ranges.asked == [(offset, min(32 * KiB, item.size - offset)) for offset in range(0, item.size, 32 * KiB)]


# ----------------------------------------------------------------- a real store, a real kill
CHILD = """
import sys
from pathlib import Path
from mlcache.artifact_store import ArtifactStore
from mlcache.layout import CacheLayout
from mlcache.manifest import EntryKey
from mlcache.ranged import RangedSettings
from mlcache.rclone import RcloneTransfer

cache, url = Path(sys.argv[1]), sys.argv[2]
transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=4, chunk_size=256 << 10))
store = ArtifactStore(CacheLayout(cache))
key = EntryKey("runs", ("0" * 32, "model"))
path = store.pull(key, lambda tree, on_file, only, plan: transfer.pull(url, tree, False, on_file, only, plan),
                  lambda: transfer.list(url))
print(path)
"""


def test_a_pull_killed_midway_resumes_from_what_it_had(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pacing_proxy import start_pacing_proxy

    size = 12 << 20
    bucket = f"ranged-{uuid.uuid4().hex[:12]}"
    source = tmp_path / "source"
    source.mkdir()
    blob = os.urandom(size)
    (source / "weights.bin").write_bytes(blob)
    (source / "MLmodel").write_text("small")
    upload = [rclone_binary(), "copy", "--config", "/dev/null", str(source), f"S3:{bucket}/model"]
    subprocess.run(upload, env={**os.environ, **s3_server.rclone_env("S3")}, check=True, timeout=60)
    with start_pacing_proxy(s3_server.endpoint, delay_ms=0, rate_mib=2) as proxy:
        env = {**os.environ, **s3_server.env, "MLFLOW_S3_ENDPOINT_URL": proxy.url}
        cache = tmp_path / "cache"
        command = [sys.executable, "-c", CHILD, str(cache), f"s3://{bucket}/model"]
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        logs = cache / "tmp"
        deadline = time.monotonic() + 60
        chunks = 0
        while time.monotonic() < deadline and chunks < 24:
            chunks = sum(len(log.read_text().splitlines()) - 1 for log in logs.glob("pull-*/ranged/*.log"))
            time.sleep(0.05)
        assert chunks >= 24, child.communicate(timeout=30)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        time.sleep(1.0)
        before = proxy.bytes_out()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        again = proxy.bytes_out() - before
    entry = Path(done.stdout.strip())
    assert (entry / "weights.bin").read_bytes() == blob
    # What the first pull logged (at least 24 chunks of 256 KiB, 6 MiB) is not fetched again.
    assert again <= size - (6 << 20) + (64 << 10)
    manifest = json.loads(next((cache / "manifests").rglob("*.json")).read_text())
    (weights,) = [f for f in manifest["files"] if f["path"] == "weights.bin"]
    assert weights["sha256"] == hashlib.sha256(blob).hexdigest()
    assert weights["store_hash"] == f"md5:{hashlib.md5(blob).hexdigest()}"
    assert list((cache / "tmp").iterdir()) == []


# ----------------------------------------------------------------- the copy beside the listing


def _upload(s3_server, files: dict[str, bytes], tmp_path: Path) -> str:  # type: ignore[no-untyped-def]
    """A bucket of its own holding `files` under `model/`; the bucket's name."""
    bucket = f"early-{uuid.uuid4().hex[:12]}"
    source = tmp_path / "source"
    for rel, data in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(data)
    upload = [rclone_binary(), "copy", "--config", "/dev/null", str(source), f"S3:{bucket}/model"]
    subprocess.run(upload, env={**os.environ, **s3_server.rclone_env("S3")}, check=True, timeout=60)
    return bucket


def _pull_through_proxy(s3_server, tmp_path: Path, url: str) -> tuple[Path, int, Path]:  # type: ignore[no-untyped-def]
    """Pull `url` in a child process through a pacing proxy (2 MiB/s a connection); the entry's
    path, the bytes the proxy sent, the cache."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from pacing_proxy import start_pacing_proxy

    cache = tmp_path / "cache"
    with start_pacing_proxy(s3_server.endpoint, delay_ms=0, rate_mib=2) as proxy:
        env = {**os.environ, **s3_server.env, "MLFLOW_S3_ENDPOINT_URL": proxy.url}
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(cache), url], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        time.sleep(0.3)  # the proxy's counters are written every 0.1 s
        sent = proxy.bytes_out()
    return Path(done.stdout.strip()), sent, cache


def _manifest_files(cache: Path) -> dict[str, dict]:
    manifest = json.loads(next((cache / "manifests").rglob("*.json")).read_text())
    return {f["path"]: f for f in manifest["files"]}


def test_a_folder_pull_sends_its_big_file_once_while_the_copy_takes_the_rest(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    big = os.urandom(3 << 20)
    small = {f"shards/part-{i}.bin": os.urandom(4 * KiB) for i in range(20)}
    bucket = _upload(s3_server, {"weights.bin": big, **small}, tmp_path)
    entry, sent, cache = _pull_through_proxy(s3_server, tmp_path, f"s3://{bucket}/model")
    assert (entry / "weights.bin").read_bytes() == big
    for rel, data in small.items():
        assert (entry / rel).read_bytes() == data
    files = _manifest_files(cache)
    assert sorted(files) == sorted(["weights.bin", *small])
    assert files["weights.bin"]["sha256"] == hashlib.sha256(big).hexdigest()
    # the copy started before the listing was in skipped the big file (--max-size): sent once
    assert len(big) <= sent < len(big) + (1 << 20)
    assert list((cache / "tmp").iterdir()) == []


def test_a_single_big_file_is_taken_from_the_early_copy_by_ranges(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    big = os.urandom(6 << 20)
    bucket = _upload(s3_server, {"weights.bin": big}, tmp_path)
    entry, sent, cache = _pull_through_proxy(s3_server, tmp_path, f"s3://{bucket}/model/weights.bin")
    assert entry.read_bytes() == big
    (weights,) = _manifest_files(cache).values()
    assert weights["sha256"] == hashlib.sha256(big).hexdigest()
    assert weights["store_hash"] == f"md5:{hashlib.md5(big).hexdigest()}"
    # rclone copies a single-file source whatever its size filter: the early copy is stopped once
    # the listing says so, its partial file removed, and the file comes by ranges (not sent twice)
    assert len(big) <= sent < len(big) + (2 << 20)
    assert list((cache / "tmp").iterdir()) == []


def test_a_single_small_file_is_left_to_the_early_copy(tmp_path: Path, s3_server) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(64 * KiB)
    bucket = _upload(s3_server, {"config.json": data}, tmp_path)
    entry, sent, cache = _pull_through_proxy(s3_server, tmp_path, f"s3://{bucket}/model/config.json")
    assert entry.read_bytes() == data
    assert len(data) <= sent < len(data) + 16 * KiB  # sent once
    assert list((cache / "tmp").iterdir()) == []


def test_the_copy_starts_before_the_listing_is_in(tmp_path: Path, s3_server, s3_env) -> None:  # type: ignore[no-untyped-def]
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import PullPlan

    files = {"MLmodel": b"flavors: {}\n", "weights.bin": os.urandom(2 << 20)}
    bucket = _upload(s3_server, files, tmp_path)
    url = f"s3://{bucket}/model"
    transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10))
    dest = tmp_path / "tree"
    seen_before_listing: list[bool] = []

    def slow_listing():  # type: ignore[no-untyped-def]
        """The listing is held back until the small file is in (or 30 s have gone)."""
        deadline = time.monotonic() + 30
        while not (dest / "MLmodel").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        seen_before_listing.append((dest / "MLmodel").exists())
        return transfer.list(url)

    reported: list[str] = []
    transfer.pull(url, dest, False, lambda rel, **_: reported.append(rel), None, PullPlan(slow_listing, tmp_path / "r"))
    assert seen_before_listing == [True]
    assert (dest / "MLmodel").read_bytes() == files["MLmodel"]
    assert (dest / "weights.bin").read_bytes() == files["weights.bin"]
    assert sorted(set(reported)) == ["weights.bin"]  # the copied file is hashed once the copy ends


def test_a_failed_listing_stops_the_early_copy(tmp_path: Path, s3_server, s3_env) -> None:  # type: ignore[no-untyped-def]
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import PullPlan

    bucket = _upload(s3_server, {f"part-{i}.bin": os.urandom(4 * KiB) for i in range(5)}, tmp_path)
    transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10))

    def failing_listing():  # type: ignore[no-untyped-def]
        raise TransferError("the listing broke", retryable=False)

    with pytest.raises(TransferError, match="the listing broke"):
        plan = PullPlan(failing_listing, tmp_path / "r")
        transfer.pull(f"s3://{bucket}/model", tmp_path / "tree", False, None, None, plan)
    assert _child_commands("copy") == []


def _child_commands(command: str) -> list[int]:
    """The pids of this process's children running `rclone <command>`."""
    found = []
    for pid in subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[0].endswith(b"rclone") and argv[1] == command.encode():
            found.append(int(pid))
    return found


class _Totals:
    """A progress reporter that keeps every update."""

    def __init__(self) -> None:
        self.updates: list[tuple[int, int | None]] = []
        self.closed: list[bool] = []

    def update(self, done: int, total: int | None, rate: float | None = None) -> None:
        self.updates.append((done, total))

    def close(self, ok: bool = True) -> None:
        self.closed.append(ok)


def test_a_single_big_file_the_early_copy_finished_is_kept_and_counted_once(tmp_path: Path, s3_server, s3_env) -> None:  # type: ignore[no-untyped-def]
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import PullPlan

    big = os.urandom(3 << 20)
    bucket = _upload(s3_server, {"weights.bin": big}, tmp_path)
    url = f"s3://{bucket}/model/weights.bin"
    transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10))
    dest = tmp_path / "tree"
    reports: list[tuple[str, str | None]] = []

    def listing_after_the_copy():  # type: ignore[no-untyped-def]
        """The listing comes only once the early copy has ended (or 30 s have gone)."""
        deadline = time.monotonic() + 30
        while not _child_commands("copy") and time.monotonic() < deadline:
            time.sleep(0.01)
        while _child_commands("copy") and time.monotonic() < deadline:
            time.sleep(0.02)
        return transfer.list(url)

    totals = _Totals()
    plan = PullPlan(listing_after_the_copy, tmp_path / "r")
    transfer.pull(url, dest, totals, lambda rel, digest=None, **_: reports.append((rel, digest)), None, plan)
    assert (dest / "weights.bin").read_bytes() == big
    # the copy's file is kept: no ranged pull reported a digest of its own
    assert [rel for rel, digest in reports if digest is not None] == []
    assert totals.closed == [True]
    assert totals.updates[-1] == (len(big), len(big))


def test_progress_of_a_single_big_file_counts_its_bytes_once(tmp_path: Path, s3_server, s3_env) -> None:  # type: ignore[no-untyped-def]
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import PullPlan

    big = os.urandom(3 << 20)
    bucket = _upload(s3_server, {"weights.bin": big}, tmp_path)
    url = f"s3://{bucket}/model/weights.bin"
    transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10))
    totals = _Totals()
    transfer.pull(url, tmp_path / "tree", totals, None, None, PullPlan(lambda: transfer.list(url), tmp_path / "r"))
    assert (tmp_path / "tree" / "weights.bin").read_bytes() == big
    assert totals.closed == [True]
    assert totals.updates[-1] == (len(big), len(big))
    assert all(total in (None, len(big)) and done <= len(big) for done, total in totals.updates)


def test_a_big_file_the_ranges_refuse_is_copied_beside_them(tmp_path: Path, s3_server, s3_env) -> None:  # type: ignore[no-untyped-def]
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import PullPlan

    files = {"MLmodel": b"small", "weights.bin": os.urandom(3 << 20), "odd\\name.bin": os.urandom(2 << 20)}
    bucket = _upload(s3_server, files, tmp_path)
    url = f"s3://{bucket}/model"
    transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10))
    reports: dict[str, list[str | None]] = {}

    def on_file(rel: str, staged: str | None = None, digest: str | None = None) -> None:
        reports.setdefault(rel, []).append(digest)

    transfer.pull(url, tmp_path / "tree", False, on_file, None, PullPlan(lambda: transfer.list(url), tmp_path / "r"))
    for rel, data in files.items():
        assert (tmp_path / "tree" / rel).read_bytes() == data
    # weights.bin came by ranges, which report its digest; the copy of what the ranges leave (the
    # odd name among them) reports nothing: its files are hashed once it ends
    assert reports == {"weights.bin": [hashlib.sha256(files["weights.bin"]).hexdigest()]}


def test_a_failed_ranged_file_stops_the_copy_and_is_the_error(
    tmp_path: Path, s3_server, s3_env, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import Listing, PullPlan

    sys.path.insert(0, str(REPO / "benchmarks"))
    from pacing_proxy import start_pacing_proxy

    small = os.urandom(600 << 10)
    bucket = _upload(s3_server, {"small.bin": small, "weights.bin": os.urandom(2 << 20)}, tmp_path)
    url = f"s3://{bucket}/model"
    transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10))

    def stale_listing() -> Listing:
        """The big file is listed one byte longer than it is now."""
        listing = transfer.list(url)
        files = tuple(RemoteFile(f.path, f.size + (f.path == "weights.bin"), f.mtime, f.hash) for f in listing.files)
        return Listing(listing.url, listing.is_dir, files)

    with start_pacing_proxy(s3_server.endpoint, delay_ms=0, rate_mib=0.05) as proxy:  # the copy takes 12 s
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(TransferError, match=r"weights\.bin: the store sent 'bytes \d+-\d+/2097152' for"):
            transfer.pull(url, tmp_path / "tree", False, None, None, PullPlan(stale_listing, tmp_path / "r"))
        assert _child_commands("copy") == []
    copied = tmp_path / "tree" / "small.bin"
    assert not copied.exists() or copied.stat().st_size < len(small)


def test_a_copy_that_fails_on_its_own_is_the_error_not_the_stop_it_causes(
    tmp_path: Path, s3_server, s3_env, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from mlcache.rclone import RcloneTransfer
    from mlcache.transfer import PullPlan

    sys.path.insert(0, str(REPO / "benchmarks"))
    from pacing_proxy import start_pacing_proxy

    bucket = _upload(s3_server, {"small.bin": b"s" * 4096, "weights.bin": os.urandom(2 << 20)}, tmp_path)
    url = f"s3://{bucket}/model"
    transfer = RcloneTransfer(ranged=RangedSettings(min_size=1 << 20, streams=2, chunk_size=256 << 10))
    blocked = tmp_path / "tree" / "small.bin" / "in-the-way"
    blocked.mkdir(parents=True)  # the copy cannot write small.bin: a folder holding a file is there
    with start_pacing_proxy(s3_server.endpoint, delay_ms=0, rate_mib=0.05) as proxy:  # the ranges take 40 s
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", proxy.url)
        with pytest.raises(TransferError, match=r"rclone copy failed \(exit \d+\): .*small\.bin") as err:
            transfer.pull(
                url, tmp_path / "tree", False, None, None, PullPlan(lambda: transfer.list(url), tmp_path / "r")
            )
        assert _child_commands("copy") == []
    assert "stopped" not in str(err.value)
