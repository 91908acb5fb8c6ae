"""Nested tags/params <-> MLflow's flat string values."""

from __future__ import annotations

import datetime as dt

import pytest

from mlcache.encoding import decode_nested, decode_value, encode_flat, flatten, flatten_metrics, unflatten


def test_nested_values_are_flattened_to_dotted_keys_with_json_values() -> None:
    flat = encode_flat({"data": {"split": "v2", "rows": 10}, "lr": 0.01, "ok": True, "layers": [64, 32]})
    assert flat == {"data.split": '"v2"', "data.rows": "10", "lr": "0.01", "ok": "true", "layers": "[64, 32]"}


def test_strings_are_json_encoded_without_ascii_escaping() -> None:
    assert encode_flat({"name": "héllo 'x'"}) == {"name": "\"héllo 'x'\""}


def test_mlflow_tags_pass_through_untouched() -> None:
    assert encode_flat({"mlflow.note.content": "plain"}) == {"mlflow.note.content": "plain"}
    assert decode_nested({"mlflow.runName": "123"}) == {"mlflow": {"runName": "123"}}


def test_round_trip_of_nested_values() -> None:
    value = {"a": {"b": {"c": "x"}, "d": [1, 2]}, "e": None, "f": 1.5}
    assert decode_nested(encode_flat(value)) == value


def test_plain_mlflow_values_read_back_as_string_or_number() -> None:
    assert decode_value("team", "a") == "a"
    assert decode_value("lr", "0.01") == 0.01
    assert decode_value("epochs", "10") == 10
    assert decode_value("code", "007") == "007"
    assert decode_value("note", "it's fine") == "it's fine"


def test_unflatten_keeps_a_key_that_collides_with_a_leaf() -> None:
    assert unflatten({"a": 1, "a.b": 2}) == {"a": 1, "a.b": 2}
    assert unflatten({"a.b": 2, "a": 1}) == {"a": 1, "a.b": 2}


def test_empty_mapping_is_a_leaf_and_empty_keys_are_refused() -> None:
    assert flatten({"a": {}}) == {"a": {}}
    with pytest.raises(ValueError, match="empty key"):
        flatten({"a": {"": 1}})


def test_non_json_values_use_their_json_form_and_unserialisable_ones_fail_clearly() -> None:
    assert encode_flat({"when": dt.date(2026, 1, 2)}) == {"when": '"2026-01-02"'}
    with pytest.raises(ValueError, match="'obj' cannot be stored as JSON"):
        encode_flat({"obj": object()})


def test_metrics_must_be_numbers() -> None:
    assert flatten_metrics({"val": {"acc": 1}}) == {"val.acc": 1.0}
    with pytest.raises(ValueError, match="metric 'acc' must be a number, got str"):
        flatten_metrics({"acc": "high"})
    with pytest.raises(ValueError, match="metric 'ok' must be a number, got bool"):
        flatten_metrics({"ok": True})
