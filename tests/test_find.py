"""Finders against a real MLflow server: push-down + remainder, pure local filtering and the
offline index return the same entities in the same order."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from mlcache import InvalidQuery, RunStatus
from mlcache.plugins.mlflow import MlflowApi
from mlcache.query import compile_query, sort_docs

from servers import MlflowServer

ODD = ["it's", 'say "hi"', "50%_off", "ünïcode ✓", "plain", "a'b\"c", "under_score", ""]


@pytest.fixture(scope="module")
def seeded(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An experiment of 36 runs whose tags, params and metrics vary, some logged by plain MLflow."""
    cache = tmp_path_factory.mktemp("find-cache")
    api = MlflowApi(tracking_uri=mlflow_server.url, cache_dir=cache)
    exp = api.create_exp(f"find-{random.randrange(10**9)}")
    other = api.create_exp(f"find-other-{random.randrange(10**9)}")
    rng = random.Random(7)
    client = MlflowClient(mlflow_server.url)
    runs = []
    for i in range(36):
        run = api.create_run(exp, f"run-{i % 12}", tags={"team": ["a", "b", "c"][i % 3], "note": ODD[i % len(ODD)]})
        params: dict[str, Any] = {"lr": [0.001, 0.01, 0.1][i % 3], "opt": ODD[(i * 5) % len(ODD)], "layers": [i % 4, 8]}
        if i % 4 == 0:
            params["data"] = {"split": ["v1", "v2"][(i // 4) % 2]}
        run.log_params(params)
        if i % 5:
            run.log_metrics({"acc": round(rng.random(), 3)})
        if i % 3:
            run.log_metrics({"loss": round(rng.uniform(0, 3), 2)})
        if i % 6 == 0:
            client.log_param(run.id, "plain", "0.5" if i % 12 else "text")
            client.set_tag(run.id, "legacy", "yes")
        if i % 7 == 0:
            run.log_params({"a/b": "slash", "x.y": 3})
        status = [RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED, RunStatus.RUNNING][i % 4]
        if status != RunStatus.RUNNING:
            run = api.end_run(run, status)
        runs.append(run)
    api.create_run(other, "elsewhere", tags={"team": "a"})
    everything = list(api.find_runs(exp=exp))
    return {"api": api, "exp": exp, "other": other, "runs": runs, "docs": {r.id: r.model_dump() for r in everything}}


def local_answer(seeded: dict, query: dict, sort: list) -> list[str]:
    compiled = compile_query(query)
    docs = [doc for doc in seeded["docs"].values() if compiled.match(doc)]
    return [d["id"] for d in sort_docs(docs, sort, lambda d: d, lambda d: (d["id"],))]


def three_answers(seeded: dict, query: dict, sort: list) -> tuple[list[str], list[str], list[str]]:
    api: MlflowApi = seeded["api"]
    online = [r.id for r in api.find_runs(query, sort, exp=seeded["exp"])]
    offline = [r.id for r in api.in_offline_mode.find_runs(query, sort, exp=seeded["exp"])]
    return online, local_answer(seeded, query, sort), offline


FIELDS = {
    "params.lr": st.sampled_from([0.001, 0.01, 0.1, 0.05, 1]),
    "params.opt": st.sampled_from(ODD),
    "params.layers": st.sampled_from([0, 1, 3, 8, 9]),
    "params.data.split": st.sampled_from(["v1", "v2", "v3"]),
    "params.plain": st.sampled_from([0.5, "text", "0.5"]),
    "params.a/b": st.sampled_from(["slash", "x"]),
    "params.x.y": st.sampled_from([3, 3.0, "3"]),
    "tags.team": st.sampled_from(["a", "b", "c", "z"]),
    "tags.note": st.sampled_from(ODD),
    "tags.legacy": st.sampled_from(["yes", "no"]),
    "metrics.acc": st.floats(0, 1).map(lambda v: round(v, 3)),
    "metrics.loss": st.floats(0, 3).map(lambda v: round(v, 2)),
    "status": st.sampled_from(["FINISHED", "FAILED", "KILLED", "RUNNING", RunStatus.FINISHED]),
    "name": st.sampled_from(["run-0", "run-5", "run-11", "nope", "it's"]),
}
OPS = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"]


@st.composite
def conditions(draw: st.DrawFn) -> dict:
    field = draw(st.sampled_from(sorted(FIELDS)))
    op = draw(st.sampled_from(OPS))
    if op == "$exists":
        return {field: {"$exists": draw(st.booleans())}}
    if op in ("$in", "$nin"):
        return {field: {op: draw(st.lists(FIELDS[field], min_size=1, max_size=3))}}
    value = draw(FIELDS[field])
    return {field: value} if op == "$eq" and draw(st.booleans()) else {field: {op: value}}


queries = st.recursive(
    conditions(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda qs: {"$and": qs}),
        st.lists(inner, min_size=1, max_size=3).map(lambda qs: {"$or": qs}),
        st.tuples(inner, inner).map(lambda pair: {**pair[0], **{k: v for k, v in pair[1].items() if k not in pair[0]}}),
    ),
    max_leaves=4,
)
sorts = st.lists(
    st.tuples(
        st.sampled_from(
            ["metrics.acc", "metrics.loss", "params.lr", "name", "status", "params.opt", "start_time", "tags.team"]
        ),
        st.sampled_from([1, -1]),
    ),
    max_size=3,
    unique_by=lambda item: item[0],
)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(query=queries, sort=sorts)
def test_pushdown_local_and_offline_agree(seeded: dict, query: dict, sort: list) -> None:
    online, local, offline = three_answers(seeded, query, sort)
    if sort:
        assert online == local == offline
    else:
        assert sorted(online) == sorted(local) == sorted(offline)


@pytest.mark.parametrize(
    "query",
    [
        {"params.opt": "it's"},
        {"params.opt": 'say "hi"'},
        {"params.opt": "a'b\"c"},
        {"params.opt": "50%_off"},
        {"params.opt": "ünïcode ✓"},
        {"params.opt": ""},
        {"tags.note": "it's"},
        {"params.a/b": "slash"},
        {"params.x.y": 3},
        {"params.data.split": "v2"},
        {"params.plain": 0.5},
        {"params.plain": "text"},
        {"tags.legacy": "yes"},
        {"metrics.acc": {"$gt": 0.5}},
        {"metrics.loss": None},
        {"metrics.acc": {"$exists": False}},
        {"name": "it's"},
        {"status": RunStatus.FAILED},
        {"status": {"$in": ["FAILED", "KILLED"]}},
        {"params.layers": 3},
        {"params.layers": {"$gte": 8}},
        {"params.lr": {"$gt": 0.01}},
        {"$or": [{"tags.team": "a"}, {"metrics.acc": {"$lt": 0.2}}]},
    ],
)
def test_quoting_and_traps(seeded: dict, query: dict) -> None:
    online, local, offline = three_answers(seeded, query, [("name", 1)])
    assert online == local == offline
    if "metrics.acc" not in str(query) and query != {"name": "it's"} and "a'b" not in str(query):
        assert online, f"{query} should match something in the seeded data"


def test_exp_id_in_and_search_across_experiments(seeded: dict) -> None:
    api: MlflowApi = seeded["api"]
    ids = [seeded["exp"].id, seeded["other"].id]
    both = {r.id for r in api.find_runs({"exp.id": {"$in": ids}, "tags.team": "a"})}
    assert len(both) == 13 and {r.exp.id for r in api.find_runs({"id": {"$in": sorted(both)}})} == set(ids)
    assert {r.id for r in api.in_offline_mode.find_runs({"exp.id": {"$in": ids}, "tags.team": "a"})} == both
    assert [r.name for r in api.find_runs({"exp.id": seeded["other"].id})] == ["elsewhere"]


def test_sub_millisecond_times(seeded: dict) -> None:
    run = seeded["runs"][3]
    start = seeded["docs"][run.id]["start_time"]
    just_after = start + timedelta(microseconds=400)
    for query, expected in [
        ({"id": run.id, "start_time": start}, [run.id]),
        ({"id": run.id, "start_time": {"$gte": start}}, [run.id]),
        ({"id": run.id, "start_time": {"$gt": start}}, []),
        ({"id": run.id, "start_time": {"$lt": just_after}}, [run.id]),
        ({"id": run.id, "start_time": {"$gt": start - timedelta(microseconds=300)}}, [run.id]),
        ({"id": run.id, "start_time": {"$gte": just_after}}, []),
    ]:
        assert three_answers(seeded, query, []) == (expected, expected, expected), query


def test_all_finders(seeded: dict, mlflow_server: MlflowServer, tmp_path: Path) -> None:
    api: MlflowApi = seeded["api"]
    exp = seeded["exp"]
    assert [e.id for e in api.find_exps({"name": exp.name})] == [exp.id]
    assert [e.id for e in api.in_offline_mode.find_exps({"name": exp.name})] == [exp.id]
    name = f"find-model-{exp.id}"
    runs = seeded["runs"]
    api.register_model_version(name, runs[0], "model", tags={"stage": "prod"}, aliases=["champion"])
    api.register_model_version(name, runs[1], "model", tags={"stage": "dev"})
    api.set_tags_on_model(name, {"domain": "it's risky"})
    versions = [mv.version for mv in api.find_model_versions({"model.name": name}, [("version", -1)])]
    assert versions == ["2", "1"]
    prod = list(api.find_model_versions({"model.name": name, "tags.stage": "prod"}))
    assert [mv.run.id for mv in prod] == [runs[0].id]
    assert [m.name for m in api.find_models({"tags.domain": "it's risky"})] == [name]
    assert [mv.version for mv in api.find_model_versions({"run.tags.team": "b", "model.name": name})] == ["2"]
    offline = api.in_offline_mode
    assert [m.name for m in offline.find_models({"tags.domain": "it's risky"})] == [name]
    assert [mv.version for mv in offline.find_model_versions({"model.name": name}, [("version", 1)])] == ["1", "2"]
    assert [mv.version for mv in offline.find_model_versions({"aliases": "champion", "model.name": name})] == ["1"]
    with_versions = {r.id for r in api.find_runs_with_model_versions({"exp.id": exp.id})}
    assert with_versions == {runs[0].id, runs[1].id}
    assert api.get_run_by_name(exp, "run-5").name == "run-5"
    assert offline.get_run_by_name(exp, "run-5").name == "run-5"


def test_convenience_artifact_exists(s3_api: MlflowApi, unique: str) -> None:
    run = s3_api.create_exp(f"exists-{unique}").start_run("r")
    s3_api.log_run_artifact(run, lambda p: p.write_text("x"), "dir/file.txt")
    assert s3_api.run_artifact_exists(run, "dir/file.txt") and s3_api.run_artifact_exists(run, "dir")
    assert not s3_api.run_artifact_exists(run, "nope")
    assert s3_api.in_offline_mode.run_artifact_exists(run, "dir/file.txt")


def test_bad_queries_fail_at_call_time(seeded: dict) -> None:
    api: MlflowApi = seeded["api"]
    with pytest.raises(InvalidQuery, match="unknown operator '\\$like'"):
        api.find_runs({"name": {"$like": "x"}})
    with pytest.raises(InvalidQuery, match="sort items"):
        api.in_offline_mode.find_runs({}, [("name", "asc")])
