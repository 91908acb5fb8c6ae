"""Plugin `mlflow`: open-source MLflow 3.x through `MlflowClient` (a server, or a sqlite/file URI).

mlflow is imported on first use, never at import or construction time, so this plugin works in
offline mode where mlflow is not installed. mlcache's calls run with bounded HTTP (`connect_timeout`,
`request_timeout`, `http_max_retries`): an unreachable server fails in seconds instead of MLflow's
minutes of connection retries, and the base class can then answer from the cache.

Each server call (one get, one search page, one artifact request) has one deadline, `timeout`
seconds (`MLCACHE_TIMEOUT`, default 10), for all its HTTP requests and retries together: every
request's connect and read timeouts are cut to the time left, and no retry waits past it. The read
timeout of one request, `request_timeout`, follows MLflow's `MLFLOW_HTTP_REQUEST_TIMEOUT` (default
120) but never outlasts the deadline. `http_max_retries` > 0 (urllib3's retries inside one request)
and a server trickling its answer byte by byte can stretch a call beyond it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import platformdirs
from pydantic import Field, PrivateAttr

from ... import deadline
from ...api_settings import MIN_TIMEOUT
from ...base import BaseMlflowApi
from ...errors import BackendError, EntityExists, EntityNotFound, ServerUnreachable
from ...hooks import ExpDoc, LoggedModelDoc, ModelDoc, ModelVersionDoc, RunDoc
from ...settings import env_seconds
from ...transfer import Transfer
from . import http as mlflow_http
from .docs import exp_doc, logged_doc, model_doc, mv_doc, run_doc
from .failures import http_status, is_connection_error, what_happened
from .rest import (
    RestError,
    RestReader,
    experiment_entity,
    linked_causes,
    logged_model_entity,
    model_version_entity,
    registered_model_entity,
    run_entity,
)
from .rest import usable_for as rest_usable_for
from .searches import MlflowSearches
from .writes import MlflowWrites

if TYPE_CHECKING:
    from mlflow import MlflowClient

T = TypeVar("T")

_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
_EXISTS = {"RESOURCE_ALREADY_EXISTS"}


def default_embedded_dir() -> Path:
    """Where the embedded default keeps its sqlite store and artifacts."""
    return Path(platformdirs.user_data_dir("mlcache"))


def _read_experiment(answer: dict[str, Any]) -> ExpDoc:
    return exp_doc(experiment_entity(answer.get("experiment")))


def _read_model(answer: dict[str, Any]) -> ModelDoc:
    return model_doc(registered_model_entity(answer.get("registered_model")))


def _read_logged_model(answer: dict[str, Any]) -> LoggedModelDoc:
    return logged_doc(logged_model_entity(answer.get("model")))


def _read_model_version(answer: dict[str, Any]) -> ModelVersionDoc:
    return mv_doc(model_version_entity(answer.get("model_version")))


class MlflowApi(MlflowSearches, MlflowWrites, BaseMlflowApi):
    """mlcache in front of an MLflow 3 tracking server and model registry."""

    tracking_uri: str | None = None
    registry_uri: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = Field(
        default_factory=lambda: env_seconds("MLFLOW_HTTP_REQUEST_TIMEOUT", 120.0, minimum=MIN_TIMEOUT), ge=MIN_TIMEOUT
    )
    http_max_retries: int = 0
    http_backoff_factor: float = 0.0
    embedded_dir: Path = Field(default_factory=default_embedded_dir)

    _client: MlflowClient | None = PrivateAttr(None)
    _readers: dict[bool, RestReader | None] = PrivateAttr(default_factory=dict)

    @property
    def resolved_tracking_uri(self) -> str:
        """The tracking URI: argument, then `MLFLOW_TRACKING_URI`, then the embedded sqlite store."""
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{self.embedded_dir / 'mlflow.db'}"

    @property
    def is_embedded(self) -> bool:
        return not (self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))

    @property
    def client(self) -> MlflowClient:
        """The MlflowClient, built on first use (this is where mlflow is imported)."""
        if self._client is None:
            try:
                from mlflow import MlflowClient
            except ImportError as exc:
                missing = BackendError(
                    "the mlflow plugin needs mlflow, which is not installed: pip install 'mlcache[mlflow]', "
                    "or read the cache alone with offline_mode=True (MLCACHE_OFFLINE=1)"
                )
                missing.cli_text = (
                    "the mlflow plugin needs mlflow, which is not installed: pip install 'mlcache[mlflow]', "
                    "or read the cache alone with --offline (MLCACHE_OFFLINE=1)"
                )
                raise missing from exc

            mlflow_http.install()
            if self.is_embedded:
                self.embedded_dir.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.resolved_tracking_uri, registry_uri=self.registry_uri)
        return self._client

    # ----------------------------------------------------------------- calls
    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        """One client call, its HTTP bounded by the deadline of the backend call in progress (else
        `timeout` from now; importing mlflow on the first call does not count), MLflow's errors
        translated to the hooks' error contract."""
        started = time.monotonic()
        from mlflow.exceptions import MlflowException

        self.client  # noqa: B018 - builds the client (and bounds MLflow's HTTP) before the first call
        limits = self._limits(time.monotonic() - started)
        try:
            with mlflow_http.bounded(limits) as sent:
                return fn()
        except mlflow_http.DeadlinePassed as exc:
            raise self._unreachable(exc, sent) from exc
        except MlflowException as exc:
            if is_connection_error(exc):
                raise self._unreachable(exc, sent) from exc
            if exc.error_code in _NOT_FOUND:
                raise EntityNotFound(what, key, exc.message) from exc
            if exc.error_code in _EXISTS:
                raise EntityExists(f"{what} {key!r} already exists: {exc.message}") from exc
            raise BackendError(f"MLflow refused {what} {key!r}: {exc.message}", http_status(exc)) from exc

    def _limits(self, building: float) -> mlflow_http.HttpLimits:
        """The bounds of one call's HTTP: the deadline of the backend call in progress (moved by the
        `building` seconds spent importing and building the client), else `timeout` from now."""
        current = deadline.current()
        return mlflow_http.HttpLimits(
            self.http_max_retries,
            self.http_backoff_factor,
            self.connect_timeout,
            self.request_timeout,
            time.monotonic() + self.timeout if current is None else current + building,
        )

    def _reader(self, registry: bool) -> RestReader | None:
        """mlcache's own REST reader of the tracking server (or of the registry's), when it can send
        what MlflowClient would (see `rest`); built once per api."""
        if registry not in self._readers:
            uri = self.resolved_tracking_uri
            if registry:
                uri = self.registry_uri or os.environ.get("MLFLOW_REGISTRY_URI") or uri
            self._readers[registry] = RestReader(uri) if rest_usable_for(uri) else None
        return self._readers[registry]

    def _rest(
        self,
        reader: RestReader,
        what: str,
        key: str,
        request: tuple[str, str, dict[str, Any]],
        read: Callable[[dict[str, Any]], T],
    ) -> T:
        """One REST read of mlcache's own, `(method, endpoint, payload)`, its answer turned into what
        the caller needs by `read` (`RestReader.request`); bounded, with its errors translated like
        `_call`'s."""
        from urllib3.exceptions import HTTPError

        sent = mlflow_http.Sent()
        try:
            return reader.request(*request, self._limits(0.0), sent, read)
        except mlflow_http.DeadlinePassed as exc:
            raise self._unreachable(exc, sent) from exc
        except HTTPError as exc:
            raise self._unreachable(linked_causes(exc), sent) from exc
        except RestError as exc:
            if exc.error_code in _NOT_FOUND:
                raise EntityNotFound(what, key, exc.message) from exc
            if exc.error_code == "MALFORMED_ANSWER":
                raise BackendError(f"MLflow answered {what} {key!r} wrongly: {exc.message}") from exc
            raise BackendError(f"MLflow refused {what} {key!r}: {exc.message}", exc.status) from exc

    def _unreachable(self, exc: BaseException, sent: mlflow_http.Sent) -> ServerUnreachable:
        """The error for a server that could not be reached, saying what happened and how to go on without it."""
        return ServerUnreachable(
            f"MLflow server at {self.resolved_tracking_uri} {what_happened(exc, sent, self.timeout)}"
        )

    def _impl_transfer_for(self, url: str) -> Transfer | None:
        """Artifacts behind MLflow's artifact proxy go through the MLflow client."""
        if url.startswith(("mlflow-artifacts:", "http://", "https://")):
            from .transfer import MlflowArtifactsTransfer

            return MlflowArtifactsTransfer(self.resolved_tracking_uri, self._call)
        return None

    # ----------------------------------------------------------------- documents
    # ----------------------------------------------------------------- reads
    def _impl_fetch_exp(self, exp_id: str) -> ExpDoc:
        if not exp_id.isdigit():
            raise EntityNotFound("experiment", exp_id, "MLflow experiment ids are numbers")
        reader = self._reader(registry=False)
        if reader is not None:
            request = ("GET", "experiments/get", {"experiment_id": exp_id})
            return self._rest(reader, "experiment", exp_id, request, _read_experiment)
        return exp_doc(self._call("experiment", exp_id, lambda: self.client.get_experiment(exp_id)))

    def _impl_fetch_exp_by_name(self, name: str) -> ExpDoc:
        reader = self._reader(registry=False)
        if reader is not None:
            request = ("GET", "experiments/get-by-name", {"experiment_name": name})
            return self._rest(reader, "experiment", name, request, _read_experiment)
        exp = self._call("experiment", name, lambda: self.client.get_experiment_by_name(name))
        if exp is None:
            raise EntityNotFound("experiment", name)
        return exp_doc(exp)

    def _impl_fetch_run(self, run_id: str) -> RunDoc:
        reader = self._reader(registry=False)
        if reader is not None:
            request = ("GET", "runs/get", {"run_id": run_id})
            return self._rest(reader, "run", run_id, request, lambda answer: run_doc(run_entity(answer.get("run"))))
        return run_doc(self._call("run", run_id, lambda: self.client.get_run(run_id)))

    def _impl_fetch_model(self, name: str) -> ModelDoc:
        reader = self._reader(registry=True)
        if reader is not None:
            request = ("GET", "registered-models/get", {"name": name})
            return self._rest(reader, "model", name, request, _read_model)
        return model_doc(self._call("model", name, lambda: self.client.get_registered_model(name)))

    def _impl_fetch_model_version(self, name: str, version: str) -> ModelVersionDoc:
        key = f"models:/{name}/{version}"
        reader = self._reader(registry=True)
        if reader is not None:
            request = ("GET", "model-versions/get", {"name": name, "version": version})
            return self._rest(reader, "model version", key, request, _read_model_version)
        return mv_doc(self._call("model version", key, lambda: self.client.get_model_version(name, version)))

    def _impl_fetch_model_version_by_alias(self, name: str, alias: str) -> ModelVersionDoc:
        key = f"models:/{name}@{alias}"
        reader = self._reader(registry=True)
        try:
            if reader is not None:
                request = ("GET", "registered-models/alias", {"name": name, "alias": alias})
                return self._rest(reader, "model version", key, request, _read_model_version)
            found = self._call("model version", key, lambda: self.client.get_model_version_by_alias(name, alias))
        except BackendError as exc:
            if exc.status == 400 and "alias" in str(exc) and "not found" in str(exc):
                raise EntityNotFound("model version", key, f"model {name!r} has no alias {alias!r}") from exc
            raise
        return mv_doc(found)

    def _impl_fetch_logged_model(self, model_id: str) -> LoggedModelDoc:
        reader = self._reader(registry=False)
        if reader is not None:
            request: tuple[str, str, dict[str, Any]] = ("GET", f"logged-models/{quote(model_id, safe='')}", {})
            return self._rest(reader, "logged model", model_id, request, _read_logged_model)
        return logged_doc(self._call("logged model", model_id, lambda: self.client.get_logged_model(model_id)))
