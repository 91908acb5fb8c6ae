"""MLflow 3 logged models (`models:/m-<id>`) and MLflow's own load_model through `mlcache://`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

import mlcache
from mlcache import CacheMiss, LoggedModelApi
from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer, S3Server, start_mlflow_server, start_proxy, start_s3_server

LOG_MODEL = textwrap.dedent(
    """
    import json, sys, tempfile, os
    import mlflow

    class Scale(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            with open(context.artifacts["weights"]) as handle:
                self.factor = float(handle.read())
        def predict(self, context, model_input, params=None):
            return [x * self.factor for x in model_input["x"]]

    url, experiment, registered = sys.argv[1:4]
    mlflow.set_tracking_uri(url)
    mlflow.set_experiment(experiment)
    weights = os.path.join(tempfile.mkdtemp(), "weights.txt")
    with open(weights, "w") as handle:
        handle.write("2.5")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Scale(), artifacts={"weights": weights},
                                       registered_model_name=registered, pip_requirements=["mlflow"])
    mlflow.MlflowClient().set_registered_model_alias(registered, "champion", info.registered_model_version)
    print(json.dumps({"run_id": run.info.run_id, "model_id": info.model_id,
                      "version": str(info.registered_model_version)}))
    """
)

PREDICT = textwrap.dedent(
    """
    import sys, mlflow, pandas
    for uri in sys.argv[1:]:
        model = mlflow.pyfunc.load_model(uri)
        print("PREDICT", uri, model.predict(pandas.DataFrame({"x": [1.0, 2.0]})))
    """
)


def log_with_plain_mlflow(server: MlflowServer, env: dict[str, str], experiment: str, registered: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", LOG_MODEL, server.url, experiment, registered],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def predict(uris: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Load each model in turn with `mlflow.pyfunc.load_model` in one new process, and predict."""
    return subprocess.run(
        [sys.executable, "-c", PREDICT, *uris], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


def predicted(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr[-3000:]
    return [line for line in result.stdout.splitlines() if line.startswith("PREDICT")]


@pytest.fixture(scope="module")
def logged(s3_mlflow: MlflowServer, s3_server: S3Server) -> dict:
    info = log_with_plain_mlflow(s3_mlflow, s3_server.env, "logged-models", "scaler")
    return {**info, "name": "scaler"}


def test_every_identifier_gives_mlflows_own_files(
    s3_mlflow: MlflowServer, s3_env: dict, logged: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id, name, version = logged["model_id"], logged["name"], logged["version"]
    client = MlflowClient(s3_mlflow.url)
    assert client.get_model_version(name, version).source == f"models:/{model_id}"
    assert client.list_artifacts(logged["run_id"]) == []
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", s3_mlflow.url)
    expected = files_of(
        Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{model_id}", dst_path=str(tmp_path / "ml"), tracking_uri=s3_mlflow.url
            )
        )
    )
    assert "MLmodel" in expected
    # MLflow before 3.18 adds a file of its own naming the registered model to a models:/ download; not a model file.
    assert expected.pop("registered_model_meta", None) in (None, b"model_name: null\nmodel_version: null\n")

    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "cache")
    lm = api.get_logged_model(model_id)
    assert isinstance(lm, LoggedModelApi) and lm.name == "model" and lm.source_run_id == logged["run_id"]
    assert lm.artifact_location.endswith(f"models/{model_id}/artifacts") and lm.exp.name == "logged-models"
    mv = api.get_model_version((name, version))
    assert mv.logged_model_id == model_id and mv.path_in_run is None
    forms = [
        model_id,
        f"models:/{model_id}",
        lm,
        mv,
        (name, version),
        (name, "@champion"),
        f"models:/{name}/{version}",
        f"models:/{name}@champion",
    ]
    entry = tmp_path / "cache" / "artifacts" / "models" / model_id
    for form in forms:
        assert api.get_model_artifact(form) == entry
        assert files_of(api.get_model_artifact(form)) == expected
        assert {f.path for f in api.list_model_artifacts(form)} == set(expected)
    assert list((tmp_path / "cache" / "artifacts").glob("runs/*")) == []

    fresh = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "fresh")
    fresh.cache_model_version_meta((name, "@champion"))
    fresh.cache_model_artifact(model_id)
    offline = fresh.in_offline_mode
    for form in forms[:2] + forms[4:]:
        assert files_of(offline.get_model_artifact(form)) == expected
    assert offline.get_logged_model(f"models:/{model_id}").source_run_id == logged["run_id"]
    assert [m.id for m in offline.find_logged_models({"source_run_id": logged["run_id"]})] == [model_id]
    assert [m.id for m in api.find_logged_models({"name": "model", "exp.id": lm.exp.id})] == [model_id]

    bundle = tmp_path / "bundle"
    api.export_model_artifact((name, "@champion"), bundle)
    in_bundle = mlcache.get_api("offline", cache_dir=bundle)
    assert files_of(in_bundle.get_model_artifact(f"models:/{name}@champion")) == expected
    assert files_of(in_bundle.get_model_artifact(model_id)) == expected


