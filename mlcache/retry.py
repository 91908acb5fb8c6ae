"""Retry of transient faults, per operation, with pluggable classification.

Operations: get, search, create, update, log, register, list, pull, push, delete. Retryable by
default: connection errors and timeouts, MLflow answers 5xx/429, object-store 5xx, rclone's
retryable exits. Client errors (4xx, bad input, a missing entity) fail at once. Each retry is
logged with the operation and its cause.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import BackendError, InvalidSetting, ServerUnreachable
from .settings import parse_int, parse_seconds, raw

log = logging.getLogger("mlcache.retry")
T = TypeVar("T")

OPERATIONS = ("get", "search", "create", "update", "log", "register", "list", "pull", "push", "delete")
_RETRYABLE_HTTP = {429, 500, 502, 503, 504}


def _parse_fraction(text: str, what: str) -> float:
    value = parse_seconds(text, what)
    if value > 1:
        raise InvalidSetting(f"{what}={text!r} is not a fraction; use a number from 0 to 1")
    return value


def _parse_backoff(text: str, what: str) -> float:
    return parse_seconds(text, what, minimum=1.0)


_ENV_FIELDS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "ATTEMPTS": ("attempts", lambda text, what: parse_int(text, what, minimum=1)),
    "INITIAL_WAIT": ("initial_wait", parse_seconds),
    "BACKOFF": ("backoff", _parse_backoff),
    "MAX_WAIT": ("max_wait", parse_seconds),
    "JITTER": ("jitter", _parse_fraction),
}


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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """`MLCACHE_RETRY_ATTEMPTS`, `_INITIAL_WAIT`, `_BACKOFF`, `_MAX_WAIT`, `_JITTER`, and per
        operation `MLCACHE_RETRY_<OP>_ATTEMPTS` (and the same suffixes). A bad value is an
        `InvalidSetting` naming the variable."""

        def read(prefix: str) -> dict[str, Any]:
            found: dict[str, Any] = {}
            for suffix, (name, parse) in _ENV_FIELDS.items():
                text = raw(f"{prefix}{suffix}", environ)
                if text is not None:
                    found[name] = parse(text, f"{prefix}{suffix}")
            return found

        overrides = {op: values for op in OPERATIONS if (values := read(f"MLCACHE_RETRY_{op.upper()}_"))}
        try:
            return cls(**read("MLCACHE_RETRY_"), overrides=overrides)
        except ValidationError as exc:
            raise InvalidSetting(f"retry settings from the environment: {exc.errors()[0]['msg']}") from None

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

    def call(self, operation: str, fn: Callable[[], T], what: str = "", deadline: float | None = None) -> T:
        """Run `fn`, retrying transient failures of `operation` as the policy says; with a `deadline` (a
        `time.monotonic()` value) no retry waits past it, so the last failure is raised instead."""
        policy = self.for_operation(operation)
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                if attempt >= policy.attempts or not policy.is_retryable(exc):
                    raise
                pause = policy.wait(attempt)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
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
