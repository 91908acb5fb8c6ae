"""MLflow client entities -> the normalized documents mlcache stores (tags and params decoded,
times as ISO strings in UTC, nested entities referred to by id)."""

from __future__ import annotations

from typing import Any

from ...encoding import decode_nested, unflatten
from ...hooks import ExpDoc, LoggedModelDoc, ModelDoc, ModelVersionDoc, RunDoc
from ...timeutil import from_ms


def _iso(ms: int | None) -> str | None:
    when = from_ms(ms)
    return when.isoformat() if when else None


def exp_doc(exp: Any) -> ExpDoc:
    return {
        "id": exp.experiment_id,
        "name": exp.name,
        "tags": decode_nested(exp.tags or {}),
        "artifact_location": exp.artifact_location,
        "lifecycle_stage": exp.lifecycle_stage,
        "creation_time": _iso(exp.creation_time),
        "last_update_time": _iso(exp.last_update_time),
    }


def run_doc(run: Any) -> RunDoc:
    info, data = run.info, run.data
    return {
        "id": info.run_id,
        "name": info.run_name,
        "exp_id": info.experiment_id,
        "status": info.status,
        "start_time": _iso(info.start_time),
        "end_time": _iso(info.end_time),
        "tags": decode_nested(data.tags),
        "params": decode_nested(data.params),
        "metrics": unflatten(data.metrics),
        "repo": info.artifact_uri,
        "parent_run_id": data.tags.get("mlflow.parentRunId"),
        "lifecycle_stage": info.lifecycle_stage,
    }


def model_doc(model: Any) -> ModelDoc:
    return {
        "name": model.name,
        "tags": decode_nested(model.tags or {}),
        "aliases": {alias: str(version) for alias, version in (model.aliases or {}).items()},
        "description": model.description or None,
        "creation_time": _iso(model.creation_timestamp),
        "last_update_time": _iso(model.last_updated_timestamp),
    }


def mv_doc(mv: Any) -> ModelVersionDoc:
    return {
        "model_name": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id or None,
        "source": mv.source,
        "tags": decode_nested(mv.tags or {}),
        "aliases": list(mv.aliases or []),
        "status": mv.status,
        "description": mv.description or None,
        "creation_time": _iso(mv.creation_timestamp),
        "last_update_time": _iso(mv.last_updated_timestamp),
        "model_id": getattr(mv, "model_id", None) or None,
    }


def logged_doc(lm: Any) -> LoggedModelDoc:
    latest: dict[str, Any] = {}
    for metric in sorted(lm.metrics or [], key=lambda m: (m.step, m.timestamp)):
        latest[metric.key] = metric.value
    return {
        "id": lm.model_id,
        "name": lm.name,
        "exp_id": lm.experiment_id,
        "source_run_id": lm.source_run_id or None,
        "artifact_location": lm.artifact_location,
        "status": str(getattr(lm.status, "value", lm.status)),
        "model_type": lm.model_type or None,
        "creation_time": _iso(lm.creation_timestamp),
        "last_update_time": _iso(lm.last_updated_timestamp),
        "tags": decode_nested(lm.tags or {}),
        "params": decode_nested(lm.params or {}),
        "metrics": unflatten(latest),
    }
