"""The `mlflow` plugin's write hooks: each one `MlflowClient` call (or one per tag), run through
the plugin's bounded `_call`, its result read back as a document where the hook returns one."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ...entities import RunStatus
from ...hooks import ExpDoc, ModelDoc, ModelVersionDoc, RunDoc
from ...timeutil import to_ms
from .docs import exp_doc, model_doc, mv_doc, run_doc

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")


class MlflowWrites:
    """Mixed into `MlflowApi`, which provides the client, the embedded store and `_call`."""

    if TYPE_CHECKING:
        embedded_dir: Path

        @property
        def client(self) -> MlflowClient: ...

        @property
        def is_embedded(self) -> bool: ...

        def _call(self, what: str, key: str, fn: Callable[[], T]) -> T: ...

    def _impl_create_exp(self, name: str, tags: dict[str, str], artifact_location: str | None) -> ExpDoc:
        if artifact_location is None and self.is_embedded:
            folder = self.embedded_dir / "artifacts" / uuid.uuid4().hex
            artifact_location = folder.as_uri()
        exp_id = self._call(
            "experiment", name, lambda: self.client.create_experiment(name, artifact_location, tags or None)
        )
        return exp_doc(self._call("experiment", exp_id, lambda: self.client.get_experiment(exp_id)))

    def _impl_rename_exp(self, exp_id: str, name: str) -> None:
        self._call("experiment", exp_id, lambda: self.client.rename_experiment(exp_id, name))

    def _impl_delete_exp(self, exp_id: str) -> None:
        self._call("experiment", exp_id, lambda: self.client.delete_experiment(exp_id))

    def _impl_restore_exp(self, exp_id: str) -> None:
        self._call("experiment", exp_id, lambda: self.client.restore_experiment(exp_id))

    def _impl_set_exp_tags(self, exp_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._call("experiment", exp_id, functools.partial(self.client.set_experiment_tag, exp_id, key, value))

    def _impl_create_run(self, exp_id: str, name: str | None, tags: dict[str, str]) -> RunDoc:
        run = self._call("run in experiment", exp_id, lambda: self.client.create_run(exp_id, tags=tags, run_name=name))
        return run_doc(run)

    def _impl_update_run(self, run_id: str, status: RunStatus, end_time: datetime | None) -> None:
        if status.is_terminal:
            end_ms = to_ms(end_time) if end_time else None
            self._call("run", run_id, lambda: self.client.set_terminated(run_id, status.value, end_ms))
        else:
            self._call("run", run_id, lambda: self.client.update_run(run_id, status=status.value))

    def _impl_log_batch(
        self, run_id: str, params: dict[str, str], metrics: list[tuple[str, float, int, int]], tags: dict[str, str]
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag

        self._call(
            "run",
            run_id,
            lambda: self.client.log_batch(
                run_id,
                metrics=[Metric(key, value, when, step) for key, value, when, step in metrics],
                params=[Param(key, value) for key, value in params.items()],
                tags=[RunTag(key, value) for key, value in tags.items()],
            ),
        )

    def _impl_create_model(self, name: str, tags: dict[str, str], description: str | None) -> ModelDoc:
        model = self._call("model", name, lambda: self.client.create_registered_model(name, tags or None, description))
        return model_doc(model)

    def _impl_set_model_tags(self, name: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._call("model", name, functools.partial(self.client.set_registered_model_tag, name, key, value))

    def _impl_create_model_version(
        self, name: str, source: str, run_id: str | None, tags: dict[str, str], description: str | None
    ) -> ModelVersionDoc:
        mv = self._call(
            "model version of",
            name,
            lambda: self.client.create_model_version(name, source, run_id, tags=tags or None, description=description),
        )
        return mv_doc(mv)

    def _impl_set_model_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        key = f"models:/{name}/{version}"
        for tag, value in tags.items():
            self._call(
                "model version", key, functools.partial(self.client.set_model_version_tag, name, version, tag, value)
            )

    def _impl_set_model_alias(self, name: str, alias: str, version: str) -> None:
        key = f"models:/{name}/{version}"
        self._call("model version", key, lambda: self.client.set_registered_model_alias(name, alias, version))
