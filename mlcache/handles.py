"""Handles: entities bound to the api that produced them, offering its methods for that entity.

`run.log_params({...})` is `api.log_params(run, {...})`; a handle is still an immutable entity,
so `reload()` returns a fresh handle rather than changing this one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, PrivateAttr

from .entities import Entity, Experiment, LoggedModel, Model, ModelVersion, Run, RunStatus

if TYPE_CHECKING:
    from .base import BaseMlflowApi

HandleT = TypeVar("HandleT", bound="Handle")


class Handle(BaseModel):
    """Mixin holding the bound api, and what the api worked out about the entity's files."""

    _api: BaseMlflowApi = PrivateAttr()
    _target: Any = PrivateAttr(default=None)

    @property
    def api(self) -> BaseMlflowApi:
        """The api this handle was read through."""
        return self._api


def remembered(handle: Handle) -> Any:
    """What the api remembered on this handle (`remember`), None when nothing; read straight from
    pydantic's private store, since a warm hit is counted in microseconds."""
    private = handle.__pydantic_private__
    return private.get("_target") if private is not None else None


def remember(handle: Handle, value: Any) -> None:
    handle._target = value


def bind(cls: type[HandleT], entity: Entity, api: BaseMlflowApi) -> HandleT:
    """A handle of class `cls` holding the fields of `entity`, bound to `api` (no re-validation).
    When `cls` adds no field, the validated values are taken over as they are, as `model_construct`
    would set them, without its per-field work: a find builds thousands of handles."""
    if not _adds_no_field(cls, type(entity)):
        handle = cls.model_construct(**{name: getattr(entity, name) for name in type(entity).model_fields})
        handle._api = api
        return handle
    handle = cls.__new__(cls)
    object.__setattr__(handle, "__dict__", dict(entity.__dict__))
    object.__setattr__(handle, "__pydantic_fields_set__", set(entity.__pydantic_fields_set__))
    object.__setattr__(handle, "__pydantic_extra__", None)
    object.__setattr__(handle, "__pydantic_private__", {"_api": api, "_target": None})
    return handle


@functools.cache
def _adds_no_field(cls: type[Handle], entity_cls: type[Entity]) -> bool:
    return (
        issubclass(cls, entity_cls)
        and cls.model_fields.keys() == entity_cls.model_fields.keys()
        and set(cls.__private_attributes__) == {"_api", "_target"}
        and cls.model_config.get("extra") != "allow"
    )


class ExpApi(Handle, Experiment):
    """An experiment bound to its api."""

    def reload(self) -> ExpApi:
        return self.api.get_exp(self, force_refresh=True)

    def cache_meta(self) -> ExpApi:
        return self.api.cache_exp_meta(self)

    def export_meta(self, target: Path | str) -> ExpApi:
        return self.api.export_exp_meta(self, target)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.api.set_tags_on_exp(self, tags)

    def create_run(
        self,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: Any = None,
        status: RunStatus | str = RunStatus.RUNNING,
    ) -> RunApi:
        return self.api.create_run(self, name, tags, parent, status)

    def start_run(self, name: str | None = None, tags: Mapping[str, Any] | None = None, parent: Any = None) -> RunApi:
        return self.api.start_run(self, name, tags, parent)


class RunApi(Handle, Run):
    """A run bound to its api; as a context manager it ends FINISHED, or FAILED on an exception."""

    def __enter__(self) -> RunApi:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.api.end_run(self, RunStatus.FAILED if exc_type else RunStatus.FINISHED)

    def reload(self) -> RunApi:
        return self.api.get_run(self, force_refresh=True)

    def cache_meta(self) -> RunApi:
        return self.api.cache_run_meta(self)

    def export_meta(self, target: Path | str) -> RunApi:
        return self.api.export_run_meta(self, target)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.api.set_tags_on_run(self, tags)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.api.log_params(self, params)

    def log_metrics(
        self, metrics: Mapping[str, Any], step: int | None = None, timestamp: datetime | None = None
    ) -> None:
        self.api.log_metrics(self, metrics, step, timestamp)

    def log_batch(
        self,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        step: int | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        self.api.log_batch(self, params, metrics, tags, step, timestamp)

    def end(self, status: RunStatus | str = RunStatus.FINISHED) -> RunApi:
        return self.api.end_run(self, status)

    def resume(self) -> RunApi:
        return self.api.resume_run(self)

    def start_child(self, name: str | None = None, tags: Mapping[str, Any] | None = None) -> RunApi:
        return self.api.start_run(self.exp, name, tags, parent=self)

    def children(self) -> Iterator[RunApi]:
        return self.api.find_child_runs(self)

    def register_model_version(
        self,
        model: Any,
        path_in_run: str,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
        aliases: Iterable[str] = (),
    ) -> ModelVersionApi:
        return self.api.register_model_version(model, self, path_in_run, tags, description, aliases)


class ModelApi(Handle, Model):
    """A registered model bound to its api."""

    def reload(self) -> ModelApi:
        return self.api.get_model(self, force_refresh=True)

    def cache_meta(self) -> ModelApi:
        return self.api.cache_model_meta(self)

    def export_meta(self, target: Path | str) -> ModelApi:
        return self.api.export_model_meta(self, target)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.api.set_tags_on_model(self, tags)

    def get_version(self, version: str | int) -> ModelVersionApi:
        """A version by number (`"3"`, `3`) or alias (`"@champion"`)."""
        return self.api.get_model_version((self.name, version))

    def register_version(
        self,
        run: Any,
        path_in_run: str,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
        aliases: Iterable[str] = (),
    ) -> ModelVersionApi:
        return self.api.register_model_version(self, run, path_in_run, tags, description, aliases)

    def set_alias(self, alias: str, version: str | int) -> None:
        self.api.set_model_alias((self.name, version), alias)


class ModelVersionApi(Handle, ModelVersion):
    """A model version bound to its api."""

    def reload(self) -> ModelVersionApi:
        return self.api.get_model_version(self, force_refresh=True)

    def cache_meta(self) -> ModelVersionApi:
        return self.api.cache_model_version_meta(self)

    def export_meta(self, target: Path | str) -> ModelVersionApi:
        return self.api.export_model_version_meta(self, target)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.api.set_tags_on_model_version(self, tags)

    def set_alias(self, alias: str) -> None:
        self.api.set_model_alias(self, alias)


class LoggedModelApi(Handle, LoggedModel):
    """A logged model (MLflow 3) bound to its api."""

    def reload(self) -> LoggedModelApi:
        return self.api.get_logged_model(self, force_refresh=True)

    def cache_meta(self) -> LoggedModelApi:
        return self.api.cache_logged_model_meta(self)

    def export_meta(self, target: Path | str) -> LoggedModelApi:
        return self.api.export_logged_model_meta(self, target)

    def get_artifact(self) -> Path:
        """Local path of the logged model's files, pulled on a miss."""
        return self.api.get_model_artifact(self)
