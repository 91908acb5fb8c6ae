"""MLflow artifact-repository plugin for the `mlcache://` scheme (entry point group
`mlflow.artifact_repository`): existing MLflow code gets the cache by changing only the URI.

    mlflow.pyfunc.load_model("mlcache://models/fraud@champion")
    mlflow.pyfunc.load_model("mlcache://models/fraud/3")
    mlflow.pyfunc.load_model("mlcache://models/m-<id>")
    mlflow.artifacts.download_artifacts("mlcache://runs/<run_id>/model")

The api comes from the environment (`MLCACHE_CACHE_DIR`, `MLCACHE_OFFLINE=1`, `MLFLOW_TRACKING_URI`).
When MLflow asks for no destination, the cached directory itself is handed back (no copy), its
entry held shared until the process ends, so that no prune or clean removes files MLflow still reads.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Any

from mlflow.entities import FileInfo
from mlflow.store.artifact.artifact_repo import ArtifactRepository

from ...base import BaseMlflowApi
from ...errors import InvalidIdentifier, MlcacheError
from ...identifiers import logged_model_id

SCHEME = "mlcache://"
_apis: dict[tuple[tuple[str, str], ...], BaseMlflowApi] = {}
_lock = threading.Lock()


def api_from_environment() -> BaseMlflowApi:
    """One api per process and configuration, built from the environment."""
    key = tuple(sorted((name, value) for name, value in os.environ.items() if name.startswith(("MLCACHE_", "MLFLOW_"))))
    with _lock:
        if key not in _apis:
            from ... import get_api

            _apis[key] = get_api()
        return _apis[key]


def resolve(uri: str, api: BaseMlflowApi) -> Path:
    """The cached local path of an `mlcache://` URI (pulled on a miss)."""
    if not uri.startswith(SCHEME):
        raise InvalidIdentifier(f"not an mlcache URI: {uri!r}")
    rest = uri[len(SCHEME) :].strip("/")
    kind, _, spec = rest.partition("/")
    if kind == "runs":
        run_id, _, path = spec.partition("/")
        if not run_id or not path:
            raise InvalidIdentifier(f"malformed {uri!r}; expected mlcache://runs/<run_id>/<path>")
        return api.get_run_artifact(run_id, path, hold=True)
    if kind == "models" and spec:
        head, _, inner = spec.partition("/")
        if logged_model_id(head) is not None:
            return _inside(api.get_model_artifact(head, hold=True), inner, uri)
        if "@" in head:
            name, _, alias = head.partition("@")
            return _inside(api.get_model_artifact((name, f"@{alias}"), hold=True), inner, uri)
        version, _, inner = inner.partition("/")
        if version:
            return _inside(api.get_model_artifact((head, version), hold=True), inner, uri)
    raise InvalidIdentifier(
        f"malformed {uri!r}; expected mlcache://models/<name>/<version>, mlcache://models/<name>@<alias>, "
        "mlcache://models/m-<id> or mlcache://runs/<run_id>/<path>"
    )


def _inside(root: Path, inner: str, uri: str) -> Path:
    if not inner:
        return root
    from ...names import safe_relative_path

    path = root.joinpath(*safe_relative_path(inner, "path").split("/"))
    if not path.exists():
        raise MlcacheError(f"{uri}: no {inner!r} in the cached model at {root}")
    return path


class MlcacheArtifactRepository(ArtifactRepository):
    """Read-only artifact repository serving `mlcache://` URIs from the cache."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None) -> None:
        super().__init__(artifact_uri)

    def _uri(self, path: str | None) -> str:
        base = self.artifact_uri.rstrip("/")
        return f"{base}/{path.lstrip('/')}" if path else base

    def download_artifacts(self, artifact_path: str, dst_path: str | None = None) -> str:
        local = resolve(self._uri(artifact_path), api_from_environment())
        if dst_path is None:
            return str(local)
        dest = Path(dst_path) / local.name
        if local.is_dir():
            shutil.copytree(local, dest, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, dest)
        return str(dest)

    def list_artifacts(self, path: str | None = None) -> list[FileInfo]:
        local = resolve(self._uri(path), api_from_environment())
        if local.is_file():
            return [FileInfo(path or local.name, False, local.stat().st_size)]
        prefix = f"{path.strip('/')}/" if path else ""
        return [
            FileInfo(f"{prefix}{child.name}", child.is_dir(), None if child.is_dir() else child.stat().st_size)
            for child in sorted(local.iterdir())
        ]

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        shutil.copy2(resolve(self._uri(remote_file_path), api_from_environment()), local_path)

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> Any:
        raise MlcacheError("mlcache:// is read-only: log artifacts to the run or model itself")

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> Any:
        raise MlcacheError("mlcache:// is read-only: log artifacts to the run or model itself")

    def delete_artifacts(self, artifact_path: str | None = None) -> Any:
        raise MlcacheError("mlcache:// is read-only")
