"""What reaches MLflow's filter syntax: a superset of the query, quoted safely."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

import pytest

from mlcache.index_sql import LeafCondition, leaves, sql_filter
from mlcache.plugins.mlflow.filters import exps_filter, is_number, model_versions_filter, models_filter, runs_filter
from mlcache.query import compile_query

NAN, INF = float("nan"), float("inf")


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
    assert list(pushed.filter_strings()) == [
        " AND ".join(
            [
                'attributes.run_name = "it\'s"',
                "attributes.status = 'FINISHED'",
                "metrics.`acc` >= 0.5",
                "metrics.`acc` <= 1.0",
                "params.`opt` LIKE '%adam%'",
                "tags.`mlflow.user` = 'bob'",
                "attributes.start_time >= 1767225600123",
                "metrics.`loss` <= 2.0",
                "attributes.run_id IN ('a', 'b')",
            ]
        )
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
    assert list(model_versions_filter({"model.name": "m", "run_id": {"$in": ["r1"]}}).filter_strings()) == [
        "name = 'm' AND run_id IN ('r1')"
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
    assert sorted(leaves(doc)[0]) == [
        ("metrics.acc", 0.5),
        ("params.layers", 32),
        ("params.layers", 64),
        ("params.nested.a", 1),
        ("params.opt", "adam"),
    ]


def spellings(value: Any) -> list[str]:
    """Raw MLflow values that decode to `value`: mlcache's JSON, other encoders' JSON (`\\/` from PHP,
    HTML-safe escapes from Go and .NET), plain strings; numbers in every usual notation."""
    if isinstance(value, str):
        html_safe = {c: f"\\u{ord(c):04x}" for c in "<>&'+`"}
        return [
            json.dumps(value, ensure_ascii=False),
            json.dumps(value),
            json.dumps(value).replace("/", "\\/"),
            json.dumps(value).translate(str.maketrans(html_safe)),
            f' "{value}" ' if '"' not in value and "\\" not in value else json.dumps(value),
            value,
        ]
    out = [json.dumps(value), repr(value), repr(value).upper(), f"{value:.17e}", f"{value:.17E}"]
    if float(value).is_integer():
        out += [str(int(value)), f"{int(value)}.0", f"{int(value)}.000e0", f"{int(value) * 10}e-1"]
    return out


def like(pattern: str, text: str) -> bool:
    """SQL LIKE, case-sensitive (the strictest a backend may be)."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def accepts(clause: str, key: str, raw: str) -> bool:
    """Whether MLflow keeps a run whose param `key` is `raw`, by one pushed clause on that param."""
    head = f"params.`{key}` "
    assert clause.startswith(head), clause
    op, literal = clause[len(head) :].split(" ", 1)
    text = literal[1:-1]
    return like(text, raw) if op == "LIKE" else op == "=" and text == raw


VALUES = ["adam", "a/b", "<b>&c", "ünï ✓", "it's", 'say "hi"', "50%_off", "", "tab\tx", "1e20", 1e20, 10**20, 3, 0.5]


@pytest.mark.parametrize("value", VALUES)
def test_params_are_pushed_only_as_wide_as_every_spelling_of_the_value(value: Any) -> None:
    compiled = compile_query({"params.k": value})
    pushed = runs_filter(compiled._definition).clauses
    for raw in spellings(value):
        for stored in (raw, f"[{raw}, 1]" if raw.strip().startswith(('"', "1", "2", "3", "0")) else raw):
            try:
                decoded = json.loads(stored)
            except ValueError:
                decoded = stored
            if compiled.match({"params": {"k": decoded}}):
                assert all(accepts(clause, "k", stored) for clause in pushed), (value, stored, pushed)


def test_pushed_clauses_of_tags_numbers_and_dotted_keys() -> None:
    assert runs_filter({"params.v": 1e20}).clauses == []
    assert runs_filter({"params.v": 3}).clauses == []
    assert runs_filter({"params.u": "ünï"}).clauses == []
    assert runs_filter({"params.p": "a/b"}).clauses == []
    assert runs_filter({"params.a.b": "x"}).clauses == []
    assert runs_filter({"tags.team": "a b"}).clauses == ["tags.`team` LIKE '%a b%'"]
    assert runs_filter({"tags.mlflow.source.name": "a/ü"}).clauses == ["tags.`mlflow.source.name` = 'a/ü'"]
    assert exps_filter({"tags.a.b": "x", "tags.c": "it's", "tags.d": "a+b"}).clauses == []


def test_metrics_push_finite_numbers_widened_to_inclusive_bounds() -> None:
    assert runs_filter({"metrics.m": {"$gt": 1e20, "$lt": 10**21}, "metrics.n": 3}).clauses == [
        "metrics.`m` >= 1e20",
        "metrics.`m` <= 1e21",
        "metrics.`n` = 3.0",
    ]
    assert runs_filter({"metrics.m": {"$gte": -1.5e-7, "$lte": 2**53 + 1}}).clauses == [
        "metrics.`m` >= -1.5e-07",
        "metrics.`m` <= 9007199254740992.0",
    ]
    for arg in (NAN, INF, -INF, 10**400, True, "3"):
        assert runs_filter({"metrics.m": {"$gt": arg}}).clauses == [], arg
        assert runs_filter({"metrics.m": arg}).clauses == [], arg


def test_a_long_in_list_is_sent_in_disjoint_chunks() -> None:
    ids = [f"r{i:03}" for i in range(250)]
    pushed = runs_filter({"id": {"$in": [*ids, "r000"]}, "status": "FINISHED"})
    chunks = list(pushed.filter_strings())
    assert [chunk.count("'r") for chunk in chunks] == [100, 100, 50]
    assert chunks[2] == f"attributes.status = 'FINISHED' AND attributes.run_id IN ({', '.join(map(repr, ids[200:]))})"
    both = runs_filter({"$and": [{"id": {"$in": ids[:150]}}, {"id": {"$in": ["r149", "r100", "x"]}}]})
    assert list(both.filter_strings()) == ["attributes.run_id IN ('r100', 'r149')"]
    assert list(runs_filter({"id": {"$in": []}}).filter_strings()) == []
    assert list(runs_filter({"id": {"$in": ["a", "b\\c"]}}).filter_strings()) == [""]
    assert runs_filter({"exp.id": {"$in": []}}).exp_ids == set()
    versions = list(model_versions_filter({"run_id": {"$in": ids}}).filter_strings())
    assert [chunk.count("'r") for chunk in versions] == [50] * 5
    assert list(model_versions_filter({"run_id": {"$in": [re.compile("x")]}}).filter_strings()) == [""]


def test_numbers_too_large_for_a_double_are_numbers_but_are_not_pushed() -> None:
    assert is_number(10**400) and is_number(-(10**20)) and not is_number(NAN) and not is_number(True)
    assert runs_filter({"metrics.m": {"$lt": 10**400}}).clauses == []
