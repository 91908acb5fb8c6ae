"""One deadline per server call, with real processes: a server that accepts and never answers, a
refused port, and the CLI pulling a cached model behind a hanging server in seconds."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcache import CacheFallbackWarning, RetryPolicy, ServerUnreachable
from mlcache.errors import InvalidSetting
from mlcache.plugins.mlflow import MlflowApi
from mlcache.plugins.mlflow import http as mlflow_http

from servers import SilentServer, free_port, start_silent_server

CLI = [sys.executable, "-c", "from mlcache.cli import run; run()"]
TIMED_CLI = [
    sys.executable,
    "-c",
    "import atexit, sys, time; import mlflow; from mlcache.cli import run; started = time.monotonic(); "
    "atexit.register(lambda: print(f'command took {time.monotonic() - started:.3f}s', file=sys.stderr)); run()",
]
OFFLINE_HINT = "to read the cache without trying the server, use offline_mode=True or MLCACHE_OFFLINE=1"
EVEN = RetryPolicy(initial_wait=0.5, backoff=2.0, jitter=0.0)


def silence(url: str, seconds: str) -> str:
    """The message for a server at `url` that accepted a connection and stayed silent for `seconds`."""
    return (
        f"MLflow server at {url} accepted the connection but sent no answer within {seconds} "
        f"(if it is only slow, raise timeout= or MLCACHE_TIMEOUT); {OFFLINE_HINT}"
    )


def write_model(path: Path) -> None:
    """A small model folder: two files."""
    path.mkdir()
    (path / "weights.bin").write_bytes(b"w" * 3000)
    (path / "conf.json").write_text("{}")


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def cached_model(api: MlflowApi, unique: str) -> tuple[str, Path]:
    """A model version with alias `prod`, its metadata and files in the api's cache."""
    run = api.create_exp(f"deadline-{unique}").start_run("r")
    name = f"deadline-model-{unique}"
    api.log_model_version(name, run, write_model, "model", aliases=["prod"])
    assert api.get_model_version((name, "@prod")).version == "1"
    return name, api.get_model_artifact((name, "@prod"))


def fallbacks(caught: pytest.WarningsRecorder) -> list[str]:
    """The texts of the `CacheFallbackWarning`s among `caught`."""
    return [str(w.message) for w in caught if w.category is CacheFallbackWarning]


