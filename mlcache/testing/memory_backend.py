"""The state of an in-memory tracking server and model registry (`MemoryBackend`), kept flat as
MLflow keeps it; `InMemoryPlugin` serves its hooks from it."""

from __future__ import annotations

import itertools
import tempfile
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BackendError, ServerUnreachable
from ..hooks import MetricRow
from ..local_transfer import LocalTransfer
from ..timeutil import utcnow


def now_text() -> str:
    """Now, as the server writes its times."""
    return utcnow().isoformat()


@dataclass
class RunRecord:
    """One run as the server keeps it: its info, and its tags, params and metrics flat."""

    info: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[MetricRow] = field(default_factory=list)


class MemoryBackend:
    """The state of one in-memory server; share it between apis to play several clients."""

    def __init__(self, artifact_root: Path | None = None, page_size: int = 100) -> None:
        if artifact_root is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="mlcache-memory-")
            artifact_root = Path(self._scratch.name)
        self.artifact_root = artifact_root
        self.page_size = page_size
        self.down = False
        self.exps: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, RunRecord] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.versions: dict[tuple[str, str], dict[str, Any]] = {}
        self.logged: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self._failures: list[BaseException] = []
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    def fail_next(self, count: int, error: BaseException | None = None) -> None:
        """Make the next `count` hook calls fail with `error` (default: an HTTP 503 `BackendError`)."""
        with self._lock:
            self._failures.extend([error or BackendError("injected 503", status=503)] * count)

    def enter(self, hook: str) -> None:
        """Count a hook call, and fail it when the backend is down or a failure is due."""
        with self._lock:
            self.calls[hook] += 1
            if self.down:
                raise ServerUnreachable("the in-memory server is down (MemoryBackend.down)")
            if self._failures:
                raise self._failures.pop(0)

    def location(self, *parts: str) -> str:
        return self.artifact_root.joinpath(*parts).as_uri()

    def add_logged_model(
        self, exp_id: str, name: str, files: Path, run_id: str | None = None, registered_model_name: str | None = None
    ) -> tuple[str, str | None]:
        """An MLflow 3 logged model made of the files at `files` (what `mlflow.<flavor>.log_model`
        does), registered as a new version of `registered_model_name` if given: (model id, version)."""
        with self._lock:
            model_id = f"m-{uuid.uuid4().hex}"
            location = self.location(exp_id, "models", model_id, "artifacts")
            LocalTransfer().push(files, location)
            self.logged[model_id] = {
                "id": model_id,
                "name": name,
                "exp_id": exp_id,
                "source_run_id": run_id,
                "artifact_location": location,
                "status": "READY",
                "model_type": None,
                "creation_time": now_text(),
                "last_update_time": now_text(),
                "tags": {},
                "params": {},
                "metrics": {},
            }
        version = None
        if registered_model_name is not None:
            if registered_model_name not in self.models:
                self.models[registered_model_name] = model_record(registered_model_name, {}, None)
            version = self._new_version(registered_model_name, f"models:/{model_id}", run_id, {}, None, model_id)
        return model_id, version

    def _new_version(
        self,
        name: str,
        source: str,
        run_id: str | None,
        tags: dict[str, str],
        description: str | None,
        model_id: str | None = None,
    ) -> str:
        with self._lock:
            version = str(1 + sum(1 for model, _ in self.versions if model == name))
            self.versions[name, version] = {
                "model_name": name,
                "version": version,
                "run_id": run_id,
                "source": source,
                "tags": dict(tags),
                "status": "READY",
                "description": description,
                "creation_time": now_text(),
                "last_update_time": now_text(),
                "model_id": model_id,
            }
            return version


def model_record(name: str, tags: dict[str, str], description: str | None) -> dict[str, Any]:
    """A new registered model as the server keeps it."""
    return {
        "name": name,
        "tags": dict(tags),
        "aliases": {},
        "description": description,
        "creation_time": now_text(),
        "last_update_time": now_text(),
    }
