"""Trust against a real MLflow server: dates found in cache files are claims, long names the server
accepts work everywhere, sources outside the server's artifact roots are refused."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import mlcache
from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer


def _model_with_two_versions(api: MlflowApi, name: str) -> None:
    run = api.create_exp(f"exp-{name[:40]}").start_run("train")
    api.log_model_version(name, run, lambda p: p.write_text("v1"), "model", aliases=["prod"])
    api.log_model_version(name, run, lambda p: p.write_text("v2"), "model2")


def test_a_future_dated_document_does_not_pin_an_alias(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str
) -> None:
    writer = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "writer")
    name = f"pinned-{unique}"
    _model_with_two_versions(writer, name)
    api = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "cache", metadata_max_age=3600)
    assert api.get_model_version((name, "@prod")).version == "1"
    future = time.time() + 365 * 86400
    for path in (tmp_path / "cache" / "metadata").rglob("*.json"):
        body = json.loads(path.read_text())
        body["cached_at"] = "2099-01-01T00:00:00+00:00"
        path.write_text(json.dumps(body))
        os.utime(path, (future, future))
    writer.set_model_alias((name, 2), "prod")
    assert api.get_model_version((name, "@prod")).version == "2"
    assert api.get_model_version((name, "@prod")).version == "2"


def test_a_long_model_name_the_server_accepts_works_online_and_offline(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str
) -> None:
    api = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "cache")
    name = f"long-{unique}-" + "x" * 290
    _model_with_two_versions(api, name)
    assert [m.name for m in api.find_models({"name": name})] == [name]
    assert sorted(v.version for v in api.find_model_versions({"model.name": name})) == ["1", "2"]
    assert api.get_model_artifact((name, "@prod")).joinpath().exists()
    for path in (tmp_path / "cache").rglob("*"):
        assert len(path.name.encode()) <= 255
    offline = api.in_offline_mode
    assert [m.name for m in offline.find_models({"name": name})] == [name]
    assert offline.get_model_version((name, "@prod")).version == "1"
    assert offline.get_model_artifact((name, "@prod")).read_text() == "v1"


def test_a_version_whose_source_points_to_another_store_is_refused(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str
) -> None:
    from mlflow import MlflowClient

    api = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "cache")
    run = api.create_exp(f"outside-{unique}").start_run("train")
    name = f"outside-{unique}"
    api.create_model(name)
    MlflowClient(mlflow_server.url).create_model_version(name, "s3://someone-elses-bucket/secrets", run_id=run.id)
    with pytest.raises(mlcache.UntrustedSource, match="'s3://someone-elses-bucket/secrets', outside the artifact"):
        api.get_model_artifact((name, 1))
    allowed = api.model_copy(update={"allowed_sources": ("s3://someone-elses-bucket",)})
    with pytest.raises(mlcache.MlcacheError) as info:
        allowed.get_model_artifact((name, 1))
    assert not isinstance(info.value, mlcache.UntrustedSource)