def test_mlflow2_versions_work_beside_logged_models(s3_api: MlflowApi, logged: dict) -> None:
    run = s3_api.get_run(logged["run_id"])
    s3_api.log_run_artifact(run, lambda p: p.write_text("old way"), "legacy/model.txt")
    mv = s3_api.register_model_version(logged["name"], run, "legacy")
    assert mv.path_in_run == "legacy" and mv.logged_model_id is None
    assert (s3_api.get_model_artifact(mv) / "model.txt").read_text() == "old way"
    assert (s3_api.get_model_artifact((logged["name"], "@champion")) / "MLmodel").exists()


def test_load_model_through_mlcache_uris_cold_warm_and_offline(tmp_path: Path) -> None:
    s3 = start_s3_server(tmp_path / "s3")
    s3.bucket("bucket")
    server = start_mlflow_server(tmp_path / "ml", artifact_root="s3://bucket/mlartifacts", env=s3.env)
    proxy = start_proxy(tmp_path / "proxy", s3.endpoint)
    try:
        info = log_with_plain_mlflow(server, s3.env, "plugin", "plugged")
        env = {
            **s3.env,
            "MLFLOW_S3_ENDPOINT_URL": proxy.url,
            "MLFLOW_TRACKING_URI": server.url,
            "MLCACHE_CACHE_DIR": str(tmp_path / "cache"),
        }
        uris = [
            "mlcache://models/plugged/1",
            "mlcache://models/plugged@champion",
            f"mlcache://models/{info['model_id']}",
        ]
        answers = [f"PREDICT {uri} [2.5, 5.0]" for uri in uris]
        assert predicted(predict(uris[:1], env)) == answers[:1]
        pulled = proxy.requests
        assert pulled > 0
        assert predicted(predict(uris, env)) == answers
        assert proxy.requests == pulled, "a warm load reached the store"
    finally:
        server.stop()
        s3.stop()
        proxy.stop()
    offline_env = {**env, "MLCACHE_OFFLINE": "1"}
    assert predicted(predict(uris, offline_env)) == answers
    fresh_enough = {**env, "MLCACHE_METADATA_MAX_AGE": "3600"}
    online_alias = predict([uris[1]], fresh_enough)
    assert predicted(online_alias) == answers[1:2]
    assert "MLflow server at" not in online_alias.stderr and "retrying" not in online_alias.stderr
    miss = predict(["mlcache://models/never-cached/1"], offline_env)
    assert miss.returncode != 0 and "model version 'models:/never-cached/1' is not in the cache" in miss.stderr


def test_download_artifacts_hands_back_the_cached_directory(
    s3_mlflow: MlflowServer, s3_env: dict, logged: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", s3_mlflow.url)
    monkeypatch.setenv("MLCACHE_CACHE_DIR", str(tmp_path / "cache"))
    local = mlflow.artifacts.download_artifacts(f"mlcache://models/{logged['name']}@champion")
    assert Path(local) == tmp_path / "cache" / "artifacts" / "models" / logged["model_id"]
    copied = mlflow.artifacts.download_artifacts(f"mlcache://models/{logged['name']}/1", dst_path=str(tmp_path / "d"))
    assert files_of(Path(copied)) == files_of(Path(local))
    mlmodel = mlflow.artifacts.download_artifacts(f"mlcache://models/{logged['model_id']}/MLmodel")
    assert Path(mlmodel).name == "MLmodel"
    run_file = tmp_path / "r.txt"
    run_file.write_text("run file")
    api = MlflowApi(tracking_uri=s3_mlflow.url, cache_dir=tmp_path / "cache")
    api.log_run_artifact(logged["run_id"], run_file, "notes/r.txt")
    assert (
        Path(mlflow.artifacts.download_artifacts(f"mlcache://runs/{logged['run_id']}/notes/r.txt")).read_text()
        == "run file"
    )
    monkeypatch.setenv("MLCACHE_OFFLINE", "1")
    with pytest.raises(CacheMiss):
        mlflow.artifacts.download_artifacts("mlcache://models/absent@champion")


def test_proxied_logged_models(proxied_mlflow: MlflowServer, s3_server: S3Server, s3_env: dict, tmp_path: Path) -> None:
    info = log_with_plain_mlflow(proxied_mlflow, s3_server.env, "proxied-logged", "proxied-scaler")
    api = MlflowApi(tracking_uri=proxied_mlflow.url, cache_dir=tmp_path / "cache")
    assert api.get_logged_model(info["model_id"]).artifact_location.startswith("mlflow-artifacts:")
    path = api.get_model_artifact(("proxied-scaler", "@champion"))
    assert path == tmp_path / "cache" / "artifacts" / "models" / info["model_id"]
    assert (path / "MLmodel").exists() and (path / "artifacts" / "weights.txt").read_text() == "2.5"
    assert api.in_offline_mode.get_model_artifact(f"models:/{info['model_id']}") == path
