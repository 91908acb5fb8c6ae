"""Nested tags/params/metrics for users, flat dotted keys with JSON-encoded values for MLflow.

MLflow stores each tag or param as one string under one key. mlcache shows them as nested dicts:
`{"data": {"split": "v2"}}` is sent as key `data.split` with value `"\\"v2\\""` (JSON). Values that
plain MLflow wrote (not JSON) read back as the plain string, or the number/boolean they spell.
Tags MLflow sets itself (`mlflow.*`) pass through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic_core import to_jsonable_python

MLFLOW_PREFIX = "mlflow."


def is_mlflow_key(key: str) -> bool:
    """Keys MLflow sets itself keep their raw string values."""
    return key.startswith(MLFLOW_PREFIX)


def flatten(nested: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Flatten a nested mapping to dotted keys; empty mappings stay as leaf values."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                key = str(key)
                if not key:
                    raise ValueError(f"empty key under {prefix or 'the top level'!r}")
                walk(f"{prefix}{sep}{key}" if prefix else key, sub)
        else:
            flat[prefix] = value

    for key, value in nested.items():
        if not str(key):
            raise ValueError("empty key at the top level")
        walk(str(key), value)
    return flat


def unflatten(flat: Mapping[str, Any], sep: str = ".") -> dict[str, Any]:
    """Nest dotted keys; a key that collides with a leaf keeps its dotted form at that level."""
    nested: dict[str, Any] = {}
    for key in sorted(flat, key=lambda k: (k.count(sep), k)):
        parts = key.split(sep)
        node = nested
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                node[sep.join(parts[i:])] = flat[key]
                break
            node = child
        else:
            if isinstance(node.get(parts[-1]), dict):
                node[key] = flat[key]
            else:
                node[parts[-1]] = flat[key]
    return nested


def encode_value(key: str, value: Any) -> str:
    """JSON-encode a tag/param value for MLflow (raw strings for `mlflow.*` keys)."""
    if is_mlflow_key(key) and isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=to_jsonable_python)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"value of {key!r} cannot be stored as JSON: {exc}") from exc


def decode_value(key: str, raw: str) -> Any:
    """Decode a value read from MLflow: JSON when it parses, else the plain string."""
    if is_mlflow_key(key):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def encode_flat(nested: Mapping[str, Any]) -> dict[str, str]:
    """Nested user dict -> flat MLflow dict of JSON strings."""
    return {key: encode_value(key, value) for key, value in flatten(nested).items()}


def decode_nested(flat: Mapping[str, str]) -> dict[str, Any]:
    """Flat MLflow dict of strings -> nested user dict of decoded values."""
    return unflatten({key: decode_value(key, value) for key, value in flat.items()})


def flatten_metrics(nested: Mapping[str, Any]) -> dict[str, float]:
    """Nested metrics -> flat dotted keys with float values (metrics are numbers, not JSON)."""
    flat = {}
    for key, value in flatten(nested).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"metric {key!r} must be a number, got {type(value).__name__}")
        flat[key] = float(value)
    return flat
