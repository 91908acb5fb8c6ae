"""mlcache's own MLflow REST requests for the reads on hot paths: an experiment, a run, a registered
model, a model version (by number or alias), a logged model, and pages of a run search.

MlflowClient's first request imports much of MLflow (and IPython, through its Databricks header
provider) and turns every answer into protobuf messages, then entities; for these reads mlcache sends
the request itself over a kept-alive connection and reads the JSON. This is used only where it sends
exactly what MLflow would: an http(s) tracking URI, no custom auth (`MLFLOW_TRACKING_AUTH`) and no
request-header plugin installed; basic or bearer auth (`MLFLOW_TRACKING_USERNAME`/`_PASSWORD`,
`MLFLOW_TRACKING_TOKEN`) and TLS settings (`MLFLOW_TRACKING_INSECURE_TLS`,
`MLFLOW_TRACKING_SERVER_CERT_PATH`, `MLFLOW_TRACKING_CLIENT_CERT_PATH`) are honoured. Everything else
goes through MlflowClient.

An answer is hostile input: it must be a JSON object of the documented shape, or the read fails
with a `RestError` naming what was wrong.
"""

from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, TypeVar
from urllib.parse import urlencode

from ...collector import collector_paused
from ...errors import MlcacheError
from .http import DeadlinePassed, HttpLimits, Sent

T = TypeVar("T")

API = "/api/2.0/mlflow/"
_RETRIED_STATUSES = (429, 500, 502, 503, 504)


