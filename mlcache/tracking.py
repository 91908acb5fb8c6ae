"""Tracking and registry writes of `BaseMlflowApi`: they go to the server, then the cache.

A write never edits cached documents by hand: the entity it changed is marked stale, so the next
online read fetches it again while offline readers still get the last known copy.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .encoding import encode_flat, flatten_metrics
from .entities import RunStatus
from .errors import EntityExists, EntityNotFound
from .handles import ExpApi, ModelApi, ModelVersionApi, RunApi
from .identifiers import ExpRef, ModelVersionRef, exp_ref, model_name, model_version_ref, run_id_of
from .names import safe_relative_path
from .timeutil import to_ms, utcnow

if TYPE_CHECKING:
    from .base import Freshness
    from .metadata_store import MetadataStore, Record

MetricRow = tuple[str, float, int, int]
"""One metric point for MLflow: key, value, timestamp (epoch ms), step."""


class TrackingMixin:
    """Writes: experiments, runs, params/metrics/tags, models, versions, aliases."""

    if TYPE_CHECKING:
        _meta: MetadataStore

        def _require_online(self, action: str) -> None: ...
        def _exp_record(self, ref: ExpRef, freshness: Freshness) -> Record: ...
        def _mv_record(self, ref: ModelVersionRef, freshness: Freshness) -> Record: ...
        def _store_model(self, data: dict[str, Any]) -> Record: ...
        def _store_mv(self, data: dict[str, Any]) -> Record: ...
        def _compose_exp(self, record: Record) -> ExpApi: ...
        def _compose_run(self, record: Record, freshness: Freshness = "nested") -> RunApi: ...
        def _compose_model(self, record: Record) -> ModelApi: ...
        def _compose_mv(self, record: Record, freshness: Freshness = "nested") -> ModelVersionApi: ...
        def get_exp_by_name(self, name: str, force_refresh: bool = False) -> ExpApi: ...
        def get_run(self, run: Any, force_refresh: bool = False) -> RunApi: ...
        def get_model(self, model: Any, force_refresh: bool = False) -> ModelApi: ...

    # ----------------------------------------------------------------- plugin hooks
    @abstractmethod
    def _impl_create_exp(self, name: str, tags: dict[str, str], artifact_location: str | None) -> str:
        """Create the experiment and return its id (`EntityExists` if the name is taken)."""

    @abstractmethod
    def _impl_set_exp_tags(self, exp_id: str, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def _impl_create_run(self, exp_id: str, name: str | None, tags: dict[str, str]) -> dict[str, Any]:
        """Create a RUNNING run and return its document."""

    @abstractmethod
    def _impl_update_run(self, run_id: str, status: RunStatus, end_time: datetime | None) -> None: ...

    @abstractmethod
    def _impl_log_batch(
        self, run_id: str, params: dict[str, str], metrics: list[MetricRow], tags: dict[str, str]
    ) -> None: ...

    @abstractmethod
    def _impl_create_model(self, name: str, tags: dict[str, str], description: str | None) -> dict[str, Any]:
        """Create the registered model and return its document (`EntityExists` if taken)."""

    @abstractmethod
    def _impl_set_model_tags(self, name: str, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def _impl_create_model_version(
        self, name: str, source: str, run_id: str | None, tags: dict[str, str], description: str | None
    ) -> dict[str, Any]: ...

    @abstractmethod
    def _impl_set_model_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def _impl_set_model_alias(self, name: str, alias: str, version: str) -> None: ...

    # ----------------------------------------------------------------- experiments
    def create_exp(
        self, name: str, tags: Mapping[str, Any] | None = None, artifact_location: str | None = None
    ) -> ExpApi:
        """Create an experiment; `EntityExists` if the name is taken."""
        self._require_online("create_exp")
        exp_id = self._impl_create_exp(name, encode_flat(tags or {}), artifact_location)
        return self._compose_exp(self._exp_record(ExpRef(id=exp_id), "force"))

    def get_or_create_exp(
        self, name: str, tags: Mapping[str, Any] | None = None, artifact_location: str | None = None
    ) -> ExpApi:
        """The experiment of that name, created (with `tags`) if it does not exist."""
        try:
            return self.get_exp_by_name(name)
        except EntityNotFound:
            pass
        try:
            return self.create_exp(name, tags, artifact_location)
        except EntityExists:
            return self.get_exp_by_name(name, force_refresh=True)

    def set_tags_on_exp(self, exp: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on an experiment."""
        self._require_online("set_tags_on_exp")
        exp_id = self._exp_record(exp_ref(exp), "nested").data["id"]
        self._impl_set_exp_tags(exp_id, encode_flat(tags))
        self._meta.mark_stale("exp", (exp_id,))

    # ----------------------------------------------------------------- runs
    def create_run(
        self,
        exp: Any,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: Any = None,
        status: RunStatus | str = RunStatus.RUNNING,
    ) -> RunApi:
        """Create a run in `exp` (a child of `parent` if given), left in `status`."""
        self._require_online("create_run")
        status = RunStatus(status)
        exp_id = self._exp_record(exp_ref(exp), "nested").data["id"]
        flat = encode_flat(tags or {})
        if parent is not None:
            flat["mlflow.parentRunId"] = run_id_of(parent)
        data = self._impl_create_run(exp_id, name, flat)
        if status != RunStatus.RUNNING:
            self._impl_update_run(data["id"], status, utcnow() if status.is_terminal else None)
            return self.get_run(data["id"], force_refresh=True)
        return self._compose_run(self._meta.put("run", (data["id"],), data))

    def start_run(
        self, exp: Any, name: str | None = None, tags: Mapping[str, Any] | None = None, parent: Any = None
    ) -> RunApi:
        """Create a RUNNING run; use it as a context manager to end it FINISHED (or FAILED on error)."""
        return self.create_run(exp, name, tags, parent)

    def end_run(self, run: Any, status: RunStatus | str = RunStatus.FINISHED) -> RunApi:
        """Terminate a run with `status` (FINISHED, FAILED or KILLED) and return it refreshed."""
        self._require_online("end_run")
        status = RunStatus(status)
        if not status.is_terminal:
            raise ValueError(f"end_run needs a terminal status (FINISHED, FAILED, KILLED), got {status.value}")
        run_id = run_id_of(run)
        self._impl_update_run(run_id, status, utcnow())
        return self.get_run(run_id, force_refresh=True)

    def resume_run(self, run: Any) -> RunApi:
        """Set a run back to RUNNING and return it refreshed."""
        self._require_online("resume_run")
        run_id = run_id_of(run)
        self._impl_update_run(run_id, RunStatus.RUNNING, None)
        return self.get_run(run_id, force_refresh=True)

    def set_tags_on_run(self, run: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on a run."""
        self.log_batch(run, tags=tags)

    def log_params(self, run: Any, params: Mapping[str, Any]) -> None:
        """Log (nested) params; values are stored JSON-encoded."""
        self.log_batch(run, params=params)

    def log_metrics(
        self, run: Any, metrics: Mapping[str, Any], step: int | None = None, timestamp: datetime | None = None
    ) -> None:
        """Log (nested) numeric metrics at `step` (default 0) and `timestamp` (default now)."""
        self.log_batch(run, metrics=metrics, step=step, timestamp=timestamp)

    def log_batch(
        self,
        run: Any,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        step: int | None = None,
        timestamp: datetime | None = None,
    ) -> None:
        """Log params, metrics and tags in one request."""
        self._require_online("log_batch")
        run_id = run_id_of(run)
        when = to_ms(timestamp or utcnow())
        rows = [(key, value, when, step or 0) for key, value in flatten_metrics(metrics or {}).items()]
        self._impl_log_batch(run_id, encode_flat(params or {}), rows, encode_flat(tags or {}))
        self._meta.mark_stale("run", (run_id,))

    # ----------------------------------------------------------------- registry
    def create_model(
        self, name: str, tags: Mapping[str, Any] | None = None, description: str | None = None
    ) -> ModelApi:
        """Create a registered model; `EntityExists` if the name is taken."""
        self._require_online("create_model")
        return self._compose_model(
            self._store_model(self._impl_create_model(name, encode_flat(tags or {}), description))
        )

    def get_or_create_model(
        self, name: str, tags: Mapping[str, Any] | None = None, description: str | None = None
    ) -> ModelApi:
        """The registered model of that name, created if it does not exist."""
        try:
            return self.get_model(name)
        except EntityNotFound:
            pass
        try:
            return self.create_model(name, tags, description)
        except EntityExists:
            return self.get_model(name, force_refresh=True)

    def set_tags_on_model(self, model: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on a registered model."""
        self._require_online("set_tags_on_model")
        name = model_name(model)
        self._impl_set_model_tags(name, encode_flat(tags))
        self._meta.mark_stale("model", (name,))

    def register_model_version(
        self,
        model: Any,
        run: Any,
        path_in_run: str,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
        aliases: Iterable[str] = (),
    ) -> ModelVersionApi:
        """Register the artifacts at `path_in_run` of `run` as a new version of `model`."""
        self._require_online("register_model_version")
        path = safe_relative_path(path_in_run)
        found_run = self.get_run(run)
        if not found_run.repo:
            raise ValueError(f"run {found_run.id} has no artifact location to register a version from")
        name = self.get_or_create_model(model_name(model)).name
        source = f"{found_run.repo.rstrip('/')}/{path}"
        data = self._impl_create_model_version(name, source, found_run.id, encode_flat(tags or {}), description)
        record = self._store_mv(data)
        for alias in aliases:
            self.set_model_alias((name, data["version"]), alias)
        if aliases:
            return self._compose_mv(self._mv_record(ModelVersionRef(name, data["version"]), "force"))
        return self._compose_mv(record)

    def set_tags_on_model_version(self, model_version: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on a model version."""
        self._require_online("set_tags_on_model_version")
        ref = model_version_ref(model_version)
        version = ref.version or self._mv_record(ref, "normal").data["version"]
        self._impl_set_model_version_tags(ref.model, version, encode_flat(tags))
        self._meta.mark_stale("mv", (ref.model, version))

    def set_model_alias(self, model_version: Any, alias: str) -> None:
        """Point `alias` of the model at this version (moving it from any other version)."""
        self._require_online("set_model_alias")
        ref = model_version_ref(model_version)
        model_version_ref((ref.model, f"@{alias}"))
        version = ref.version or self._mv_record(ref, "normal").data["version"]
        previous = self._meta.get("alias", (ref.model, alias))
        self._impl_set_model_alias(ref.model, alias, version)
        self._meta.put("alias", (ref.model, alias), {"version": version})
        self._meta.mark_stale("model", (ref.model,))
        self._meta.mark_stale("mv", (ref.model, version))
        if previous is not None and str(previous.data.get("version")) != version:
            self._meta.mark_stale("mv", (ref.model, str(previous.data.get("version"))))
