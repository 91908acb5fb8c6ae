"""Normalized entity documents, as plugins return them and the metadata store keeps them.

A run's document holds `exp_id` rather than a copy of its experiment, a model version's holds
`model_name` and `run_id`: each fact is stored once and entities are composed on read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .entities import Experiment, LoggedModel, Model, ModelVersion, Run
from .errors import CorruptMetadata

Entity = TypeVar("Entity", bound=BaseModel)


def _validated(cls: type[Entity], data: dict[str, Any], source: Path | None) -> Entity:
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        if source is None:
            raise
        raise CorruptMetadata(source, f"not a valid {cls.__name__}: {exc.errors()[0]['msg']}") from exc


def _replaced(data: dict[str, Any], reference: str, **parts: Any) -> dict[str, Any]:
    """A copy of a document with its reference field (`exp_id`, `model_name`) swapped for the
    composed entities it names."""
    fields = dict(data)
    fields.pop(reference, None)
    fields.update(parts)
    return fields


def exp_from_record(data: dict[str, Any], source: Path | None = None) -> Experiment:
    return _validated(Experiment, data, source)


def run_from_record(data: dict[str, Any], exp: Experiment, source: Path | None = None) -> Run:
    return _validated(Run, _replaced(data, "exp_id", exp=exp), source)


def model_from_record(data: dict[str, Any], source: Path | None = None) -> Model:
    return _validated(Model, data, source)


def mv_from_record(data: dict[str, Any], model: Model, run: Run | None, source: Path | None = None) -> ModelVersion:
    return _validated(ModelVersion, _replaced(data, "model_name", model=model, run=run), source)


def logged_from_record(data: dict[str, Any], exp: Experiment, source: Path | None = None) -> LoggedModel:
    return _validated(LoggedModel, _replaced(data, "exp_id", exp=exp), source)
