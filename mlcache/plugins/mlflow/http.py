"""Bounded HTTP for MLflow calls made by mlcache.

MLflow's client retries a refused connection with exponential backoff for minutes, configured only
through process-wide environment variables, which mlcache never changes. Instead, while one of
mlcache's own calls runs (a context variable), MLflow's `http_request` gets mlcache's retry count,
backoff and (connect, read) timeouts as defaults. Calls made by other code are untouched.

When the call has a deadline, every request's timeouts (mlcache's defaults, or what MLflow's code
passed) are cut to the time left, connect and read together, and a request due after the deadline
is not sent at all (`DeadlinePassed`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

_MODULES = ("mlflow.utils.rest_utils", "mlflow.store.artifact.http_artifact_repo")


@dataclass(frozen=True)
class HttpLimits:
    """Defaults handed to MLflow's `http_request` during mlcache's calls; `deadline` is a
    `time.monotonic()` value no request may outlast (None: no deadline)."""

    max_retries: int
    backoff_factor: float
    connect_timeout: float
    read_timeout: float
    deadline: float | None = None


@dataclass
class Sent:
    """What the last request of a bounded block was given, so an error can say how long it waited."""

    connect_timeout: float | None = None
    read_timeout: float | None = None


class DeadlinePassed(TimeoutError):
    """A request of an mlcache call was due after the call's deadline, so it was not sent."""


_active: ContextVar[tuple[HttpLimits, Sent] | None] = ContextVar("mlcache_http_limits", default=None)


def _asked(timeout: Any) -> tuple[float, float] | None:
    """The (connect, read) seconds a caller passed as `timeout` (a number or a pair); None for anything else."""
    if isinstance(timeout, tuple | list) and len(timeout) == 2 and all(isinstance(t, int | float) for t in timeout):
        return float(timeout[0]), float(timeout[1])
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return float(timeout), float(timeout)
    return None


def _bounded(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def http_request(*args: Any, **kwargs: Any) -> Any:
        active = _active.get()
        if active is None:
            return original(*args, **kwargs)
        limits, sent = active
        kwargs.setdefault("max_retries", limits.max_retries)
        kwargs.setdefault("backoff_factor", limits.backoff_factor)
        connect, read = _asked(kwargs.get("timeout")) or (limits.connect_timeout, limits.read_timeout)
        if limits.deadline is None:
            kwargs["timeout"] = (connect, read)
        else:
            from urllib3.util import Timeout

            left = limits.deadline - time.monotonic()
            if left <= 0:
                raise DeadlinePassed("the deadline passed before this request could be sent")
            connect, read = min(connect, left), min(read, left)
            kwargs["timeout"] = Timeout(connect=connect, read=read, total=left)
        sent.connect_timeout, sent.read_timeout = connect, read
        return original(*args, **kwargs)

    http_request.__mlcache_bounded__ = True  # type: ignore[attr-defined]
    return http_request


def install() -> None:
    """Wrap MLflow's `http_request` where mlcache's calls reach it (idempotent), and run MLflow's request
    header lookup once, whose first run imports modules for a good half second that no deadline should pay."""
    import importlib

    for name in _MODULES:
        module = importlib.import_module(name)
        current = getattr(module, "http_request", None)
        if current is not None and not getattr(current, "__mlcache_bounded__", False):
            setattr(module, "http_request", _bounded(current))  # noqa: B010 - not every module declares it
    from mlflow.tracking.request_header.registry import resolve_request_headers

    resolve_request_headers()


@contextmanager
def bounded(limits: HttpLimits) -> Iterator[Sent]:
    """Apply `limits` to MLflow HTTP requests made inside this block (this thread/task only)."""
    sent = Sent()
    token = _active.set((limits, sent))
    try:
        yield sent
    finally:
        _active.reset(token)