class RestError(MlcacheError):
    """MLflow answered a request with an error (`error_code`, HTTP `status`), or with something that is
    not an answer of the documented shape (`error_code` "MALFORMED_ANSWER")."""

    def __init__(self, message: str, error_code: str, status: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code
        self.status = status


@functools.cache
def _header_plugins_installed() -> bool:
    """Whether a package adds MLflow request headers, which only MlflowClient would send."""
    from importlib.metadata import entry_points

    return bool(entry_points(group="mlflow.request_header_provider"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def usable_for(tracking_uri: str) -> bool:
    """Whether mlcache's own requests send what MlflowClient would send to `tracking_uri`."""
    if not tracking_uri.startswith(("http://", "https://")):
        return False
    if os.environ.get("MLFLOW_TRACKING_AUTH"):
        return False
    return not _header_plugins_installed()


@dataclass
class RestReader:
    """Reads one MLflow server's REST API over a pool of kept-alive connections."""

    base_url: str

    def __post_init__(self) -> None:
        import urllib3

        self.base_url = self.base_url.rstrip("/")
        insecure = _truthy(os.environ.get("MLFLOW_TRACKING_INSECURE_TLS"))
        options: dict[str, Any] = {"maxsize": 8, "cert_reqs": "CERT_NONE" if insecure else "CERT_REQUIRED"}
        if not insecure and os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
            options["ca_certs"] = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
        if os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH"):
            options["cert_file"] = os.environ["MLFLOW_TRACKING_CLIENT_CERT_PATH"]
        self._pool = urllib3.PoolManager(**options)

    def _headers(self) -> dict[str, str]:
        from ... import __version__

        headers = {"User-Agent": f"mlcache/{__version__}", "Content-Type": "application/json"}
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if user and password:
            headers["Authorization"] = "Basic " + base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def request(
        self,
        method: str,
        endpoint: str,
        payload: dict[str, Any],
        limits: HttpLimits,
        sent: Sent,
        convert: Callable[[dict[str, Any]], T],
    ) -> T:
        """One request to `API + endpoint` (GET: `payload` as the query; POST: as the JSON body), within
        `limits`; its answer, a JSON object, turned into what the caller needs by `convert`. Both are done
        with the cyclic collector paused (a page of documents is built there). A connection that
        fails raises urllib3's error (or `DeadlinePassed`); an answer that is an error raises `RestError`."""
        import time

        import urllib3

        connect, read = limits.connect_timeout, limits.read_timeout
        if limits.deadline is not None:
            left = limits.deadline - time.monotonic()
            if left <= 0:
                raise DeadlinePassed("the deadline passed before this request could be sent")
            connect, read = min(connect, left), min(read, left)
            timeout = urllib3.Timeout(connect=connect, read=read, total=left)
        else:
            timeout = urllib3.Timeout(connect=connect, read=read)
        sent.connect_timeout, sent.read_timeout = connect, read
        retries = urllib3.Retry(
            total=limits.max_retries,
            backoff_factor=limits.backoff_factor,
            status_forcelist=_RETRIED_STATUSES,
            allowed_methods=None,
            raise_on_status=False,
            redirect=0,
        )
        url = f"{self.base_url}{API}{endpoint}"
        body: bytes | None = None
        if method == "GET":
            url = f"{url}?{urlencode(payload)}" if payload else url
        else:
            body = json.dumps(payload).encode()
        answer = self._pool.request(
            method, url, body=body, headers=self._headers(), timeout=timeout, retries=retries, preload_content=True
        )
        with collector_paused():
            return convert(_read_answer(answer.status, answer.data, f"{method} {endpoint}"))


def linked_causes(exc: BaseException) -> BaseException:
    """`exc`, with what urllib3 keeps in `reason` or `args` (the refused socket, the read timeout)
    linked as each error's cause, so a message can say what the connection met."""
    seen = exc
    for _ in range(10):
        inner = seen.__cause__ or seen.__context__ or getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in seen.args if isinstance(arg, BaseException)), None)
        if inner is None or inner is seen:
            break
        if seen.__cause__ is None and seen.__context__ is None:
            seen.__cause__ = inner
        seen = inner
    return exc


def _read_answer(status: int, data: bytes, what: str) -> dict:
    """The JSON object of an answer; an error answer or one that is not JSON raises `RestError`."""
    try:
        parsed = json.loads(data) if data else {}
    except ValueError:
        parsed = None
    if status >= 400:
        if isinstance(parsed, dict) and isinstance(parsed.get("error_code"), str):
            message = parsed.get("message")
            text = message if isinstance(message, str) else parsed["error_code"]
            raise RestError(f"{parsed['error_code']}: {text}", parsed["error_code"], status)
        shown = data[:200].decode("utf-8", "replace").strip() or "(no body)"
        raise RestError(f"HTTP {status} for {what}: {shown}", f"HTTP_{status}", status)
    if not isinstance(parsed, dict):
        raise RestError(f"the answer to {what} is not a JSON object", "MALFORMED_ANSWER", status)
    return parsed


def _malformed(what: str) -> RestError:
    return RestError(f"the server's answer has no well-formed {what}", "MALFORMED_ANSWER", None)


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _malformed(what)
    return value


def _text(value: Any, what: str, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _malformed(what)
    return value


def _millis(value: Any, what: str) -> int | None:
    """An int64 field: MLflow writes it as a number, protobuf's JSON as a string of digits."""
    if value is None:
        return None
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _malformed(what)


def _objects(items: Any, what: str, item_what: str) -> list[dict]:
    """A repeated message field: absent is empty, anything but a list of objects is malformed."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise _malformed(what)
    return [_object(item, item_what) for item in items]


def _pairs(items: Any, what: str) -> dict[str, str]:
    """`[{"key": k, "value": v}, ...]` as a dict; a missing value is the empty string proto2 left out."""
    pairs: dict[str, str] = {}
    for item in _objects(items, what, what):
        key = _text(item.get("key"), what, required=True)
        value = item.get("value", "")
        pairs[key] = _text(value, what, required=True)  # type: ignore[index,assignment]
    return pairs


def _number(value: Any, what: str) -> float:
    """A double: a JSON number, or protobuf JSON's "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, bool):
        raise _malformed(what)
    if isinstance(value, int | float):
        return float(value)
    if value in ("NaN", "Infinity", "-Infinity"):
        return float(value)
    raise _malformed(what)


def _latest_metrics(items: Any) -> dict[str, float]:
    """A run's `data.metrics` (the latest value of each key) as the client's `{key: value}`."""
    metrics: dict[str, float] = {}
    for item in _objects(items, "run metrics", "run metrics"):
        key = _text(item.get("key"), "run metric key", required=True)
        value = _number(item.get("value"), "run metric value")
        metrics[key] = value  # type: ignore[index]
    return metrics


def _page(answer: dict[str, Any], field: str, what: str) -> tuple[list, str | None]:
    """The items and next page token of one search answer."""
    items = answer.get(field) or []
    token = answer.get("next_page_token") or None
    if not isinstance(items, list) or not isinstance(token, str | None):
        raise _malformed(what)
    return items, token


def read_experiment_ids_page(answer: dict[str, Any]) -> tuple[list[str], str | None]:
    """The experiment ids and next page token of an experiments search answer."""
    items, token = _page(answer, "experiments", "page of experiments")
    ids = [_text(_object(item, "experiment").get("experiment_id"), "experiment id", required=True) for item in items]
    return ids, token  # type: ignore[return-value]


def read_runs_page(answer: dict[str, Any]) -> tuple[list[SimpleNamespace], str | None]:
    """The runs (as `run_entity`) and next page token of a runs search answer."""
    items, token = _page(answer, "runs", "page of runs")
    return [run_entity(item) for item in items], token


def run_entity(raw: Any) -> SimpleNamespace:
    """A run of the REST answer, with the attributes of the client's `Run` that `run_doc` reads."""
    raw = _object(raw, "run")
    info = _object(raw.get("info"), "run info")
    data = _object(raw.get("data") or {}, "run data")
    return SimpleNamespace(
        info=SimpleNamespace(
            run_id=_text(info.get("run_id") or info.get("run_uuid"), "run id", required=True),
            run_name=_text(info.get("run_name"), "run name"),
            experiment_id=_text(info.get("experiment_id"), "run experiment id", required=True),
            status=_text(info.get("status"), "run status", required=True),
            start_time=_millis(info.get("start_time"), "run start time"),
            end_time=_millis(info.get("end_time"), "run end time"),
            artifact_uri=_text(info.get("artifact_uri"), "run artifact uri"),
            lifecycle_stage=_text(info.get("lifecycle_stage"), "run lifecycle stage"),
        ),
        data=SimpleNamespace(
            tags=_pairs(data.get("tags"), "run tags"),
            params=_pairs(data.get("params"), "run params"),
            metrics=_latest_metrics(data.get("metrics")),
        ),
    )


def model_version_entity(raw: Any) -> SimpleNamespace:
    """A model version of the REST answer, with the attributes of the client's `ModelVersion` that
    `mv_doc` reads."""
    raw = _object(raw, "model version")
    aliases = raw.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        raise _malformed("model version aliases")
    return SimpleNamespace(
        name=_text(raw.get("name"), "model name", required=True),
        version=_text(raw.get("version"), "model version number", required=True),
        run_id=_text(raw.get("run_id"), "model version run id"),
        source=_text(raw.get("source"), "model version source"),
        tags=_pairs(raw.get("tags"), "model version tags"),
        aliases=aliases,
        status=_text(raw.get("status"), "model version status"),
        description=_text(raw.get("description"), "model version description"),
        creation_timestamp=_millis(raw.get("creation_timestamp"), "model version creation time"),
        last_updated_timestamp=_millis(raw.get("last_updated_timestamp"), "model version update time"),
        model_id=_text(raw.get("model_id"), "model version model id"),
    )


def experiment_entity(raw: Any) -> SimpleNamespace:
    """An experiment of the REST answer, with the attributes of the client's `Experiment` that `exp_doc` reads."""
    raw = _object(raw, "experiment")
    return SimpleNamespace(
        experiment_id=_text(raw.get("experiment_id"), "experiment id", required=True),
        name=_text(raw.get("name"), "experiment name", required=True),
        tags=_pairs(raw.get("tags"), "experiment tags"),
        artifact_location=_text(raw.get("artifact_location"), "experiment artifact location"),
        lifecycle_stage=_text(raw.get("lifecycle_stage"), "experiment lifecycle stage"),
        creation_time=_millis(raw.get("creation_time"), "experiment creation time"),
        last_update_time=_millis(raw.get("last_update_time"), "experiment update time"),
    )


def registered_model_entity(raw: Any) -> SimpleNamespace:
    """A registered model of the REST answer, with the attributes of the client's `RegisteredModel`
    that `model_doc` reads (its aliases as the client's `{alias: version}`)."""
    raw = _object(raw, "registered model")
    aliases: dict[str, str] = {}
    for item in _objects(raw.get("aliases"), "registered model aliases", "registered model alias"):
        alias = _text(item.get("alias"), "registered model alias", required=True)
        aliases[alias] = _text(item.get("version"), "registered model alias version", required=True)  # type: ignore[index,assignment]
    return SimpleNamespace(
        name=_text(raw.get("name"), "model name", required=True),
        tags=_pairs(raw.get("tags"), "registered model tags"),
        aliases=aliases,
        description=_text(raw.get("description"), "registered model description"),
        creation_timestamp=_millis(raw.get("creation_timestamp"), "registered model creation time"),
        last_updated_timestamp=_millis(raw.get("last_updated_timestamp"), "registered model update time"),
    )


_LOGGED_MODEL_STATUSES = {
    "LOGGED_MODEL_STATUS_UNSPECIFIED": "UNSPECIFIED",
    "LOGGED_MODEL_PENDING": "PENDING",
    "LOGGED_MODEL_READY": "READY",
    "LOGGED_MODEL_UPLOAD_FAILED": "FAILED",
}


def _logged_status(value: Any) -> str:
    """A logged model's status as the client names it (`LOGGED_MODEL_UPLOAD_FAILED` -> `FAILED`); a
    status this table does not know keeps its name without the prefix."""
    status = _text(value, "logged model status") or "LOGGED_MODEL_STATUS_UNSPECIFIED"
    return _LOGGED_MODEL_STATUSES.get(status) or status.removeprefix("LOGGED_MODEL_")


def _logged_metrics(items: Any) -> list[SimpleNamespace]:
    """A logged model's metrics (every logged value, with its step and time), as the client's `Metric`s."""
    return [
        SimpleNamespace(
            key=_text(item.get("key"), "logged model metric key", required=True),
            value=_number(item.get("value"), "logged model metric value"),
            step=_millis(item.get("step"), "logged model metric step") or 0,
            timestamp=_millis(item.get("timestamp"), "logged model metric time") or 0,
        )
        for item in _objects(items, "logged model metrics", "logged model metric")
    ]


def logged_model_entity(raw: Any) -> SimpleNamespace:
    """A logged model of the REST answer, with the attributes of the client's `LoggedModel` that
    `logged_doc` reads."""
    raw = _object(raw, "logged model")
    info = _object(raw.get("info"), "logged model info")
    data = _object(raw.get("data") or {}, "logged model data")
    return SimpleNamespace(
        model_id=_text(info.get("model_id"), "logged model id", required=True),
        name=_text(info.get("name"), "logged model name", required=True),
        experiment_id=_text(info.get("experiment_id"), "logged model experiment id", required=True),
        source_run_id=_text(info.get("source_run_id"), "logged model source run id"),
        artifact_location=_text(info.get("artifact_uri"), "logged model artifact uri"),
        status=_logged_status(info.get("status")),
        model_type=_text(info.get("model_type"), "logged model type"),
        creation_timestamp=_millis(info.get("creation_timestamp_ms"), "logged model creation time"),
        last_updated_timestamp=_millis(info.get("last_updated_timestamp_ms"), "logged model update time"),
        tags=_pairs(info.get("tags"), "logged model tags"),
        params=_pairs(data.get("params"), "logged model params"),
        metrics=_logged_metrics(data.get("metrics")),
    )
