"""The plugin contract: every hook a backend implements, declared once, all abstract.

A plugin subclasses `BaseMlflowApi` and implements every `_impl_*` hook below; a plugin missing
any of them fails at instantiation with a `TypeError` naming them. Hooks only speak the backend's
protocol: they never touch the cache, never retry (the base applies the `RetryPolicy` of each
hook's operation, `HOOK_OPERATIONS`, within the call's deadline) and never decide between cache and
network.

Documents. Hooks exchange plain JSON documents, the shapes below: times are ISO 8601 strings in
UTC (or None), tags and params are nested dicts of decoded values (see `encoding.decode_nested`),
metrics nested dicts of numbers, and an entity refers to another by id (`exp_id`, `run_id`,
`model_name`), never by copy. Fields a backend does not know are None (or empty).

Errors. A missing entity is `EntityNotFound`; a create whose name is taken is `EntityExists`; a
backend that cannot be reached (refused, silent, unresolvable) is `ServerUnreachable`; any other
refusal is `BackendError`, with the HTTP status when there is one (5xx and 429 are retried).

Creates return the document of what they created. Searches return one page at a time: the base
asks for the next page (passing back the token) only when the caller wants more, and retries each
page by itself. A search may return a superset of the matches (the base applies the full query).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar

from .entities import RunStatus
from .transfer import Transfer

DocT = TypeVar("DocT")


class ExpDoc(TypedDict, total=False):
    """An experiment: `id` and `name` always; `artifact_location` is the root of its runs' and
    logged models' files; `lifecycle_stage` is `active` or `deleted`."""

    id: str
    name: str
    tags: dict[str, Any]
    artifact_location: str | None
    lifecycle_stage: str
    creation_time: str | None
    last_update_time: str | None


class RunDoc(TypedDict, total=False):
    """A run: `id` and `exp_id` always; `status` as MLflow spells it; `repo` is the root URL of its
    artifacts (inside its experiment's artifact location); `parent_run_id` for nested runs."""

    id: str
    name: str | None
    exp_id: str
    status: str
    start_time: str | None
    end_time: str | None
    tags: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]
    repo: str | None
    parent_run_id: str | None
    lifecycle_stage: str


class ModelDoc(TypedDict, total=False):
    """A registered model: `name` always; `aliases` maps each alias to its version (a string)."""

    name: str
    tags: dict[str, Any]
    aliases: dict[str, str]
    description: str | None
    creation_time: str | None
    last_update_time: str | None


class ModelVersionDoc(TypedDict, total=False):
    """A model version: `model_name` and `version` (digits, a string) always; `source` is where its
    files are (a path under its run's `repo`, another URL, or `models:/m-<id>` for a logged model);
    `aliases` lists the aliases that point at it."""

    model_name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, Any]
    aliases: list[str]
    status: str
    description: str | None
    creation_time: str | None
    last_update_time: str | None
    model_id: str | None


class LoggedModelDoc(TypedDict, total=False):
    """An MLflow 3 logged model: `id` (`m-<32 hex>`), `name`, `exp_id` and `artifact_location`
    (inside its experiment's artifact location) always; `metrics` holds each metric's latest value."""

    id: str
    name: str
    exp_id: str
    source_run_id: str | None
    artifact_location: str
    status: str
    model_type: str | None
    creation_time: str | None
    last_update_time: str | None
    tags: dict[str, Any]
    params: dict[str, Any]
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Page(Generic[DocT]):
    """One page of a search: its documents and the token of the next page (None: the last one)."""

    items: list[DocT] = field(default_factory=list)
    next_token: str | None = None


MetricRow = tuple[str, float, int, int]
"""One metric point: key, value, timestamp (epoch ms), step."""

HOOK_OPERATIONS = {
    "_impl_fetch_exp": "get",
    "_impl_fetch_exp_by_name": "get",
    "_impl_fetch_run": "get",
    "_impl_fetch_model": "get",
    "_impl_fetch_model_version": "get",
    "_impl_fetch_model_version_by_alias": "get",
    "_impl_fetch_logged_model": "get",
    "_impl_search_exps": "search",
    "_impl_search_runs": "search",
    "_impl_search_logged_models": "search",
    "_impl_search_models": "search",
    "_impl_search_model_versions": "search",
    "_impl_create_exp": "create",
    "_impl_set_exp_tags": "update",
    "_impl_rename_exp": "update",
    "_impl_delete_exp": "delete",
    "_impl_restore_exp": "update",
    "_impl_create_run": "create",
    "_impl_update_run": "update",
    "_impl_log_batch": "log",
    "_impl_create_model": "create",
    "_impl_set_model_tags": "update",
    "_impl_create_model_version": "register",
    "_impl_set_model_version_tags": "update",
    "_impl_set_model_alias": "register",
}
"""The retry operation of each backend call (see `RetryPolicy`)."""


