"""Bounded HTTP for MLflow calls made by mlcache.

MLflow's client retries a refused connection with exponential backoff for minutes, configured only
through process-wide environment variables, which mlcache never changes. Instead, while one of
mlcache's own calls runs (a context variable), MLflow's `http_request` gets mlcache's retry count,
backoff and (connect, read) timeouts as defaults. Calls made by other code are untouched.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

_MODULES = ("mlflow.utils.rest_utils", "mlflow.store.artifact.http_artifact_repo")


@dataclass(frozen=True)
class HttpLimits:
    """Defaults handed to MLflow's `http_request` during mlcache's calls."""

    max_retries: int
    backoff_factor: float
    connect_timeout: float
    read_timeout: float


_limits: ContextVar[HttpLimits | None] = ContextVar("mlcache_http_limits", default=None)


def _bounded(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def http_request(*args: Any, **kwargs: Any) -> Any:
        limits = _limits.get()
        if limits is not None:
            kwargs.setdefault("max_retries", limits.max_retries)
            kwargs.setdefault("backoff_factor", limits.backoff_factor)
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = (limits.connect_timeout, limits.read_timeout)
        return original(*args, **kwargs)

    http_request.__mlcache_bounded__ = True  # type: ignore[attr-defined]
    return http_request


def install() -> None:
    """Wrap MLflow's `http_request` where mlcache's calls reach it (idempotent)."""
    import importlib

    for name in _MODULES:
        module = importlib.import_module(name)
        current = getattr(module, "http_request", None)
        if current is not None and not getattr(current, "__mlcache_bounded__", False):
            module.http_request = _bounded(current)


@contextmanager
def bounded(limits: HttpLimits) -> Iterator[None]:
    """Apply `limits` to MLflow HTTP requests made inside this block (this thread/task only)."""
    token = _limits.set(limits)
    try:
        yield
    finally:
        _limits.reset(token)
