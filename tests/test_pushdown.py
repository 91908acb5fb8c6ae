"""What reaches MLflow's filter syntax: a superset of the query, quoted safely."""

from __future__ import annotations

from datetime import datetime, timezone

from mlcache.index import LeafCondition, leaves, sql_filter
from mlcache.pushdown import exps_filter, model_versions_filter, models_filter, runs_filter


def test_runs_filter_pushes_what_mlflow_can_express() -> None:
    pushed = runs_filter(
        {
            "exp.id": {"$in": ["1", "2"]},
            "id": {"$in": ["a", "b"]},
            "name": "it's",
            "status": "FINISHED",
            "metrics.acc": {"$gt": 0.5, "$lte": 1},
            "params.opt": "adam",
            "params.lr": 3,
            "tags.mlflow.user": "bob",
            "start_time": {"$gt": datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)},
            "$or": [{"tags.team": "a"}, {"tags.team": "b"}],
            "$and": [{"metrics.loss": {"$lt": 2}}],
        }
    )
    assert pushed.exp_ids == {"1", "2"}
    assert pushed.clauses == [
        "attributes.run_id IN ('a', 'b')",
        'attributes.run_name = "it\'s"',
        "attributes.status = 'FINISHED'",
        "metrics.`acc` > 0.5",
        "metrics.`acc` <= 1",
        "params.`opt` LIKE '%adam%'",
        "params.`lr` LIKE '%3%'",
        "tags.`mlflow.user` = 'bob'",
        "attributes.start_time >= 1767225600123",
        "metrics.`loss` < 2",
    ]


def test_what_cannot_be_expressed_exactly_is_widened_or_left_local() -> None:
    assert runs_filter({"params.opt": 'a"b'}).clauses == []
    assert runs_filter({"params.opt": "a'b\"c"}).clauses == []
    assert runs_filter({"params.opt": "back\\slash"}).clauses == []
    assert runs_filter({"params.`odd": "x"}).clauses == []
    assert runs_filter({"params.lr": 0.5}).clauses == []
    assert runs_filter({"params.ok": True}).clauses == []
    assert runs_filter({"params.a": {"$exists": True}}).clauses == []
    assert runs_filter({"metrics.acc": {"$ne": 1}}).clauses == []
    assert runs_filter({"status": {"$in": ["FAILED"]}}).clauses == []
    assert runs_filter({"start_time": {"$lt": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc)}}).clauses == [
        "attributes.start_time <= 1767225600001"
    ]
    assert runs_filter({"exp.id": "1", "$and": [{"exp.id": "2"}]}).exp_ids == set()


def test_other_entities() -> None:
    assert exps_filter({"name": "e", "tags.team": "a"}).clauses == ["name = 'e'", "tags.`team` LIKE '%a%'"]
    assert models_filter({"name": "m"}).filter_string == "name = 'm'"
    assert model_versions_filter({"model.name": "m", "run_id": {"$in": ["r1"]}}).clauses == [
        "name = 'm'",
        "run_id IN ('r1')",
    ]


def test_sql_filter_on_cached_records() -> None:
    flt = sql_filter(
        {
            "exp.id": "1",
            "params.lr": {"$gt": 0.1},
            "name": {"$in": ["a"]},
            "tags.t": {"$in": ["x", 2]},
            "params.ok": True,
            "start_time": {"$gt": "2026"},
        },
        {"exp.id": "exp_id"},
    )
    assert flt.clauses == ["exp_id IN (?)", "name IN (?)"]
    assert flt.params == ["1", "a"]
    assert flt.conditions == [LeafCondition("params.lr", ">", (0.1,)), LeafCondition("tags.t", "IN", ("x", 2))]


def test_leaves_follow_mongodb_array_matching() -> None:
    doc = {"params": {"layers": [64, 32], "opt": "adam", "ok": True, "nested": [{"a": 1}]}, "metrics": {"acc": 0.5}}
    assert sorted(leaves(doc)) == [
        ("metrics.acc", 0.5),
        ("params.layers", 32),
        ("params.layers", 64),
        ("params.nested.a", 1),
        ("params.opt", "adam"),
    ]
