"""Offline-first rules: server stopped or unreachable, offline plugin without mlflow, env config."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mlcache
from mlcache import CacheFallbackWarning, CacheMiss, OfflineModeError, PluginNotFound, ServerUnreachable
from mlcache.plugins.mlflow import MlflowApi
from mlcache.plugins.offline import OfflineApi
from mlcache.retry import RetryPolicy
from mlcache.testing import InMemoryPlugin, MemoryBackend

from servers import MlflowServer, free_port

BLOCK_MLFLOW = textwrap.dedent(
    """
    import sys
    class _BlockMlflow:
        def find_spec(self, name, path=None, target=None):
            if name == "mlflow" or name.startswith("mlflow."):
                raise ImportError("mlflow is blocked in this test")
    sys.meta_path.insert(0, _BlockMlflow())
    """
)


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def fill_cache(api: mlcache.BaseMlflowApi) -> dict[str, str]:
    exp = api.create_exp("offline-exp", tags={"team": "a"})
    run = exp.start_run("r", tags={"k": "v"})
    run.log_params({"lr": 0.1})
    child = run.start_child("kid")
    mv = run.register_model_version("offline-model", "model", aliases=["prod"])
    api.cache_model_version_meta(mv)
    api.cache_run_meta(child)
    list(api.find_child_runs(run))
    return {"exp": exp.id, "run": run.id, "child": child.id, "model": mv.model.name}


def test_server_down_reads_come_from_the_cache(tmp_path: Path) -> None:
    backend = MemoryBackend(tmp_path / "server")
    ids = fill_cache(InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache"))
    backend.down = True

    offline = InMemoryPlugin(backend=backend, cache_dir=tmp_path / "cache", offline_mode=True)
    assert offline.get_run(ids["run"]).params == {"lr": 0.1}
    assert offline.get_exp("offline-exp").tags == {"team": "a"}
    assert offline.get_model_version(("offline-model", "@prod")).run.id == ids["run"]
    assert [r.id for r in offline.find_child_runs(ids["run"])] == [ids["child"]]
    calls = sum(backend.calls.values())

    online = InMemoryPlugin(
        backend=backend, cache_dir=tmp_path / "cache", retry=RetryPolicy(attempts=2, initial_wait=0)
    )
    with pytest.warns(CacheFallbackWarning, match=r"in-memory server is down.*answering run"):
        assert online.get_run(ids["run"]).params == {"lr": 0.1}
    with pytest.warns(CacheFallbackWarning):
        assert online.get_model_version("models:/offline-model@prod").version == "1"
    assert sum(backend.calls.values()) > calls
    with pytest.raises(ServerUnreachable, match="down"):
        online.get_run("0" * 32)
    with pytest.raises(ServerUnreachable):
        online.create_exp("while-down")
    assert not list(offline.find_exps({"name": "while-down"}))

    backend.down = False
    backend.runs[ids["run"]].params["lr"] = "0.2"
    assert online.get_run(ids["run"]).params == {"lr": 0.2}


def test_a_refused_mlflow_connection_falls_back_to_the_cache(mlflow_server: MlflowServer, tmp_path: Path) -> None:
    ids = fill_cache(MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "cache"))
    online = MlflowApi(
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        cache_dir=tmp_path / "cache",
        connect_timeout=2,
        retry=RetryPolicy(attempts=2, initial_wait=0.2),
    )
    started = time.monotonic()
    with pytest.warns(CacheFallbackWarning, match=r"refused the connection .*answering run"):
        assert online.get_run(ids["run"]).params == {"lr": 0.1}
    with pytest.warns(CacheFallbackWarning):
        assert online.get_model_version("models:/offline-model@prod").version == "1"
    assert time.monotonic() - started < 10
    with pytest.raises(ServerUnreachable, match="refused the connection"):
        online.get_run("0" * 32)
    with pytest.raises(ServerUnreachable):
        online.create_exp("while-down")


def test_unreachable_server_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    api = MlflowApi(
        tracking_uri=f"http://127.0.0.1:{free_port()}",
        cache_dir=tmp_path,
        connect_timeout=1,
        retry=RetryPolicy(attempts=2, initial_wait=0.2),
    )
    started = time.monotonic()
    with pytest.raises(ServerUnreachable) as info:
        api.get_exp("1")
    assert time.monotonic() - started < 5
    assert "refused the connection" in str(info.value) and "MLCACHE_OFFLINE=1" in str(info.value)


def test_nothing_is_fetched_at_construction(tmp_path: Path) -> None:
    api = MlflowApi(tracking_uri=f"http://127.0.0.1:{free_port()}", cache_dir=tmp_path / "c")
    assert api._client is None
    assert not (tmp_path / "c").exists()


def test_offline_plugin_works_without_mlflow(tmp_path: Path) -> None:
    ids = fill_cache(InMemoryPlugin(backend=MemoryBackend(tmp_path / "server"), cache_dir=tmp_path / "cache"))
    code = BLOCK_MLFLOW + textwrap.dedent(
        f"""
        import mlcache
        api = mlcache.get_api("offline", cache_dir={str(tmp_path / "cache")!r})
        run = api.get_run({ids["run"]!r})
        mv = api.get_model_version("models:/offline-model@prod")
        assert run.params == {{"lr": 0.1}}, run.params
        assert mv.run.id == run.id and mv.model.aliases == {{"prod": "1"}}
        assert [r.id for r in api.find_child_runs(run)] == [{ids["child"]!r}]
        try:
            api.get_run("missing")
        except mlcache.CacheMiss as exc:
            print("miss:", exc)
        env_api = mlcache.get_api()
        assert env_api.offline_mode and env_api.get_run({ids["run"]!r}).id == {ids["run"]!r}
        import sys
        assert not any(m == "mlflow" or m.startswith("mlflow.") for m in sys.modules)
        print("ok")
        """
    )
    result = run_python(code, env={"MLCACHE_OFFLINE": "1", "MLCACHE_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    assert "miss: run 'missing' is not in the cache" in result.stdout and result.stdout.endswith("ok\n")


def test_import_mlcache_does_not_import_mlflow() -> None:
    result = run_python("import sys, mlcache; print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_environment_configures_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCACHE_CACHE_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("MLCACHE_OFFLINE", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLCACHE_METADATA_MAX_AGE", "90")
    api = mlcache.get_api()
    assert api.metadata_max_age.total_seconds() == 90
    assert isinstance(api, MlflowApi)
    assert api.cache_dir == tmp_path / "from-env" and api.offline_mode
    assert api.resolved_tracking_uri == "http://127.0.0.1:9"
    explicit = mlcache.get_api(cache_dir=tmp_path / "arg", offline_mode=False, tracking_uri="http://127.0.0.1:10")
    assert explicit.cache_dir == tmp_path / "arg" and not explicit.offline_mode
    assert explicit.resolved_tracking_uri == "http://127.0.0.1:10"
    with pytest.raises(CacheMiss):
        api.get_run("abc")


def test_plugins_are_discovered_by_entry_point(tmp_path: Path) -> None:
    from mlcache.plugins import available_plugins

    assert available_plugins()["offline"] == "mlcache.plugins.offline:OfflineApi"
    assert isinstance(mlcache.get_api("offline", cache_dir=tmp_path), OfflineApi)
    with pytest.raises(PluginNotFound, match="no mlcache plugin named 'nope'; installed: memory, mlflow, offline"):
        mlcache.get_api("nope")
    with pytest.raises(ValueError, match="cannot run with offline_mode=False"):
        OfflineApi(cache_dir=tmp_path, offline_mode=False)
    with pytest.raises(OfflineModeError):
        OfflineApi(cache_dir=tmp_path).create_model("x")


def test_embedded_default_needs_nothing_started(tmp_path: Path) -> None:
    api = MlflowApi(cache_dir=tmp_path / "cache", embedded_dir=tmp_path / "embedded")
    assert api.resolved_tracking_uri == f"sqlite:///{tmp_path / 'embedded' / 'mlflow.db'}"
    exp = api.create_exp("embedded")
    assert exp.artifact_location.startswith((tmp_path / "embedded" / "artifacts").as_uri())
    run = exp.start_run("r")
    mv = run.register_model_version("embedded-model", "model", aliases=["prod"])
    assert api.in_offline_mode.get_model_version(("embedded-model", "@prod")).version == mv.version


def test_auth_through_mlflows_own_environment(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlcache import BackendError

    from servers import start_proxy

    proxy = start_proxy(tmp_path / "auth", mlflow_server.url, require_token="s3cret")
    try:
        api = MlflowApi(tracking_uri=proxy.url, cache_dir=tmp_path / "c", retry=RetryPolicy(attempts=3))
        with pytest.raises(BackendError) as info:
            api.get_or_create_exp("needs-auth")
        assert info.value.status == 401 and proxy.requests == 1
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cret")
        authed = MlflowApi(tracking_uri=proxy.url, cache_dir=tmp_path / "c")
        assert authed.get_or_create_exp("needs-auth").name == "needs-auth"
    finally:
        proxy.stop()