class PluginHooks(ABC):
    """Every hook of a backend. All abstract: implement them all (the offline plugin answers each
    with `OfflineModeError`)."""

    # ----------------------------------------------------------------- reads
    @abstractmethod
    def _impl_fetch_exp(self, exp_id: str) -> ExpDoc:
        """The experiment with this id; `EntityNotFound` if none."""

    @abstractmethod
    def _impl_fetch_exp_by_name(self, name: str) -> ExpDoc:
        """The experiment of this exact name; `EntityNotFound` if none."""

    @abstractmethod
    def _impl_fetch_run(self, run_id: str) -> RunDoc:
        """The run with this id; `EntityNotFound` if none."""

    @abstractmethod
    def _impl_fetch_model(self, name: str) -> ModelDoc:
        """The registered model of this name, with all its aliases; `EntityNotFound` if none."""

    @abstractmethod
    def _impl_fetch_model_version(self, name: str, version: str) -> ModelVersionDoc:
        """Version `version` of model `name`, with its aliases; `EntityNotFound` if none."""

    @abstractmethod
    def _impl_fetch_model_version_by_alias(self, name: str, alias: str) -> ModelVersionDoc:
        """The version of model `name` that `alias` points at; `EntityNotFound` if none."""

    @abstractmethod
    def _impl_fetch_logged_model(self, model_id: str) -> LoggedModelDoc:
        """The logged model with this id (`m-<32 hex>`); `EntityNotFound` if none."""

    # ----------------------------------------------------------------- searches (one page per call)
    @abstractmethod
    def _impl_search_exps(self, query: dict[str, Any], page_token: str | None) -> Page[ExpDoc]:
        """A page of experiments (deleted ones included), at least all that match `query`."""

    @abstractmethod
    def _impl_search_runs(
        self, exp_ids: list[str] | None, query: dict[str, Any], page_token: str | None
    ) -> Page[RunDoc]:
        """A page of runs of these experiments (None: of all), at least all that match `query`."""

    @abstractmethod
    def _impl_search_logged_models(
        self, exp_ids: list[str] | None, query: dict[str, Any], page_token: str | None
    ) -> Page[LoggedModelDoc]:
        """A page of logged models of these experiments (None: of all), at least all that match."""

    @abstractmethod
    def _impl_search_models(self, query: dict[str, Any], page_token: str | None) -> Page[ModelDoc]:
        """A page of registered models (with their aliases), at least all that match `query`."""

    @abstractmethod
    def _impl_search_model_versions(self, query: dict[str, Any], page_token: str | None) -> Page[ModelVersionDoc]:
        """A page of model versions (with their aliases), at least all that match `query`."""

    # ----------------------------------------------------------------- writes
    @abstractmethod
    def _impl_create_exp(self, name: str, tags: dict[str, str], artifact_location: str | None) -> ExpDoc:
        """Create an experiment (tags flat and encoded, see `encoding.encode_flat`); `EntityExists`
        if the name is taken."""

    @abstractmethod
    def _impl_set_exp_tags(self, exp_id: str, tags: dict[str, str]) -> None:
        """Set (flat, encoded) tags on an experiment."""

    @abstractmethod
    def _impl_rename_exp(self, exp_id: str, name: str) -> None:
        """Rename an experiment; `EntityExists` if the name is taken."""

    @abstractmethod
    def _impl_delete_exp(self, exp_id: str) -> None:
        """Mark an experiment deleted (restorable)."""

    @abstractmethod
    def _impl_restore_exp(self, exp_id: str) -> None:
        """Restore a deleted experiment."""

    @abstractmethod
    def _impl_create_run(self, exp_id: str, name: str | None, tags: dict[str, str]) -> RunDoc:
        """Create a RUNNING run in the experiment (tags flat and encoded, `mlflow.parentRunId` for a
        child run) and return its document."""

    @abstractmethod
    def _impl_update_run(self, run_id: str, status: RunStatus, end_time: datetime | None) -> None:
        """Set a run's status (and its end time, for a terminal status)."""

    @abstractmethod
    def _impl_log_batch(
        self, run_id: str, params: dict[str, str], metrics: list[MetricRow], tags: dict[str, str]
    ) -> None:
        """Log flat, encoded params and tags and metric points to a run, in one request."""

    @abstractmethod
    def _impl_create_model(self, name: str, tags: dict[str, str], description: str | None) -> ModelDoc:
        """Create a registered model; `EntityExists` if the name is taken."""

    @abstractmethod
    def _impl_set_model_tags(self, name: str, tags: dict[str, str]) -> None:
        """Set (flat, encoded) tags on a registered model."""

    @abstractmethod
    def _impl_create_model_version(
        self, name: str, source: str, run_id: str | None, tags: dict[str, str], description: str | None
    ) -> ModelVersionDoc:
        """Register a new version of model `name` whose files are at `source`."""

    @abstractmethod
    def _impl_set_model_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        """Set (flat, encoded) tags on a model version."""

    @abstractmethod
    def _impl_set_model_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` of model `name` at `version` (moving it from any other version)."""

    # ----------------------------------------------------------------- artifacts
    @abstractmethod
    def _impl_transfer_for(self, url: str) -> Transfer | None:
        """A transfer for artifact URLs only this backend can read (an artifact proxy), else None
        (the api's own `transfer`, rclone by default, is used)."""
