"""The tracking half of the public façade: experiments, runs, models and versions created and
changed on the backend, each written through to the cache. `BaseMlflowApi` inherits it; every
method delegates to the `TrackingEngine`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .entities import RunStatus

if TYPE_CHECKING:
    from .handles import ExpApi, ModelApi, ModelVersionApi, RunApi
    from .tracking import TrackingEngine


class TrackingMethods:
    """Writing to the backend: what is created or changed is cached as the server answered it."""

    if TYPE_CHECKING:
        _tracking: TrackingEngine

    def create_exp(
        self, name: str, tags: Mapping[str, Any] | None = None, artifact_location: str | None = None
    ) -> ExpApi:
        """Create an experiment; `EntityExists` if the name is taken."""
        return self._tracking.create_exp(name, tags, artifact_location)

    def get_or_create_exp(
        self, name: str, tags: Mapping[str, Any] | None = None, artifact_location: str | None = None
    ) -> ExpApi:
        """The experiment of that name, created (with `tags`) if it does not exist."""
        return self._tracking.get_or_create_exp(name, tags, artifact_location)

    def set_tags_on_exp(self, exp: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on an experiment."""
        self._tracking.set_exp_tags(exp, tags)

    def archive_exp(self, exp: Any, suffix: str | None = None) -> ExpApi:
        """Rename the experiment with a suffix (default `-archived-<UTC date and time>`)."""
        return self._tracking.archive_exp(exp, suffix)

    def delete_exp(self, exp: Any) -> ExpApi:
        """Mark the experiment deleted on the server (restorable)."""
        return self._tracking.delete_exp(exp)

    def restore_exp(self, exp: Any) -> ExpApi:
        """Restore a deleted experiment."""
        return self._tracking.restore_exp(exp)

    def create_run(
        self,
        exp: Any,
        name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        parent: Any = None,
        status: RunStatus | str = RunStatus.RUNNING,
    ) -> RunApi:
        """Create a run in `exp` (a child of `parent` if given), left in `status`."""
        return self._tracking.create_run(exp, name, tags, parent, status)

    def start_run(
        self, exp: Any, name: str | None = None, tags: Mapping[str, Any] | None = None, parent: Any = None
    ) -> RunApi:
        """Create a RUNNING run; use it as a context manager to end it FINISHED (or FAILED on error)."""
        return self._tracking.create_run(exp, name, tags, parent, RunStatus.RUNNING)

    def end_run(self, run: Any, status: RunStatus | str = RunStatus.FINISHED) -> RunApi:
        """Terminate a run with `status` (FINISHED, FAILED or KILLED) and return it refreshed."""
        return self._tracking.set_run_status(run, status, "end_run")

    def resume_run(self, run: Any) -> RunApi:
        """Set a run back to RUNNING and return it refreshed."""
        return self._tracking.set_run_status(run, RunStatus.RUNNING, "resume_run")

    def set_tags_on_run(self, run: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on a run."""
        self._tracking.log_batch(run, None, None, tags, None, None)

    def log_params(self, run: Any, params: Mapping[str, Any]) -> None:
        """Log (nested) params; values are stored JSON-encoded."""
        self._tracking.log_batch(run, params, None, None, None, None)

    def log_metrics(
        self, run: Any, metrics: Mapping[str, Any], step: int | None = None, timestamp: datetime | None = None
    ) -> None:
        """Log (nested) numeric metrics at `step` (default 0) and `timestamp` (default now)."""
        self._tracking.log_batch(run, None, metrics, None, step, timestamp)

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
        self._tracking.log_batch(run, params, metrics, tags, step, timestamp)

    def create_model(
        self, name: str, tags: Mapping[str, Any] | None = None, description: str | None = None
    ) -> ModelApi:
        """Create a registered model; `EntityExists` if the name is taken."""
        return self._tracking.create_model(name, tags, description)

    def get_or_create_model(
        self, name: str, tags: Mapping[str, Any] | None = None, description: str | None = None
    ) -> ModelApi:
        """The registered model of that name, created if it does not exist."""
        return self._tracking.get_or_create_model(name, tags, description)

    def set_tags_on_model(self, model: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on a registered model."""
        self._tracking.set_model_tags(model, tags)

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
        return self._tracking.register_model_version(model, run, path_in_run, tags, description, aliases)

    def set_tags_on_model_version(self, model_version: Any, tags: Mapping[str, Any]) -> None:
        """Set (nested) tags on a model version."""
        self._tracking.set_model_version_tags(model_version, tags)

    def set_model_alias(self, model_version: Any, alias: str) -> None:
        """Point `alias` of the model at this version (moving it from any other version)."""
        self._tracking.set_model_alias(model_version, alias)
