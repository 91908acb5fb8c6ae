"""MongoDB semantics of the query layer, where mongoquery alone differs from MongoDB."""

from __future__ import annotations

from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import pytest

from mlcache.entities import RunStatus
from mlcache.query import InvalidQuery, check_sort, compile_query, matches, sort_docs


@pytest.mark.parametrize(
    ("query", "doc", "expected"),
    [
        ({"a": {"$gt": 5}}, {"a": [1, 7]}, True),
        ({"a": {"$gt": 8}}, {"a": [1, 7]}, False),
        ({"a": {"$lte": 1}}, {"a": [1, 7]}, True),
        ({"a": {"$ne": 1}}, {"a": [1, 7]}, False),
        ({"a": {"$ne": 2}}, {"a": [1, 7]}, True),
        ({"a": {"$ne": 1}}, {}, True),
        ({"a": {"$not": {"$regex": "^x"}}}, {"a": ["xa", "b"]}, False),
        ({"a": {"$not": {"$regex": "^x"}}}, {"a": ["ya", "b"]}, True),
        ({"a": {"$regex": "^x"}}, {"a": ["ya", "xb"]}, True),
        ({"a": {"$regex": "^1"}}, {"a": 12}, False),
        ({"a": None}, {}, True),
        ({"a": None}, {"a": None}, True),
        ({"a": None}, {"a": 0}, False),
        ({"a.b": None}, {"a": {"c": 1}}, True),
        ({"a": 1}, {"a": True}, False),
        ({"a": True}, {"a": 1}, False),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": {"$lt": 5}}, {"a": "3"}, False),
        ({"a": {"$gt": "m"}}, {"a": "x"}, True),
        ({"a": {"$in": [None, 3]}}, {}, True),
        ({"a": {"$in": [2, 9]}}, {"a": [1, 2]}, True),
        ({"a": {"$nin": [2, 9]}}, {"a": [1, 2]}, False),
        ({"a": {"$nin": [1]}}, {}, True),
        ({"a": {"$exists": False}}, {}, True),
        ({"status": RunStatus.FINISHED}, {"status": "FINISHED"}, True),
        ({"t": {"$gt": datetime(2026, 1, 1)}}, {"t": datetime(2026, 1, 2, tzinfo=timezone.utc)}, True),
        ({"$or": [{"a": 1}, {"b": 2}]}, {"b": 2}, True),
        ({"$nor": [{"a": 1}, {"b": 2}]}, {"b": 2}, False),
        ({"a": {"$elemMatch": {"$gt": 1, "$lt": 3}}}, {"a": [0, 2]}, True),
        ({"a": {"$all": [1, 2]}}, {"a": [2, 1, 3]}, True),
        ({"a": {"$size": 2}}, {"a": [2, 1]}, True),
    ],
)
def test_mongodb_semantics(query: dict, doc: dict, expected: bool) -> None:
    assert matches(query, doc) is expected


def _read_only(value: Any) -> Any:
    """The same document with every object a read-only mapping, not a dict."""
    if isinstance(value, dict):
        return MappingProxyType({key: _read_only(item) for key, item in value.items()})
    if isinstance(value, list):
        return [_read_only(item) for item in value]
    return value


@pytest.mark.parametrize(
    ("query", "doc", "expected"),
    [
        ({"a.b.c": 1}, {"a": {"b": {"c": 1}}}, True),
        ({"a.b.c": 1}, {"a": {"b": {"c": 2}}}, False),
        ({"a.b.c": None}, {"a": {"b": 5}}, True),
        ({"a.b.c": {"$exists": True}}, {"a": {"b": 5}}, False),
        ({"a.b.c": 1}, {"a": {"b": [{"c": 0}, {"c": 1}]}}, True),
        ({"a.b.1.c": 1}, {"a": {"b": [{"c": 0}, {"c": 1}]}}, True),
        ({"a.b.0.c": 1}, {"a": {"b": [{"c": 0}, {"c": 1}]}}, False),
        ({"a.b": 2}, {"a": [{"b": 1}, {"b": 2}]}, True),
        ({"a.b": {"$exists": False}}, {"a": [{"x": 1}, 3]}, True),
        ({"a.b": "x"}, {"a": {"b": ["y", "x"]}}, True),
        ({"a": "x"}, {"a": "x"}, True),
        ({"a": "x"}, {"a": "y"}, False),
        ({"a.b": {"c": 1}}, {"a": {"b": {"c": 1}}}, True),
    ],
)
def test_dotted_paths_reach_the_same_values_through_dicts_and_other_mappings(
    query: dict, doc: dict, expected: bool
) -> None:
    """Plain dicts take a short walk, other mappings and arrays the general one: both agree."""
    assert matches(query, doc) is expected
    assert matches(query, _read_only(doc)) is expected


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"a": {"$foo": 1}}, "unknown operator '$foo' on field 'a'"),
        ({"$where": "x"}, "unknown or misplaced operator '$where'"),
        ({"$or": {"a": 1}}, "$or needs a non-empty list"),
        ({"$and": []}, "$and needs a non-empty list"),
        ({"a": {"$in": 3}}, "$in on 'a' needs a list"),
        ({"a": {"$exists": "yes"}}, "$exists on 'a' needs true or false"),
        ({"a": {"$not": 3}}, "$not on 'a' needs an operator object"),
        ({"$or": [{"a": {"$bad": 1}}]}, "unknown operator '$bad'"),
        ([("a", 1)], "the query must be an object"),
    ],
)
def test_malformed_queries_fail_at_compile_time(query: object, message: str) -> None:
    with pytest.raises(InvalidQuery) as info:
        compile_query(query)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_sort_follows_mongodb_type_order_with_id_tiebreak() -> None:
    docs = [
        {"id": "e", "m": "text"},
        {"id": "d", "m": 2.5},
        {"id": "c"},
        {"id": "b", "m": None},
        {"id": "a", "m": 2.5},
        {"id": "f", "m": [9, 1]},
    ]
    ascending = sort_docs(docs, [("m", 1)], lambda d: d, lambda d: d["id"])
    assert [d["id"] for d in ascending] == ["b", "c", "f", "a", "d", "e"]
    descending = sort_docs(docs, [("m", -1)], lambda d: d, lambda d: d["id"])
    assert [d["id"] for d in descending] == ["e", "f", "a", "d", "b", "c"]
    two = sort_docs(docs, [("m", 1), ("id", -1)], lambda d: d, lambda d: d["id"])
    assert [d["id"] for d in two] == ["c", "b", "f", "d", "a", "e"]


def test_sort_specs_are_checked() -> None:
    assert check_sort([("a", -1), ["b", 1]]) == [("a", -1), ("b", 1)]
    for bad in ([("a", 0)], [("a",)], ["a"], [(1, 1)]):
        with pytest.raises(InvalidQuery, match="sort items must be"):
            check_sort(bad)  # type: ignore[arg-type]
