"""Shared fixtures: a real `mlflow server` per session, an isolated cache per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlcache.plugins.mlflow_api import MlflowApi

from servers import MlflowServer, start_mlflow_server

ENV_VARS = ("MLFLOW_TRACKING_URI", "MLCACHE_OFFLINE", "MLCACHE_CACHE_DIR", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own MLflow or mlcache settings."""
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server (sqlite backend, local artifact root) for the whole session."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A server of this test alone, which the test may stop and restart."""
    server = start_mlflow_server(tmp_path / "own-server")
    yield server
    server.stop()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def api(mlflow_server: MlflowServer, cache_dir: Path) -> MlflowApi:
    return MlflowApi(tracking_uri=mlflow_server.url, cache_dir=cache_dir)


@pytest.fixture
def unique() -> str:
    """A suffix that keeps names of this test apart from others on the shared server."""
    return uuid.uuid4().hex[:8]
