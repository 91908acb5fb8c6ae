"""`InMemoryPlugin` (plugin `memory`): a whole tracking server and model registry in dicts.

Tags and params are kept flat and encoded, as MLflow keeps them, and decoded on the way out;
searches return every document of their kind (a superset, as the contract allows) a page at a
time; artifacts live in a local folder and move with `LocalTransfer`. A `MemoryBackend` can be
shared by several apis (clients of one server), taken down (`down = True`: every hook raises
`ServerUnreachable`), made to fail its next calls (`fail_next`), and counts its calls (`calls`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import Field

from ..base import BaseMlflowApi
from ..encoding import decode_nested, unflatten
from ..entities import RunStatus
from ..errors import BackendError, EntityExists, EntityNotFound, UnsupportedUrl
from ..hooks import ExpDoc, LoggedModelDoc, MetricRow, ModelDoc, ModelVersionDoc, Page, RunDoc
from ..local_transfer import LocalTransfer, local_path
from ..transfer import Transfer
from .memory_backend import MemoryBackend, RunRecord, model_record, now_text

DocT = TypeVar("DocT")


def _page(items: list[DocT], token: str | None, size: int) -> Page[DocT]:
    start = int(token or 0)
    end = start + size
    return Page(items[start:end], str(end) if end < len(items) else None)


class InMemoryPlugin(BaseMlflowApi):
    """Every hook implemented on a `MemoryBackend` (`backend=...` to share one); `get_api("memory")`."""

    backend: MemoryBackend = Field(default_factory=MemoryBackend)

    def _guard(self, hook: str) -> None:
        self.backend.enter(hook)

    # ----------------------------------------------------------------- documents
    def _exp_doc(self, exp_id: str) -> ExpDoc:
        exp = self.backend.exps.get(exp_id)
        if exp is None:
            raise EntityNotFound("experiment", exp_id)
        return {**exp, "tags": decode_nested(exp["tags"])}  # type: ignore[typeddict-item]

    def _run_doc(self, run_id: str) -> RunDoc:
        run = self.backend.runs.get(run_id)
        if run is None:
            raise EntityNotFound("run", run_id)
        latest: dict[str, float] = {}
        for key, value, _, _ in sorted(run.metrics, key=lambda row: (row[3], row[2])):
            latest[key] = value
        return {
            **run.info,  # type: ignore[typeddict-item]
            "tags": decode_nested(run.tags),
            "params": decode_nested(run.params),
            "metrics": unflatten(latest),
            "parent_run_id": run.tags.get("mlflow.parentRunId"),
        }

    def _model_doc(self, name: str) -> ModelDoc:
        model = self.backend.models.get(name)
        if model is None:
            raise EntityNotFound("model", name)
        return {**model, "tags": decode_nested(model["tags"]), "aliases": dict(model["aliases"])}  # type: ignore[typeddict-item]

    def _version_doc(self, name: str, version: str) -> ModelVersionDoc:
        mv = self.backend.versions.get((name, version))
        if mv is None:
            raise EntityNotFound("model version", f"models:/{name}/{version}")
        aliases = sorted(a for a, v in self.backend.models[name]["aliases"].items() if v == version)
        return {**mv, "tags": decode_nested(mv["tags"]), "aliases": aliases}  # type: ignore[typeddict-item]

    def _logged_doc(self, model_id: str) -> LoggedModelDoc:
        lm = self.backend.logged.get(model_id)
        if lm is None:
            raise EntityNotFound("logged model", model_id)
        return dict(lm)  # type: ignore[return-value]

    def _hook(self, name: str, work: Callable[[], DocT]) -> DocT:
        self._guard(name)
        with self.backend._lock:
            return work()

    # ----------------------------------------------------------------- reads
    def _impl_fetch_exp(self, exp_id: str) -> ExpDoc:
        return self._hook("fetch_exp", lambda: self._exp_doc(exp_id))

    def _impl_fetch_exp_by_name(self, name: str) -> ExpDoc:
        def find() -> ExpDoc:
            for exp_id, exp in self.backend.exps.items():
                if exp["name"] == name:
                    return self._exp_doc(exp_id)
            raise EntityNotFound("experiment", name)

        return self._hook("fetch_exp_by_name", find)

    def _impl_fetch_run(self, run_id: str) -> RunDoc:
        return self._hook("fetch_run", lambda: self._run_doc(run_id))

    def _impl_fetch_model(self, name: str) -> ModelDoc:
        return self._hook("fetch_model", lambda: self._model_doc(name))

    def _impl_fetch_model_version(self, name: str, version: str) -> ModelVersionDoc:
        return self._hook("fetch_model_version", lambda: self._version_doc(name, version))

    def _impl_fetch_model_version_by_alias(self, name: str, alias: str) -> ModelVersionDoc:
        def find() -> ModelVersionDoc:
            version = self._model_doc(name)["aliases"].get(alias)
            if version is None:
                raise EntityNotFound("model version", f"models:/{name}@{alias}")
            return self._version_doc(name, version)

        return self._hook("fetch_model_version_by_alias", find)

    def _impl_fetch_logged_model(self, model_id: str) -> LoggedModelDoc:
        return self._hook("fetch_logged_model", lambda: self._logged_doc(model_id))

    # ----------------------------------------------------------------- searches
    def _impl_search_exps(self, query: dict[str, Any], page_token: str | None) -> Page[ExpDoc]:
        return self._hook(
            "search_exps",
            lambda: _page([self._exp_doc(i) for i in self.backend.exps], page_token, self.backend.page_size),
        )

    def _impl_search_runs(
        self, exp_ids: list[str] | None, query: dict[str, Any], page_token: str | None
    ) -> Page[RunDoc]:
        def search() -> Page[RunDoc]:
            wanted = [r for r, run in self.backend.runs.items() if exp_ids is None or run.info["exp_id"] in exp_ids]
            return _page([self._run_doc(r) for r in wanted], page_token, self.backend.page_size)

        return self._hook("search_runs", search)

    def _impl_search_logged_models(
        self, exp_ids: list[str] | None, query: dict[str, Any], page_token: str | None
    ) -> Page[LoggedModelDoc]:
        def search() -> Page[LoggedModelDoc]:
            wanted = [m for m, lm in self.backend.logged.items() if exp_ids is None or lm["exp_id"] in exp_ids]
            return _page([self._logged_doc(m) for m in wanted], page_token, self.backend.page_size)

        return self._hook("search_logged_models", search)

    def _impl_search_models(self, query: dict[str, Any], page_token: str | None) -> Page[ModelDoc]:
        return self._hook(
            "search_models",
            lambda: _page([self._model_doc(n) for n in self.backend.models], page_token, self.backend.page_size),
        )

    def _impl_search_model_versions(self, query: dict[str, Any], page_token: str | None) -> Page[ModelVersionDoc]:
        return self._hook(
            "search_model_versions",
            lambda: _page(
                [self._version_doc(n, v) for n, v in self.backend.versions], page_token, self.backend.page_size
            ),
        )

    # ----------------------------------------------------------------- writes
    def _impl_create_exp(self, name: str, tags: dict[str, str], artifact_location: str | None) -> ExpDoc:
        def create() -> ExpDoc:
            if any(exp["name"] == name for exp in self.backend.exps.values()):
                raise EntityExists(f"experiment {name!r} already exists")
            exp_id = str(next(self.backend._ids))
            self.backend.exps[exp_id] = {
                "id": exp_id,
                "name": name,
                "tags": dict(tags),
                "artifact_location": artifact_location or self.backend.location(exp_id),
                "lifecycle_stage": "active",
                "creation_time": now_text(),
                "last_update_time": now_text(),
            }
            return self._exp_doc(exp_id)

        return self._hook("create_exp", create)

    def _exp(self, exp_id: str) -> dict[str, Any]:
        exp = self.backend.exps.get(exp_id)
        if exp is None:
            raise EntityNotFound("experiment", exp_id)
        return exp

    def _impl_set_exp_tags(self, exp_id: str, tags: dict[str, str]) -> None:
        self._hook("set_exp_tags", lambda: self._exp(exp_id)["tags"].update(tags))

    def _impl_rename_exp(self, exp_id: str, name: str) -> None:
        def rename() -> None:
            if any(exp["name"] == name and i != exp_id for i, exp in self.backend.exps.items()):
                raise EntityExists(f"experiment {name!r} already exists")
            self._exp(exp_id)["name"] = name

        self._hook("rename_exp", rename)

    def _impl_delete_exp(self, exp_id: str) -> None:
        self._hook("delete_exp", lambda: self._exp(exp_id).update(lifecycle_stage="deleted"))

    def _impl_restore_exp(self, exp_id: str) -> None:
        self._hook("restore_exp", lambda: self._exp(exp_id).update(lifecycle_stage="active"))

    def _impl_create_run(self, exp_id: str, name: str | None, tags: dict[str, str]) -> RunDoc:
        def create() -> RunDoc:
            exp = self._exp(exp_id)
            run_id = uuid.uuid4().hex
            self.backend.runs[run_id] = RunRecord(
                {
                    "id": run_id,
                    "name": name or f"run-{run_id[:8]}",
                    "exp_id": exp_id,
                    "status": RunStatus.RUNNING.value,
                    "start_time": now_text(),
                    "end_time": None,
                    "repo": f"{exp['artifact_location'].rstrip('/')}/{run_id}/artifacts",
                    "lifecycle_stage": "active",
                },
                tags=dict(tags),
            )
            return self._run_doc(run_id)

        return self._hook("create_run", create)

    def _run(self, run_id: str) -> RunRecord:
        run = self.backend.runs.get(run_id)
        if run is None:
            raise EntityNotFound("run", run_id)
        return run

    def _impl_update_run(self, run_id: str, status: RunStatus, end_time: datetime | None) -> None:
        def update() -> None:
            info = self._run(run_id).info
            info["status"] = status.value
            info["end_time"] = end_time.isoformat() if end_time is not None else None

        self._hook("update_run", update)

    def _impl_log_batch(
        self, run_id: str, params: dict[str, str], metrics: list[MetricRow], tags: dict[str, str]
    ) -> None:
        def log() -> None:
            run = self._run(run_id)
            for key, value in params.items():
                if key in run.params and run.params[key] != value:
                    raise BackendError(f"param {key!r} of run {run_id} was already logged with another value", 400)
            run.params.update(params)
            run.tags.update(tags)
            run.metrics.extend(metrics)

        self._hook("log_batch", log)

    def _impl_create_model(self, name: str, tags: dict[str, str], description: str | None) -> ModelDoc:
        def create() -> ModelDoc:
            if name in self.backend.models:
                raise EntityExists(f"model {name!r} already exists")
            self.backend.models[name] = model_record(name, tags, description)
            return self._model_doc(name)

        return self._hook("create_model", create)

    def _impl_set_model_tags(self, name: str, tags: dict[str, str]) -> None:
        def update() -> None:
            self._model_doc(name)
            self.backend.models[name]["tags"].update(tags)

        self._hook("set_model_tags", update)

    def _impl_create_model_version(
        self, name: str, source: str, run_id: str | None, tags: dict[str, str], description: str | None
    ) -> ModelVersionDoc:
        def create() -> ModelVersionDoc:
            self._model_doc(name)
            if run_id is not None:
                self._run(run_id)
            return self._version_doc(name, self.backend._new_version(name, source, run_id, tags, description))

        return self._hook("create_model_version", create)

    def _impl_set_model_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        def update() -> None:
            self._version_doc(name, version)
            self.backend.versions[name, version]["tags"].update(tags)

        self._hook("set_model_version_tags", update)

    def _impl_set_model_alias(self, name: str, alias: str, version: str) -> None:
        def update() -> None:
            self._version_doc(name, version)
            self.backend.models[name]["aliases"][alias] = version

        self._hook("set_model_alias", update)

    def _impl_transfer_for(self, url: str) -> Transfer | None:
        """Its artifacts are local files: copied in Python, no rclone process."""
        try:
            local_path(url).relative_to(self.backend.artifact_root)
        except (ValueError, UnsupportedUrl):
            return None
        return LocalTransfer(store_hashes=True)
