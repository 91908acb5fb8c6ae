"""Tracking and registry writes: they go to the backend, then the cache.

A write never edits cached documents by hand: a create writes the backend's answer through, and an
update marks the entity it changed stale, so the next online read fetches it again while offline
readers still get the last known copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from .backend import Backend
from .compose import Composer
from .encoding import encode_flat, flatten_metrics
from .entities import RunStatus
from .errors import EntityExists, EntityNotFound, OfflineModeError
from .handles import ExpApi, ModelApi, ModelVersionApi, RunApi
from .identifiers import ExpRef, ModelVersionRef, exp_ref, model_name, model_version_ref, run_id_of
from .metadata_store import MetadataStore
from .names import safe_relative_path
from .resolver import MetadataResolver
from .timeutil import to_ms, utcnow


class TrackingEngine:
    """Experiments, runs, params/metrics/tags, models, versions and aliases, written through."""

    def __init__(self, resolver: MetadataResolver, composer: Composer, meta: MetadataStore, backend: Backend) -> None:
        self.resolver = resolver
        self.composer = composer
        self.meta = meta
        self.backend = backend
        self.hooks = backend.hooks

    def require_online(self, action: str) -> None:
        if self.resolver.offline:
            raise OfflineModeError(f"{action} needs the tracking server, but the api is in offline mode")

    def exp_id(self, exp: Any) -> str:
        """The id of any experiment identifier (resolved through the cache when it can)."""
        return str(self.resolver.exp(exp_ref(exp), "nested").data["id"])

    # ----------------------------------------------------------------- experiments
    def create_exp(self, name: str, tags: Mapping[str, Any] | None, artifact_location: str | None) -> ExpApi:
        self.require_online("create_exp")
        data = self.backend.call(
            f"experiment {name}", self.hooks._impl_create_exp, name, encode_flat(tags or {}), artifact_location
        )
        return self.composer.exp(self.resolver.store("exp", dict(data)))

    def get_or_create_exp(self, name: str, tags: Mapping[str, Any] | None, artifact_location: str | None) -> ExpApi:
        try:
            return self.composer.exp(self.resolver.exp(ExpRef(name=name), "normal"))
        except EntityNotFound:
            pass
        try:
            return self.create_exp(name, tags, artifact_location)
        except EntityExists:
            return self.composer.exp(self.resolver.exp(ExpRef(name=name), "force"))

    def set_exp_tags(self, exp: Any, tags: Mapping[str, Any]) -> None:
        self.require_online("set_tags_on_exp")
        exp_id = self.exp_id(exp)
        self.backend.call(f"experiment {exp_id}", self.hooks._impl_set_exp_tags, exp_id, encode_flat(tags))
        self.meta.mark_stale("exp", (exp_id,))

    def archive_exp(self, exp: Any, suffix: str | None) -> ExpApi:
        """Rename the experiment with a suffix (default `-archived-<UTC date and time>`)."""
        self.require_online("archive_exp")
        record = self.resolver.exp(exp_ref(exp), "normal")
        exp_id = str(record.data["id"])
        name = f"{record.data['name']}{suffix or '-archived-' + utcnow().strftime('%Y%m%dT%H%M%SZ')}"
        self.backend.call(f"experiment {exp_id}", self.hooks._impl_rename_exp, exp_id, name)
        return self.composer.exp(self.resolver.exp(ExpRef(id=exp_id), "force"))

    def delete_exp(self, exp: Any) -> ExpApi:
        self.require_online("delete_exp")
        exp_id = self.exp_id(exp)
        self.backend.call(f"experiment {exp_id}", self.hooks._impl_delete_exp, exp_id)
        return self.composer.exp(self.resolver.exp(ExpRef(id=exp_id), "force"))

    def restore_exp(self, exp: Any) -> ExpApi:
        self.require_online("restore_exp")
        exp_id = self.exp_id(exp)
        self.backend.call(f"experiment {exp_id}", self.hooks._impl_restore_exp, exp_id)
        return self.composer.exp(self.resolver.exp(ExpRef(id=exp_id), "force"))

    # ----------------------------------------------------------------- runs
    def create_run(
        self, exp: Any, name: str | None, tags: Mapping[str, Any] | None, parent: Any, status: RunStatus | str
    ) -> RunApi:
        self.require_online("create_run")
        status = RunStatus(status)
        exp_id = self.exp_id(exp)
        flat = encode_flat(tags or {})
        if parent is not None:
            flat["mlflow.parentRunId"] = run_id_of(parent)
        data = self.backend.call(f"run in experiment {exp_id}", self.hooks._impl_create_run, exp_id, name, flat)
        record = self.resolver.store("run", dict(data))
        if status == RunStatus.RUNNING:
            return self.composer.run(record)
        run_id = record.key[0]
        end = utcnow() if status.is_terminal else None
        self.backend.call(f"run {run_id}", self.hooks._impl_update_run, run_id, status, end)
        return self.composer.run(self.resolver.run(run_id, "force"))

    def set_run_status(self, run: Any, status: RunStatus | str, action: str) -> RunApi:
        """End (a terminal status) or resume (RUNNING) a run and return it refreshed."""
        self.require_online(action)
        status = RunStatus(status)
        if action == "end_run" and not status.is_terminal:
            raise ValueError(f"end_run needs a terminal status (FINISHED, FAILED, KILLED), got {status.value}")
        run_id = run_id_of(run)
        end = utcnow() if status.is_terminal else None
        self.backend.call(f"run {run_id}", self.hooks._impl_update_run, run_id, status, end)
        return self.composer.run(self.resolver.run(run_id, "force"))

    def log_batch(
        self,
        run: Any,
        params: Mapping[str, Any] | None,
        metrics: Mapping[str, Any] | None,
        tags: Mapping[str, Any] | None,
        step: int | None,
        timestamp: datetime | None,
    ) -> None:
        self.require_online("log_batch")
        run_id = run_id_of(run)
        when = to_ms(timestamp or utcnow())
        rows = [(key, value, when, step or 0) for key, value in flatten_metrics(metrics or {}).items()]
        flat_params, flat_tags = encode_flat(params or {}), encode_flat(tags or {})
        self.backend.call(f"run {run_id}", self.hooks._impl_log_batch, run_id, flat_params, rows, flat_tags)
        self.meta.mark_stale("run", (run_id,))

    # ----------------------------------------------------------------- registry
    def create_model(self, name: str, tags: Mapping[str, Any] | None, description: str | None) -> ModelApi:
        self.require_online("create_model")
        data = self.backend.call(
            f"model {name}", self.hooks._impl_create_model, name, encode_flat(tags or {}), description
        )
        return self.composer.model(self.resolver.store("model", dict(data)))

    def get_or_create_model(self, name: str, tags: Mapping[str, Any] | None, description: str | None) -> ModelApi:
        try:
            return self.composer.model(self.resolver.model(name, "normal"))
        except EntityNotFound:
            pass
        try:
            return self.create_model(name, tags, description)
        except EntityExists:
            return self.composer.model(self.resolver.model(name, "force"))

    def set_model_tags(self, model: Any, tags: Mapping[str, Any]) -> None:
        self.require_online("set_tags_on_model")
        name = model_name(model)
        self.backend.call(f"model {name}", self.hooks._impl_set_model_tags, name, encode_flat(tags))
        self.meta.mark_stale("model", (name,))

    def register_model_version(
        self,
        model: Any,
        run: Any,
        path_in_run: str,
        tags: Mapping[str, Any] | None,
        description: str | None,
        aliases: Iterable[str],
    ) -> ModelVersionApi:
        self.require_online("register_model_version")
        path = safe_relative_path(path_in_run)
        run_record = self.resolver.run(run_id_of(run), "normal")
        repo = run_record.data.get("repo")
        if not isinstance(repo, str) or not repo:
            raise ValueError(f"run {run_record.key[0]} has no artifact location to register a version from")
        name = self.get_or_create_model(model_name(model), None, None).name
        source = f"{repo.rstrip('/')}/{path}"
        data = self.backend.call(
            f"model version of {name}",
            self.hooks._impl_create_model_version,
            name,
            source,
            run_record.key[0],
            encode_flat(tags or {}),
            description,
        )
        record = self.resolver.store("mv", dict(data))
        version = record.key[1]
        aliases = list(aliases)
        for alias in aliases:
            self.set_model_alias((name, version), alias)
        if aliases:
            return self.composer.mv(self.resolver.mv(ModelVersionRef(name, version), "force"))
        return self.composer.mv(record)

    def set_model_version_tags(self, model_version: Any, tags: Mapping[str, Any]) -> None:
        self.require_online("set_tags_on_model_version")
        ref = model_version_ref(model_version)
        version = ref.version or self.resolver.mv(ref, "normal").data["version"]
        self.backend.call(f"{ref}", self.hooks._impl_set_model_version_tags, ref.model, version, encode_flat(tags))
        self.meta.mark_stale("mv", (ref.model, version))

    def set_model_alias(self, model_version: Any, alias: str) -> None:
        """Point `alias` of the model at this version (moving it from any other version)."""
        self.require_online("set_model_alias")
        ref = model_version_ref(model_version)
        model_version_ref((ref.model, f"@{alias}"))
        version = ref.version or self.resolver.mv(ref, "normal").data["version"]
        previous = self.meta.get("alias", (ref.model, alias))
        self.backend.call(f"models:/{ref.model}/{version}", self.hooks._impl_set_model_alias, ref.model, alias, version)
        self.meta.put("alias", (ref.model, alias), {"version": version})
        self.meta.mark_stale("model", (ref.model,))
        self.meta.mark_stale("mv", (ref.model, version))
        if previous is not None and str(previous.data.get("version")) != version:
            self.meta.mark_stale("mv", (ref.model, str(previous.data.get("version"))))
