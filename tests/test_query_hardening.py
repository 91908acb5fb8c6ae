"""The query layer against hostile or unlucky input: regular expressions that backtrack, deep
nesting, malformed arguments, numbers as JSON documents hold them, and long `$in` lists online."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from mlcache.plugins.mlflow import MlflowApi
from mlcache.plugins.mlflow.rest import RestReader
from mlcache.query import InvalidQuery, compile_query, matches, sort_docs

from servers import MlflowServer

NAN, INF = float("nan"), float("inf")
MISSING_FIELD = object()


def invalid(query: Any) -> str:
    """The message of the InvalidQuery that compiling `query` raises."""
    with pytest.raises(InvalidQuery) as info:
        compile_query(query)
    return str(info.value)


# ----------------------------------------------------------------------------- regular expressions
def test_a_backtracking_pattern_matches_in_linear_time() -> None:
    compiled = compile_query({"name": {"$regex": "(a+)+$"}})
    started = time.perf_counter()
    assert compiled.match({"name": "a" * 25 + "!"}) is False
    assert time.perf_counter() - started < 1.0, "a backtracking engine takes seconds here, and hours on what follows"
    assert compiled.match({"name": "a" * 30 + "!"}) is False
    assert compiled.match({"name": "a" * 100_000 + "!"}) is False
    assert compiled.match({"name": "a" * 30}) is True
    assert time.perf_counter() - started < 1.0


def test_patterns_re2_cannot_run_fail_at_compile_time_saying_why() -> None:
    assert invalid({"name": {"$regex": "(a)\\1"}}) == (
        "$regex '(a)\\\\1' on 'name' is not a pattern RE2 accepts (invalid escape sequence: \\1); mlcache matches "
        "with RE2 so that no pattern can take exponential time, and RE2 has no backreferences (\\1), lookaround "
        "((?=...), (?!...), (?<=...), (?<!...)) or \\Z (use \\z): rewrite the pattern without them, or filter the "
        "results in Python"
    )
    assert "(invalid perl operator: (?=)" in invalid({"name": {"$regex": "a(?=b)"}})
    assert "(invalid perl operator: (?<!)" in invalid({"name": {"$regex": "(?<!a)b"}})
    assert "(missing ): ()" in invalid({"name": {"$regex": "("}})
    assert "(invalid perl operator: (?=)" in invalid({"name": {"$not": re.compile("(?=x)")}})
    assert "(invalid escape sequence: \\1)" in invalid({"name": {"$in": [re.compile(r"(x)\1")]}})
    assert invalid({"name": {"$regex": 3}}) == "$regex on 'name' needs a string pattern, got 3"


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"$regex": "^ab"}, "ABc", False),
        ({"$regex": "^ab", "$options": "i"}, "ABc", True),
        ({"$options": "i", "$regex": "^ab"}, "ABc", True),
        ({"$regex": "^b$"}, "a\nb\nc", False),
        ({"$regex": "^b$", "$options": "m"}, "a\nb\nc", True),
        ({"$regex": "a.b"}, "a\nb", False),
        ({"$regex": "a.b", "$options": "s"}, "a\nb", True),
        ({"$regex": "a b # a comment\n c", "$options": "x"}, "abc", True),
        ({"$regex": "a b # a comment\n c", "$options": "x"}, "a b c", False),
        ({"$regex": "a\\ b[ ]c\\Q d\\E", "$options": "x"}, "a b c d", True),
        ({"$regex": "^A B$", "$options": "xim"}, "x\nab", True),
        ({"$regex": re.compile("^ab", re.IGNORECASE)}, "ABc", True),
        ({"$regex": re.compile("^ab"), "$options": "i"}, "ABc", True),
        ({"$regex": re.compile("a  b", re.VERBOSE)}, "ab", True),
        ({"$not": re.compile("^x")}, "xy", False),
        ({"$not": re.compile("^x")}, "yx", True),
        ({"$not": {"$regex": "^X", "$options": "i"}}, "xy", False),
        ({"$in": [re.compile("^x"), "yy"]}, "xz", True),
        ({"$in": [re.compile("^x"), "yy"]}, "yy", True),
        ({"$nin": [re.compile("^x")]}, "xz", False),
        ({"$regex": "é.$"}, "café✓", True),
        ({"$regex": "x"}, "\ud800x", True),
    ],
)
def test_regex_options_and_python_patterns(spec: dict, value: str, expected: bool) -> None:
    assert matches({"a": spec}, {"a": value}) is expected


def test_a_python_pattern_as_the_value_is_a_regex() -> None:
    assert matches({"a": re.compile("^x")}, {"a": ["ya", "xb"]}) is True
    assert matches({"a": re.compile("^x")}, {"a": "ya"}) is False
    assert (
        compile_query({"a": re.compile("^x", re.I)})._definition
        == compile_query({"a": {"$regex": "^x", "$options": "i"}})._definition
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            {"a": {"$regex": "x", "$options": "ig"}},
            "$options on 'a' has unknown option 'g'; MongoDB's options are i (ignore case), m (^ and $ at line "
            "breaks), s (. matches newlines) and x (ignore whitespace)",
        ),
        ({"a": {"$regex": "x", "$options": 1}}, "$options on 'a' needs a string of option letters (i, m, s, x), got 1"),
        (
            {"a": {"$options": "i"}},
            "$options on 'a' needs a $regex beside it, as in {'$regex': 'x', '$options': 'i'}",
        ),
        ({"a": re.compile(b"x")}, "the regular expression on 'a' must be a str pattern, got re.compile(b'x')"),
        (
            {"a": {"$eq": re.compile("x")}},
            "$eq on 'a' cannot hold a regular expression; use {'$regex': pattern} or $in",
        ),
    ],
)
def test_malformed_regex_arguments(query: dict, message: str) -> None:
    assert invalid(query) == message


# ----------------------------------------------------------------------------- nesting depth
def nested_and(levels: int) -> dict:
    query: dict = {"a": 1}
    for _ in range(levels):
        query = {"$and": [query]}
    return query


def test_deep_nesting_is_refused_before_anything_recursive_runs() -> None:
    message = (
        "the query nests deeper than 64 levels (objects, lists and each part of a dotted field name count one); "
        "flatten it, e.g. merge nested $and/$or into one list or use $in"
    )
    assert invalid(nested_and(500)) == message
    assert invalid(nested_and(32)) == message
    assert matches(nested_and(31), {"a": 1}) is True
    assert invalid({".".join(["p"] * 100): 1}) == message
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert invalid({"a": {"$in": deep}}) == message
    looped: dict = {}
    looped["$and"] = [looped]
    assert invalid(looped) == message


# ----------------------------------------------------------------------------- malformed arguments
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"$mod": [0, 1]}, "$mod on 'a' needs [divisor, remainder]: two finite numbers, the divisor not 0"),
        ({"$mod": [0.5, 0]}, "$mod on 'a' needs [divisor, remainder]"),
        ({"$mod": [2]}, "$mod on 'a' needs [divisor, remainder]"),
        ({"$mod": [2, "1"]}, "$mod on 'a' needs [divisor, remainder]"),
        ({"$mod": [True, 0]}, "$mod on 'a' needs [divisor, remainder]"),
        ({"$mod": [NAN, 0]}, "$mod on 'a' needs [divisor, remainder]"),
        ({"$mod": 2}, "$mod on 'a' needs [divisor, remainder]"),
        ({"$size": -1}, "$size on 'a' needs a non-negative integer, got -1"),
        ({"$size": 1.5}, "$size on 'a' needs a non-negative integer, got 1.5"),
        ({"$size": "2"}, "$size on 'a' needs a non-negative integer, got '2'"),
        ({"$size": True}, "$size on 'a' needs a non-negative integer, got True"),
        ({"$size": {"$gt": 1}}, "$size on 'a' needs a non-negative integer, got {'$gt': 1}"),
        ({"$type": "nope"}, "$type on 'a' needs MongoDB type names or numbers (e.g. 'string', 'number'"),
        ({"$type": 99}, "$type on 'a' needs MongoDB type names or numbers"),
        ({"$type": True}, "$type on 'a' needs MongoDB type names or numbers"),
        ({"$type": []}, "$type on 'a' needs MongoDB type names or numbers"),
        ({"$all": 3}, "$all on 'a' needs a list, got 3"),
        ({"$all": [{"$gt": 1}]}, "$all on 'a' cannot hold the operator object {'$gt': 1}"),
        ({"$elemMatch": 3}, "$elemMatch on 'a' needs an object (operators or a query), got 3"),
        ({"$exists": 1}, "$exists on 'a' needs true or false, got 1"),
        ({"$in": "ab"}, "$in on 'a' needs a list, got 'ab'"),
        ({"$nin": 3}, "$nin on 'a' needs a list, got 3"),
        ({"$in": [{"$gt": 1}]}, "$in on 'a' cannot hold the operator object {'$gt': 1}; use $or"),
        ({"$not": {}}, "$not on 'a' needs an operator object or a regular expression, got {}"),
        ({"$gt": {1, 2}}, "$gt on 'a' cannot compare with set {1, 2}; use null, booleans, numbers, strings"),
        ({"$eq": b"x"}, "$eq on 'a' cannot compare with bytes b'x'"),
        ({"$lt": date(2026, 1, 1)}, "$lt on 'a' cannot compare with date datetime.date(2026, 1, 1)"),
        ({"$gte": Decimal("1.5")}, "$gte on 'a' cannot compare with Decimal Decimal('1.5')"),
        ({"$in": [object]}, "$in on 'a' cannot compare with type <class 'object'>"),
        ({"$eq": {"$gt": 1}}, "$eq on 'a' holds an object with the key '$gt', which no document has"),
        ({"$ne": [{1: 2}]}, "$ne on 'a' holds an object with the key 1, which no document has"),
    ],
)
def test_malformed_arguments_fail_at_compile_time(spec: dict, message: str) -> None:
    assert invalid({"a": spec}).startswith(message)


def test_a_bare_value_of_an_unknown_type_fails_at_compile_time() -> None:
    assert invalid({"a": {1, 2}}).startswith("the value of 'a' cannot compare with set {1, 2}")
    assert invalid({"$or": [{"a": [b"x"]}]}).startswith("the value of 'a' cannot compare with bytes b'x'")


@pytest.mark.parametrize(
    ("query", "doc", "expected"),
    [
        ({"a.b": {"$exists": True}}, {"a": "xyz"}, False),
        ({"a.b": {"$exists": False}}, {"a": "xyz"}, True),
        ({"a.b": {"$exists": True, "$gt": 5}}, {"a": {"b": 1}}, False),
        ({"a.b": {"$exists": True}}, {"a": [{"c": 1}, {"b": None}]}, True),
        ({"a": {"$elemMatch": {"b": {"$exists": True}}}}, {"a": [1, {"b": 1}]}, True),
        ({"a": {"$elemMatch": {"b": 1}}}, {"a": "b"}, False),
        ({"a": {"$elemMatch": {"$gt": 1}}}, {"a": "xyz"}, False),
        ({"a": {"$mod": [2, 1]}}, {"a": "x"}, False),
        ({"a": {"$mod": [2, 1]}}, {"a": [2, 3]}, True),
        ({"a": {"$mod": [2, 1]}}, {"a": INF}, False),
        ({"a": {"$size": 1}}, {"a": 5}, False),
        ({"a": {"$size": 2.0}}, {"a": [1, 2]}, True),
        ({"a": {"$type": "array"}}, {"a": "str"}, False),
        ({"a": {"$type": "array"}}, {"a": []}, True),
        ({"a": {"$type": "number"}}, {"a": [True, "x"]}, False),
        ({"a": {"$type": ["string", 1]}}, {"a": [True, 2.5]}, True),
        ({"a": {"$type": "int"}}, {"a": 2**31}, False),
        ({"a": {"$type": "long"}}, {"a": 10**20}, True),
        ({"a": {"$type": 2}}, {"a": "s"}, True),
        ({"a": {"$type": "null"}}, {}, False),
        ({"a": {"$all": []}}, {"a": [1]}, False),
        ({"a": {"$all": [{"$elemMatch": {"$gt": 2}}, 1]}}, {"a": [1, 3]}, True),
        ({"a.b": 1}, {"a": [{"b": [1]}]}, True),
        ({"a.1": 7}, {"a": [1, 7]}, True),
        ({"a": [True]}, {"a": [1]}, False),
        ({"a": {"$gte": None}}, {}, True),
        ({"a": {"$gt": None}}, {"a": None}, False),
        ({"a": 1}, {"a": [[[[[[1]]]]]]}, False),
    ],
)
def test_valid_queries_on_unlucky_documents(query: dict, doc: dict, expected: bool) -> None:
    assert matches(query, doc) is expected


def test_sorting_deeply_nested_values_does_not_exhaust_the_stack() -> None:
    deep: list = [1]
    for _ in range(5000):
        deep = [deep, 0]
    docs = [{"id": "a", "m": [deep]}, {"id": "b", "m": [[deep, 0]]}, {"id": "c", "m": {"x": deep}}]
    assert [d["id"] for d in sort_docs(docs, [("m", 1)], lambda d: d, lambda d: d["id"])] == ["c", "a", "b"]


# ----------------------------------------------------------------------------- numbers
@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        (10**20, 1e20, True),
        (10**20 + 1, 1e20, False),
        ({"$gt": 10**20}, 1e20, False),
        ({"$gte": 10**20}, 1e20, True),
        ({"$lt": 2**53 + 1}, 2.0**53, True),
        ({"$gt": 2**53}, 2**53 + 1, True),
        ({"$in": [10**20 + 1]}, 10**20, False),
        ({"$gt": 10**400}, INF, True),
        ({"$lt": -(10**400)}, -INF, True),
        (INF, INF, True),
        ({"$gt": 1.5}, INF, True),
        ({"$eq": NAN}, NAN, True),
        ({"$in": [1, NAN]}, NAN, True),
        ({"$ne": NAN}, NAN, False),
        ({"$nin": [NAN]}, NAN, False),
        ({"$gte": NAN}, NAN, True),
        ({"$lte": NAN}, NAN, True),
        ({"$gt": NAN}, NAN, False),
        ({"$lt": NAN}, NAN, False),
        ({"$gte": NAN}, 1, False),
        ({"$lte": NAN}, INF, False),
        ({"$gt": 1}, NAN, False),
        ({"$lt": 1}, NAN, False),
        ({"$gte": -INF}, NAN, False),
        ({"$ne": 1}, NAN, True),
        (NAN, 1, False),
        (NAN, [1, NAN], True),
        ([NAN], [NAN], True),
        ({"x": NAN}, {"x": NAN}, True),
        ({"$mod": [3, 1]}, 10**20, True),
        ({"$mod": [3, 1]}, 1e20, True),
        ({"$mod": [3, -2]}, -5, True),
        ({"$mod": [3.9, 2.5]}, 8.7, True),
        (1, True, False),
        ({"$gte": 0}, False, False),
    ],
)
def test_numbers_compare_as_mongodb_compares_them(condition: Any, value: Any, expected: bool) -> None:
    assert matches({"v": condition}, {"v": value}) is expected


def test_numbers_from_json_documents() -> None:
    doc = json.loads('{"big": 100000000000000000000, "nan": NaN, "inf": Infinity, "ninf": -Infinity}')
    assert matches({"big": 1e20, "nan": NAN, "inf": {"$gt": 1e308}, "ninf": {"$lt": -1e308}}, doc) is True
    assert matches({"big": {"$gt": 99999999999999999999}}, doc) is True
    assert matches({"nan": {"$gte": -INF}}, doc) is False


def test_sorting_numbers_nan_first_exact_across_int_and_float() -> None:
    values = {"a": 3, "b": NAN, "c": -INF, "d": INF, "e": 10**20, "f": 1e20, "g": "s", "h": None, "j": NAN}
    values |= {"k": 2**53 + 1, "l": 2.0**53, "m": [NAN, 5], "n": -0.0, "o": 0}
    docs = [{"id": key, "v": value} for key, value in values.items()] + [{"id": "i"}]
    ascending = [d["id"] for d in sort_docs(docs, [("v", 1)], lambda d: d, lambda d: d["id"])]
    assert ascending == ["h", "i", "b", "j", "m", "c", "n", "o", "a", "l", "k", "e", "f", "d", "g"]
    descending = [d["id"] for d in sort_docs(docs, [("v", -1)], lambda d: d, lambda d: d["id"])]
    assert descending == ["g", "d", "e", "f", "k", "l", "m", "a", "n", "o", "c", "b", "j", "h", "i"]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([10**20, 2**53 + 1, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True, width=16),
    st.sampled_from(["a", "b", "ab", ""]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from("xy"), scalars, max_size=2))


@settings(max_examples=400, deadline=None)
@given(choices=st.lists(values, max_size=4), value=st.one_of(values, st.just(MISSING_FIELD)))
def test_in_is_equality_with_any_of_its_values(choices: list, value: Any) -> None:
    doc = {} if value is MISSING_FIELD else {"a": value}
    expected = any(matches({"a": {"$eq": choice}}, doc) for choice in choices)
    assert matches({"a": {"$in": choices}}, doc) is expected
    assert matches({"a": {"$nin": choices}}, doc) is not expected


def test_a_long_in_list_costs_one_lookup_per_value() -> None:
    ids = [uuid.uuid4().hex for _ in range(100_000)]
    compiled = compile_query({"id": {"$in": [*ids, re.compile("^z")]}})
    started = time.perf_counter()
    assert sum(compiled.match({"id": ids[i * 97]}) for i in range(100)) == 100
    assert sum(compiled.match({"id": f"x{i}"}) for i in range(100)) == 0
    assert time.perf_counter() - started < 1.0
    assert compiled.match({"id": ["q", "zz"]}) is True


# ----------------------------------------------------------------------------- against a real server
def test_numbers_and_escaped_strings_are_found_online_in_any_spelling(
    mlflow_server: MlflowServer, api: MlflowApi, unique: str
) -> None:
    exp = api.create_exp(f"spellings-{unique}")
    client = MlflowClient(mlflow_server.url)
    mine = api.create_run(exp, "mine")
    mine.log_params({"v": 1e20, "p": "a/b", "u": "ünï"})
    spelled = {}
    for spelling in ("1E20", "100000000000000000000", "1e+20", "100000000000000000000.0"):
        run = api.create_run(exp, spelling)
        client.log_param(run.id, "v", spelling)
        spelled[spelling] = run.id
    escaped = api.create_run(exp, "escaped")
    client.log_param(escaped.id, "p", '"a\\/b"')
    client.log_param(escaped.id, "u", json.dumps("ünï"))
    client.log_param(escaped.id, "v", json.dumps(1e20))
    other = api.create_run(exp, "other")
    client.log_param(other.id, "v", "1e21")
    client.log_metric(other.id, "m", 1e20)
    client.log_metric(mine.id, "m", 2e20)

    def found(query: dict) -> list[str]:
        return sorted(r.id for r in api.find_runs(query, exp=exp))

    assert found({"params.v": 1e20}) == sorted([mine.id, escaped.id, *spelled.values()])
    assert found({"params.v": 10**20}) == sorted([mine.id, escaped.id, *spelled.values()])
    assert found({"params.p": "a/b"}) == sorted([mine.id, escaped.id])
    assert found({"params.u": "ünï"}) == sorted([mine.id, escaped.id])
    assert found({"metrics.m": {"$gt": 1e20}}) == [mine.id]
    assert found({"metrics.m": {"$lte": 1e20}}) == [other.id]
    assert found({"metrics.m": {"$gte": NAN}}) == []


def test_a_long_in_list_is_searched_in_chunks(api: MlflowApi, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = api.create_exp(f"long-in-{unique}")
    real = [api.create_run(exp, f"r{i}") for i in range(3)]
    api.create_run(exp, "not asked for")
    model = f"long-in-{unique}"
    api.register_model_version(model, real[0], "model")
    api.register_model_version(model, real[2], "model")
    made_up = [uuid.uuid4().hex for _ in range(1997)]
    ids = [*made_up[:700], real[0].id, *made_up[700:1500], real[1].id, real[2].id, *made_up[1500:]]
    sent: list[tuple[str, int]] = []

    def spy(name: str, filter_at: int) -> None:
        search = getattr(api.client, name)

        def recording(*args: Any, **kwargs: Any) -> Any:
            sent.append((name, args[filter_at].count("', '") + 1))
            return search(*args, **kwargs)

        monkeypatch.setattr(api.client, name, recording)

    real_request = RestReader.request

    def recording_request(reader: RestReader, method: str, endpoint: str, payload: dict, *rest: Any) -> Any:
        if endpoint == "runs/search":
            sent.append(("search_runs", payload["filter"].count("', '") + 1))
        return real_request(reader, method, endpoint, payload, *rest)

    monkeypatch.setattr(RestReader, "request", recording_request)
    spy("search_model_versions", 0)
    expected = sorted(r.id for r in real)
    assert sorted(r.id for r in api.find_runs({"id": {"$in": ids}})) == expected
    assert sent == [("search_runs", 100)] * 20
    assert sorted(r.id for r in api.find_runs({"id": {"$in": ids}}, exp=exp)) == expected
    assert [r.id for r in api.find_runs({"id": {"$in": ids}}, [("name", -1)])] == [r.id for r in real[::-1]]
    sent.clear()
    assert list(api.find_runs({"id": {"$in": []}})) == []
    assert sent == []
    versions = api.find_model_versions({"run_id": {"$in": ids}, "model.name": model}, [("version", 1)])
    assert [(mv.version, mv.run_id) for mv in versions] == [("1", real[0].id), ("2", real[2].id)]
    assert sent == [("search_model_versions", 50)] * 40
