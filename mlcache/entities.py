"""Immutable entities (pydantic v2) exchanged between the api, the cache and the plugins."""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RunStatus(str, Enum):
    """Lifecycle status of a run, spelled as MLflow spells it."""

    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"

    @property
    def is_terminal(self) -> bool:
        return self in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)


class Entity(BaseModel):
    """Base of all entities: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_doc(self) -> dict[str, Any]:
        """The JSON document of the entity, as queries and the cache see it."""
        return self.model_dump(mode="json")


class Experiment(Entity):
    """An MLflow experiment."""

    id: str
    name: str
    tags: dict[str, Any] = Field(default_factory=dict)
    artifact_location: str | None = None
    lifecycle_stage: str = "active"
    creation_time: datetime | None = None
    last_update_time: datetime | None = None


class Run(Entity):
    """An MLflow run, with its experiment, nested tags/params/metrics and artifact root (`repo`)."""

    id: str
    name: str | None = None
    exp: Experiment
    status: RunStatus = RunStatus.RUNNING
    start_time: datetime | None = None
    end_time: datetime | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    repo: str | None = None
    parent_run_id: str | None = None
    lifecycle_stage: str = "active"


class Model(Entity):
    """A registered model, with its aliases (alias -> version)."""

    name: str
    tags: dict[str, Any] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    creation_time: datetime | None = None
    last_update_time: datetime | None = None


class ModelVersion(Entity):
    """A version of a registered model; its files are wherever `source` points."""

    model: Model
    version: str
    run_id: str | None = None
    run: Run | None = None
    source: str
    tags: dict[str, Any] = Field(default_factory=dict)
    aliases: list[str] = Field(default_factory=list)
    status: str = "READY"
    description: str | None = None
    creation_time: datetime | None = None
    last_update_time: datetime | None = None
    model_id: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @property
    def logged_model_id(self) -> str | None:
        """The logged model holding the files when the source is one (`models:/m-<id>`, MLflow 3)."""
        match = re.fullmatch(r"models:/(m-[0-9a-f]{32})/?", self.source)
        return match.group(1) if match else None

    @property
    def path_in_run(self) -> str | None:
        """The artifact path inside the run when the source is one (the MLflow 2 way)."""
        if self.run_id and self.source.startswith(f"runs:/{self.run_id}/"):
            return self.source[len(f"runs:/{self.run_id}/") :].strip("/") or None
        repo = self.run.repo if self.run else None
        if repo and self.source.startswith(repo.rstrip("/") + "/"):
            return self.source[len(repo.rstrip("/")) + 1 :].strip("/") or None
        return None


class LoggedModel(Entity):
    """An MLflow 3 logged model (`m-<32 hex>`): its files live under its own artifact location."""

    id: str
    name: str
    exp: Experiment
    source_run_id: str | None = None
    artifact_location: str
    status: str = "READY"
    model_type: str | None = None
    creation_time: datetime | None = None
    last_update_time: datetime | None = None
    tags: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
