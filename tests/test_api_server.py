"""Every public method of the core api against a real `mlflow server`, then offline from the cache."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from mlflow import MlflowClient

import mlcache
from mlcache import (
    CacheFallbackWarning,
    CacheMiss,
    CorruptMetadata,
    EntityExists,
    EntityNotFound,
    ExpApi,
    InvalidIdentifier,
    ModelVersionApi,
    OfflineModeError,
    RunApi,
    RunStatus,
)
from mlcache.plugins.mlflow import MlflowApi

from servers import MlflowServer


def test_experiments_online_then_offline(api: MlflowApi, unique: str) -> None:
    exp = api.create_exp(f"exp-{unique}", tags={"team": {"name": "a"}, "n": 1})
    assert isinstance(exp, ExpApi) and exp.name == f"exp-{unique}"
    assert exp.tags == {"team": {"name": "a"}, "n": 1}
    assert exp.creation_time is not None and exp.creation_time.tzinfo is not None

    assert api.get_exp(exp.id) == exp
    assert api.get_exp(exp.name) == exp
    assert api.get_exp_by_name(exp.name) == exp
    assert api.get_exp(exp).id == exp.id
    assert api.get_or_create_exp(exp.name).id == exp.id
    with pytest.raises(EntityExists, match=f"exp-{unique}"):
        api.create_exp(exp.name)

    exp.set_tags({"team": {"name": "b"}})
    assert api.get_exp(exp.id).tags == {"team": {"name": "b"}, "n": 1}

    offline = api.in_offline_mode
    assert offline.offline_mode and not api.offline_mode
    assert offline.get_exp(exp.id).tags == {"team": {"name": "b"}, "n": 1}
    assert offline.get_exp(exp.name).id == exp.id
    with pytest.raises(OfflineModeError):
        offline.create_exp(f"other-{unique}")


def test_get_or_create_exp_creates_once(api: MlflowApi, unique: str) -> None:
    first = api.get_or_create_exp(f"goc-{unique}", tags={"k": "v"})
    second = api.get_or_create_exp(f"goc-{unique}", tags={"ignored": True})
    assert first.id == second.id and second.tags == {"k": "v"}


def test_runs_params_metrics_tags_and_status(api: MlflowApi, mlflow_server: MlflowServer, unique: str) -> None:
    exp = api.create_exp(f"runs-{unique}")
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    with exp.start_run("train", tags={"data": {"split": "v2"}}) as run:
        assert isinstance(run, RunApi) and run.status == RunStatus.RUNNING and run.name == "train"
        run.log_params({"lr": 0.01, "model": {"layers": [64, 32], "kind": "mlp"}})
        run.log_metrics({"acc": 0.5, "val": {"loss": 1.5}}, step=1, timestamp=when)
        run.log_metrics({"acc": 0.75}, step=2)
        run.log_batch(params={"seed": 7}, metrics={"f1": 0.6}, tags={"owner": "me"}, step=3)
        run.set_tags({"stage": "dev"})
    done = api.get_run(run.id)
    assert done.status == RunStatus.FINISHED and done.end_time is not None
    assert done.params == {"lr": 0.01, "model": {"layers": [64, 32], "kind": "mlp"}, "seed": 7}
    assert done.metrics == {"acc": 0.75, "val": {"loss": 1.5}, "f1": 0.6}
    assert done.tags["data"] == {"split": "v2"} and done.tags["owner"] == "me" and done.tags["stage"] == "dev"
    assert done.tags["mlflow"]["runName"] == "train"
    assert done.exp.id == exp.id and done.repo and done.repo.endswith(f"{run.id}/artifacts")

    history = MlflowClient(mlflow_server.url).get_metric_history(run.id, "acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.75)]
    assert history[0].timestamp == int(when.timestamp() * 1000)
    raw = MlflowClient(mlflow_server.url).get_run(run.id).data
    assert raw.params["model.kind"] == '"mlp"' and raw.tags["data.split"] == '"v2"'

    assert api.resume_run(run).status == RunStatus.RUNNING
    killed = api.end_run(run.id, RunStatus.KILLED)
    assert killed.status == RunStatus.KILLED
    with pytest.raises(ValueError, match="terminal status"):
        api.end_run(run, "RUNNING")

    with pytest.raises(RuntimeError), exp.start_run("fails") as failing:
        raise RuntimeError("boom")
    assert api.get_run(failing.id).status == RunStatus.FAILED

    scheduled = api.create_run(exp, "later", status="SCHEDULED")
    assert scheduled.status == RunStatus.SCHEDULED

    offline = api.in_offline_mode
    assert offline.get_run(run.id).status == RunStatus.KILLED
    assert offline.get_run(f"runs:/{run.id}/some/path").params["seed"] == 7
    with pytest.raises(OfflineModeError):
        offline.log_params(run, {"x": 1})


def test_child_runs(api: MlflowApi, unique: str) -> None:
    exp = api.create_exp(f"children-{unique}")
    parent = exp.start_run("parent")
    kids = [parent.start_child(f"kid-{i}") for i in range(3)]
    other = exp.start_run("unrelated")
    assert {k.parent_run_id for k in kids} == {parent.id}
    assert sorted(r.id for r in api.find_child_runs(parent)) == sorted(k.id for k in kids)
    assert sorted(r.id for r in parent.children()) == sorted(k.id for k in kids)
    assert list(api.find_child_runs(other)) == []
    assert sorted(r.name for r in api.in_offline_mode.find_child_runs(parent.id)) == ["kid-0", "kid-1", "kid-2"]


def test_models_versions_and_aliases(api: MlflowApi, unique: str) -> None:
    exp = api.create_exp(f"reg-{unique}")
    run = exp.start_run("train")
    name = f"fraud-{unique}"
    model = api.create_model(name, tags={"domain": "payments"}, description="detects fraud")
    assert model.name == name and model.tags == {"domain": "payments"} and model.description == "detects fraud"
    assert api.get_or_create_model(name).name == name
    with pytest.raises(EntityExists):
        api.create_model(name)
    model.set_tags({"owner": {"team": "risk"}})
    assert api.get_model(name).tags == {"domain": "payments", "owner": {"team": "risk"}}

    v1 = run.register_model_version(name, "model", tags={"stage": "dev"})
    v2 = api.register_model_version(model, run, "model2/", aliases=["champion"])
    assert isinstance(v1, ModelVersionApi) and (v1.version, v2.version) == ("1", "2")
    assert v1.source == f"{run.repo}/model" and v1.path_in_run == "model" and v2.path_in_run == "model2"
    assert v1.run is not None and v1.run.id == run.id and v1.run.exp.id == exp.id
    assert v2.aliases == ["champion"] and v2.model.aliases == {"champion": "2"}
    v1.set_tags({"stage": "prod"})
    assert api.get_model_version((name, 1)).tags == {"stage": "prod"}

    forms = [
        (name, "2"),
        (name, 2),
        (model, "2"),
        (name, "@champion"),
        f"models:/{name}/2",
        f"models:/{name}@champion",
        v2,
    ]
    assert {api.get_model_version(form).version for form in forms} == {"2"}
    assert model.get_version("@champion").version == "2"

    api.set_model_alias((name, "1"), "champion")
    assert api.get_model_version(f"models:/{name}@champion").version == "1"
    assert api.get_model(name).aliases == {"champion": "1"}
    model.set_alias("challenger", 2)
    v2.set_alias("stable")
    assert sorted(api.get_model_version((name, 2)).aliases) == ["challenger", "stable"]

    api.cache_model_version_meta((name, "@champion"))
    offline = api.in_offline_mode
    for form in [(name, "1"), (name, "@champion"), f"models:/{name}@champion", f"models:/{name}/1"]:
        got = offline.get_model_version(form)
        assert got.version == "1" and got.run is not None and got.run.id == run.id and got.run.exp.id == exp.id
    assert offline.get_model_version((name, "@challenger")).version == "2"
    assert offline.get_model(f"models:/{name}").aliases == {"champion": "1", "challenger": "2", "stable": "2"}


def test_cache_meta_fills_everything_needed_offline(mlflow_server: MlflowServer, tmp_path: Path, unique: str) -> None:
    writer = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "writer")
    exp = writer.create_exp(f"fill-{unique}")
    run = exp.start_run("r")
    mv = run.register_model_version(f"m-{unique}", "model", aliases=["prod"])

    reader = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "reader")
    with pytest.raises(CacheMiss):
        reader.in_offline_mode.get_run(run.id)
    cached = reader.cache_model_version_meta(f"models:/{mv.model.name}@prod")
    assert cached.version == "1"
    offline = reader.in_offline_mode
    assert offline.get_run(run.id).exp.name == exp.name
    assert offline.get_exp(exp.id).name == exp.name
    assert offline.get_model(mv.model.name).aliases == {"prod": "1"}
    assert offline.get_model_version((mv.model.name, "@prod")).run.id == run.id

    reader2 = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "reader2")
    reader2.cache_run_meta(run.id)
    reader2.cache_exp_meta(exp.name)
    reader2.cache_model_meta(mv.model.name)
    assert reader2.in_offline_mode.get_run(run.id).exp.id == exp.id
    assert reader2.in_offline_mode.get_model(mv.model.name).aliases == {"prod": "1"}


def test_export_meta_writes_a_usable_cache_dir(api: MlflowApi, tmp_path: Path, unique: str) -> None:
    exp = api.create_exp(f"export-{unique}")
    run = exp.start_run("r")
    run.log_params({"a": 1})
    mv = run.register_model_version(f"exp-model-{unique}", "model", aliases=["prod"])

    target = tmp_path / "bundle"
    api.export_model_version_meta((mv.model.name, "@prod"), target)
    offline = mlcache.get_api("offline", cache_dir=target)
    got = offline.get_model_version((mv.model.name, "@prod"))
    assert got.version == "1" and got.run.params == {"a": 1} and got.run.exp.name == exp.name
    assert (target / "CACHEDIR.TAG").exists()

    only_run = tmp_path / "run-only"
    run.export_meta(only_run)
    assert mlcache.get_api("offline", cache_dir=only_run).get_run(run.id).exp.id == exp.id
    with pytest.raises(CacheMiss):
        mlcache.get_api("offline", cache_dir=only_run).get_model(mv.model.name)

    exp_only = tmp_path / "exp-only"
    api.export_exp_meta(exp, exp_only)
    api.export_model_meta(mv.model, exp_only)
    assert mlcache.get_api("offline", cache_dir=exp_only).get_exp(exp.name).id == exp.id
    assert mlcache.get_api("offline", cache_dir=exp_only).get_model(mv.model.name).aliases == {"prod": "1"}
    with pytest.raises(CacheMiss):
        mlcache.get_api("offline", cache_dir=exp_only).get_model_version((mv.model.name, "@prod"))
    with pytest.raises(mlcache.MlcacheError, match="cannot export into"):
        api.export_run_meta(run, api.cache_dir)


def test_plain_mlflow_values_read_back_as_plain_values(
    api: MlflowApi, mlflow_server: MlflowServer, unique: str
) -> None:
    client = MlflowClient(mlflow_server.url)
    exp_id = client.create_experiment(f"plain-{unique}", tags={"team": "a"})
    raw = client.create_run(exp_id, tags={"note": "it's plain", "nested.key": "x"})
    client.log_param(raw.info.run_id, "lr", "0.01")
    client.log_param(raw.info.run_id, "name", "resnet")
    client.log_metric(raw.info.run_id, "acc", 0.9)
    run = api.get_run(raw.info.run_id)
    assert run.params == {"lr": 0.01, "name": "resnet"}
    assert run.tags["note"] == "it's plain" and run.tags["nested"] == {"key": "x"}
    assert run.metrics == {"acc": 0.9}
    assert api.get_exp(exp_id).tags == {"team": "a"}


def test_metadata_max_age_and_force_refresh(mlflow_server: MlflowServer, tmp_path: Path, unique: str) -> None:
    patient = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "c", metadata_max_age=3600)
    eager = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "d")
    run = patient.create_exp(f"age-{unique}").start_run("r")
    assert patient.get_run(run.id).params == {}
    MlflowClient(mlflow_server.url).log_param(run.id, "late", "1")
    assert patient.get_run(run.id).params == {}
    assert patient.get_run(run.id, force_refresh=True).params == {"late": 1}
    assert eager.get_run(run.id).params == {"late": 1}
    MlflowClient(mlflow_server.url).log_param(run.id, "later", "2")
    assert eager.get_run(run.id).params == {"late": 1, "later": 2}
    assert patient.metadata_max_age == timedelta(hours=1)


def test_writes_through_the_api_are_seen_by_the_next_read_even_with_max_age(
    mlflow_server: MlflowServer, tmp_path: Path, unique: str
) -> None:
    patient = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=tmp_path / "c", metadata_max_age=3600)
    run = patient.create_exp(f"stale-{unique}").start_run("r")
    run.log_params({"x": 1})
    assert patient.get_run(run.id).params == {"x": 1}


def test_bad_input_gives_clear_errors(api: MlflowApi, unique: str) -> None:
    with pytest.raises(EntityNotFound, match="run '0123456789abcdef0123456789abcdef' does not exist"):
        api.get_run("0123456789abcdef0123456789abcdef")
    with pytest.raises(EntityNotFound, match=f"experiment 'nope-{unique}' does not exist"):
        api.get_exp(f"nope-{unique}")
    with pytest.raises(EntityNotFound, match="does not exist"):
        api.get_model(f"nope-{unique}")
    with pytest.raises(EntityNotFound):
        api.get_model_version((f"nope-{unique}", 1))
    with pytest.raises(InvalidIdentifier):
        api.get_run("runs:/")
    with pytest.raises(InvalidIdentifier):
        api.get_model_version(f"models:/x-{unique}")
    with pytest.raises(InvalidIdentifier):
        api.get_model_version((f"x-{unique}", "v1"))
    run = api.create_exp(f"bad-{unique}").start_run("r")
    with pytest.raises(mlcache.UnsafePath):
        api.register_model_version(f"m-{unique}", run, "../outside")
    with pytest.raises(mlcache.UnsafePath):
        api.register_model_version(f"m-{unique}", run, "/abs")


def test_corrupted_cache_file_is_refetched_online_and_named_offline(api: MlflowApi, unique: str) -> None:
    run = api.create_exp(f"corrupt-{unique}").start_run("r", tags={"k": "v"})
    api.cache_run_meta(run)
    path = api.cache_dir / "metadata" / "run" / f"{run.id}.json"
    path.write_text(path.read_text()[:40])

    with pytest.raises(CorruptMetadata) as info:
        api.in_offline_mode.get_run(run.id)
    assert str(path) in str(info.value)

    with pytest.warns(CacheFallbackWarning, match="malformed cache file"):
        assert api.get_run(run.id).tags["k"] == "v"
    assert json.loads(path.read_text())["data"]["id"] == run.id
    assert api.in_offline_mode.get_run(run.id).tags["k"] == "v"


def test_offline_search_reports_a_bad_file_and_goes_on(api: MlflowApi, unique: str) -> None:
    exp = api.create_exp(f"badscan-{unique}")
    parent = exp.start_run("p")
    kids = [parent.start_child(f"k{i}") for i in range(3)]
    list(api.find_child_runs(parent))
    bad = api.cache_dir / "metadata" / "run" / f"{kids[1].id}.json"
    bad.write_text("not json")
    with pytest.warns(CacheFallbackWarning, match=str(bad)):
        found = sorted(r.name for r in api.in_offline_mode.find_child_runs(parent))
    assert found == ["k0", "k2"]


def test_offline_miss_names_the_entity_and_the_fix(api: MlflowApi, unique: str) -> None:
    offline = api.in_offline_mode
    with pytest.raises(CacheMiss) as info:
        offline.get_run("abcdef")
    message = str(info.value)
    assert "run 'abcdef' is not in the cache at" in message and "api.cache_run_meta('abcdef')" in message
    with pytest.raises(CacheMiss, match=r"model version 'models:/m@prod'.*cache_model_version_meta"):
        offline.get_model_version(("m", "@prod"))
    with pytest.raises(CacheMiss, match="model 'm' is not in the cache"):
        offline.get_model("m")
    with pytest.raises(CacheMiss, match=f"experiment 'e-{unique}'"):
        offline.get_exp(f"e-{unique}")