def cli(*args: str, env: dict[str, str], home: Path, command: list[str] = CLI) -> subprocess.CompletedProcess:
    """Run the `mlcache` command line with its user dirs under `home`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLCACHE_"))}
    clean.update({"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CACHE_HOME": str(home / "cache")})
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, env={**clean, **env})


@pytest.fixture
def silent_server(tmp_path: Path) -> Iterator[SilentServer]:
    """A real process on a free 127.0.0.1 port that accepts, reads and never answers."""
    server = start_silent_server(tmp_path / "silent", lifetime=300)
    yield server
    server.stop()


def test_cached_alias_answers_from_the_cache_within_the_deadline(
    api: MlflowApi, cache_dir: Path, silent_server: SilentServer, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, path = cached_model(api, unique)
    expected = files_of(path)
    monkeypatch.setenv("MLCACHE_TIMEOUT", "2")
    hung = MlflowApi(tracking_uri=silent_server.url, cache_dir=cache_dir)
    assert hung.timeout == 2.0
    hung.client  # noqa: B018 - imports mlflow outside the timed part

    started = time.monotonic()
    with pytest.warns(CacheFallbackWarning) as caught:
        mv = hung.get_model_version((name, "@prod"))
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4, elapsed
    assert (mv.version, mv.aliases) == ("1", ["prod"])
    [message] = fallbacks(caught)
    assert re.fullmatch(
        re.escape(f"{silence(silent_server.url, '2s')}; answering model version 'models:/{name}@prod' from the cache")
        + r" \(cached at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\)",
        message,
    ), message
    assert silent_server.accepted() == 1

    started = time.monotonic()
    with pytest.warns(CacheFallbackWarning) as caught:
        pulled = hung.get_model_artifact((name, "@prod"))
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4, elapsed
    assert pulled == path and files_of(pulled) == expected
    assert len(fallbacks(caught)) == 1 and fallbacks(caught)[0].startswith(silence(silent_server.url, "2s"))
    assert silent_server.accepted() == 2


def test_nothing_cached_is_server_unreachable_within_the_deadline(
    silent_server: SilentServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    hung = MlflowApi(tracking_uri=silent_server.url, cache_dir=tmp_path / "empty", timeout=2)
    assert hung.request_timeout == 120.0
    hung.client  # noqa: B018 - imports mlflow outside the timed part
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as info:
        hung.get_model_version(("never-cached", "@prod"))
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4, elapsed
    assert str(info.value) == silence(silent_server.url, "2s")
    assert silent_server.accepted() == 1


def test_a_shorter_mlflow_request_timeout_is_kept_per_request_inside_the_deadline(
    silent_server: SilentServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    hung = MlflowApi(tracking_uri=silent_server.url, cache_dir=tmp_path / "empty", timeout=3, retry=EVEN)
    hung.client  # noqa: B018 - imports mlflow outside the timed part
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as info:
        hung.get_run("0" * 32)
    elapsed = time.monotonic() - started
    # 1 s silence, 0.5 s wait, 1 s silence; the next 1 s wait would end past the 3 s deadline
    assert 2.4 <= elapsed < 3.5, elapsed
    assert str(info.value) == silence(silent_server.url, "1s")
    assert silent_server.accepted() == 2


def test_a_refused_connection_says_so_and_retries_only_within_the_deadline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    down = MlflowApi(tracking_uri=url, cache_dir=tmp_path, timeout=2, retry=EVEN)
    down.client  # noqa: B018 - imports mlflow outside the timed part
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="mlcache.retry"), pytest.raises(ServerUnreachable) as info:
        down.get_exp("1")
    elapsed = time.monotonic() - started
    refused = f"MLflow server at {url} refused the connection (is the server running, and at this address and port?)"
    assert str(info.value) == f"{refused}; {OFFLINE_HINT}"
    # waits of 0.5 s and 1 s; the third, 2 s, would end past the 2 s deadline
    assert [r.getMessage().split(" after ")[0] for r in caplog.records] == [
        "retrying get experiment 1 in 0.5s (attempt 2 of 4)",
        "retrying get experiment 1 in 1.0s (attempt 3 of 4)",
    ]
    assert 1.5 <= elapsed < 2.5, elapsed


def test_an_unknown_host_name_says_so(tmp_path: Path) -> None:
    api = MlflowApi(tracking_uri="http://mlflow.invalid:5000", cache_dir=tmp_path, retry=RetryPolicy(attempts=1))
    with pytest.raises(ServerUnreachable) as info:
        api.get_exp("1")
    assert str(info.value).startswith(
        "MLflow server at http://mlflow.invalid:5000 could not be found: its host name does not resolve ("
    )
    assert str(info.value).endswith(f"); {OFFLINE_HINT}")


def test_cli_pulls_a_cached_alias_behind_a_silent_server_in_seconds(
    api: MlflowApi, cache_dir: Path, silent_server: SilentServer, unique: str, tmp_path: Path
) -> None:
    name, path = cached_model(api, unique)
    env = {"MLFLOW_TRACKING_URI": silent_server.url, "MLCACHE_CACHE_DIR": str(cache_dir)}
    started = time.monotonic()
    result = cli("--timeout", "2", "pull", f"models:/{name}@prod", env=env, home=tmp_path, command=TIMED_CLI)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}\n"
    cli_message = silence(silent_server.url, "2s").replace("raise timeout=", "raise --timeout")
    cli_message = cli_message.replace(OFFLINE_HINT, ServerUnreachable.CLI_HINT)
    assert f"warning: {cli_message}; answering model version" in result.stderr
    assert "Warning:" not in result.stderr and ".py:" not in result.stderr
    assert silent_server.accepted() == 1
    took = re.fullmatch(r"command took (\d+\.\d+)s", result.stderr.splitlines()[-1])
    assert took is not None and 1.9 <= float(took[1]) < 3.5, result.stderr
    assert elapsed < 30, elapsed


def test_bad_timeouts_are_refused_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"MLCACHE_TIMEOUT": "abc", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    result = cli("pull", "models:/any@prod", env=env, home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: MLCACHE_TIMEOUT='abc' is not a number of seconds; use a finite number >= 0.1"
    ]
    usage = cli("--timeout", "0", "pull", "models:/any@prod", env={"COLUMNS": "200"}, home=tmp_path)
    assert usage.returncode == 2
    assert "Invalid value for '--timeout': Input should be greater than or equal to 0.1" in usage.stderr

    for name, value in [("MLCACHE_TIMEOUT", "0"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "soon")]:
        with monkeypatch.context() as env_patch:
            env_patch.setenv(name, value)
            with pytest.raises(InvalidSetting) as info:
                MlflowApi(cache_dir=tmp_path, offline_mode=True)
            assert str(info.value) == f"{name}={value!r} is not a number of seconds; use a finite number >= 0.1"
    with pytest.raises(InvalidSetting, match=r"^MlflowApi: timeout: Input should be greater than or equal to 0.1$"):
        MlflowApi(cache_dir=tmp_path, timeout=0)


def test_retry_stops_before_a_wait_that_would_pass_the_deadline() -> None:
    policy = RetryPolicy(attempts=10, initial_wait=0.4, backoff=1.0, jitter=0.0)
    calls: list[float] = []

    def failing() -> None:
        calls.append(time.monotonic())
        raise ConnectionError("down")

    started = time.monotonic()
    with pytest.raises(ConnectionError):
        policy.call("get", failing, deadline=started + 1.0)
    # waits end at 0.4 s and 0.8 s; the third would end at 1.2 s, past the deadline
    assert len(calls) == 3 and time.monotonic() - started < 1.0
    calls.clear()
    with pytest.raises(ConnectionError):
        policy.model_copy(update={"initial_wait": 0.0}).call("get", failing)
    assert len(calls) == 10


def test_each_request_gets_only_the_time_left() -> None:
    seen: list[dict] = []
    wrapped = mlflow_http._bounded(lambda **kwargs: seen.append(kwargs))
    deadline = time.monotonic() + 1.5
    with mlflow_http.bounded(mlflow_http.HttpLimits(0, 0.0, 5.0, 120.0, deadline)) as sent:
        wrapped()
        wrapped(timeout=(0.5, 300))
    first, second = (kwargs["timeout"] for kwargs in seen)
    first.start_connect()
    assert 1.0 < first.connect_timeout <= 1.5 and 1.0 < first.total <= 1.5 and first.read_timeout <= 1.5
    assert second.connect_timeout == 0.5 and 1.0 < second.total <= 1.5
    assert sent.connect_timeout == 0.5 and 1.0 < sent.read_timeout <= 1.5
    passed = mlflow_http.HttpLimits(0, 0.0, 5.0, 120.0, time.monotonic())
    with mlflow_http.bounded(passed), pytest.raises(mlflow_http.DeadlinePassed):
        wrapped()
    assert len(seen) == 2
    with mlflow_http.bounded(mlflow_http.HttpLimits(2, 0.5, 5.0, 120.0)):
        wrapped()
    assert seen[2] == {"max_retries": 2, "backoff_factor": 0.5, "timeout": (5.0, 120.0)}
