"""Retry of transient faults, per operation, with pluggable classification.

Operations: get, search, create, update, log, register, list, pull, push, delete. Retryable by
default: connection errors and timeouts, MLflow answers 5xx/429, object-store 5xx, rclone's
retryable exits. Client errors (4xx, bad input, a missing entity) fail at once. Each retry is
logged with the operation and its cause.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .errors import BackendError, ServerUnreachable

log = logging.getLogger("mlcache.retry")
T = TypeVar("T")

OPERATIONS = ("get", "search", "create", "update", "log", "register", "list", "pull", "push", "delete")
_RETRYABLE_HTTP = {429, 500, 502, 503, 504}


def default_is_retryable(exc: BaseException) -> bool:
    """Transient: unreachable server, 5xx/429 answers, rclone's retryable exits."""
    from .transfer import TransferError

    if isinstance(exc, ServerUnreachable):
        return True
    if isinstance(exc, TransferError):
        return exc.retryable
    if isinstance(exc, BackendError):
        return exc.status is not None and exc.status in _RETRYABLE_HTTP
    return isinstance(exc, ConnectionError | TimeoutError)


class RetryPolicy(BaseModel):
    """How often and how patiently to retry; `overrides` per operation (e.g. `{"pull": {"attempts": 8}}`)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    attempts: int = Field(4, ge=1)
    initial_wait: float = Field(0.5, ge=0)
    backoff: float = Field(2.0, ge=1)
    max_wait: float = Field(8.0, ge=0)
    jitter: float = Field(0.2, ge=0, le=1)
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)
    is_retryable: Callable[[BaseException], bool] = default_is_retryable

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RetryPolicy:
        """`MLCACHE_RETRY_ATTEMPTS`, `_INITIAL_WAIT`, `_BACKOFF`, `_MAX_WAIT`, `_JITTER`, and per
        operation `MLCACHE_RETRY_<OP>_ATTEMPTS` (and the same suffixes)."""
        env = os.environ if environ is None else environ
        fields = {
            "ATTEMPTS": "attempts",
            "INITIAL_WAIT": "initial_wait",
            "BACKOFF": "backoff",
            "MAX_WAIT": "max_wait",
            "JITTER": "jitter",
        }
        base = {
            name: env[f"MLCACHE_RETRY_{suffix}"] for suffix, name in fields.items() if f"MLCACHE_RETRY_{suffix}" in env
        }
        overrides: dict[str, dict[str, Any]] = {}
        for op in OPERATIONS:
            for suffix, name in fields.items():
                value = env.get(f"MLCACHE_RETRY_{op.upper()}_{suffix}")
                if value is not None:
                    overrides.setdefault(op, {})[name] = value
        return cls(**base, overrides=overrides)

    def for_operation(self, operation: str) -> RetryPolicy:
        """The policy of one operation (its overrides applied)."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; one of {', '.join(OPERATIONS)}")
        extra = self.overrides.get(operation)
        return self.model_copy(update={**type(self)(**extra).model_dump(include=set(extra))}) if extra else self

    def wait(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based), jittered."""
        base = min(self.max_wait, self.initial_wait * self.backoff ** (attempt - 1))
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))

    def call(self, operation: str, fn: Callable[[], T], what: str = "") -> T:
        """Run `fn`, retrying transient failures of `operation` as the policy says."""
        policy = self.for_operation(operation)
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                if attempt >= policy.attempts or not policy.is_retryable(exc):
                    raise
                pause = policy.wait(attempt)
                cause = str(exc).splitlines()[0][:300] if str(exc) else ""
                log.warning(
                    "retrying %s%s in %.1fs (attempt %d of %d) after %s: %s",
                    operation,
                    f" {what}" if what else "",
                    pause,
                    attempt + 1,
                    policy.attempts,
                    type(exc).__name__,
                    cause,
                )
                time.sleep(pause)
                attempt += 1
