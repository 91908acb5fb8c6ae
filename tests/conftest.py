"""Shared fixtures: a real `mlflow server` per session, an isolated cache per test."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer, S3Server, start_mlflow_server, start_s3_server

ENV_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLCACHE_OFFLINE",
    "MLCACHE_CACHE_DIR",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLCACHE_METADATA_MAX_AGE",
    "MLCACHE_LOCK_MODE",
    "MLCACHE_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible store (`rclone serve s3`) with a bucket named `bucket`."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    server.bucket("bucket")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_mlflow(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[MlflowServer]:
    """A real MLflow server whose default artifact root is `s3://bucket/mlartifacts`."""
    server = start_mlflow_server(
        tmp_path_factory.mktemp("mlflow-s3"), artifact_root="s3://bucket/mlartifacts", env=s3_server.env
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proxied_mlflow(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[MlflowServer]:
    """A real MLflow server serving artifacts itself (`mlflow-artifacts:`), stored on the S3 fixture.
    The server stores proxied uploads with boto3; without it every upload is an HTTP 500."""
    try:
        import boto3  # noqa: F401
    except ImportError as exc:
        raise RuntimeError("the proxied MLflow server needs boto3: pip install -e '.[mlflow,dev]'") from exc
    server = start_mlflow_server(
        tmp_path_factory.mktemp("mlflow-proxied"),
        artifact_root="mlflow-artifacts:/",
        env=s3_server.env,
        extra_args=["--serve-artifacts", "--artifacts-destination", "s3://bucket/proxied"],
    )
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The variables an MLflow user sets to reach the S3 fixture, set for this test."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.env


@pytest.fixture
def s3_api(s3_mlflow: MlflowServer, s3_env: dict[str, str], cache_dir: Path) -> MlflowApi:
    return MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=cache_dir)


@pytest.fixture
def eager_collector() -> Iterator[list[int]]:
    """A collector that runs a collection every 10 allocations; yields the list its collections
    (generation numbers) are appended to."""
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    collections: list[int] = []

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.enable()
    gc.set_threshold(10, 10, 10)
    gc.callbacks.append(count)
    try:
        yield collections
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*thresholds)
        if not enabled:
            gc.disable()
