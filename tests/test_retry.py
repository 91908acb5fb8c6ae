"""Retry policy: per-operation overrides, environment, classification, logging."""

from __future__ import annotations

import logging

import pytest

from mlcache.errors import BackendError, EntityNotFound, ServerUnreachable
from mlcache.retry import RetryPolicy, default_is_retryable
from mlcache.transfer import TransferError


def test_transient_faults_are_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise BackendError("MLflow refused run 'x': 503", status=503)
        return "ok"

    caplog.set_level(logging.WARNING, "mlcache.retry")
    assert RetryPolicy(attempts=3, initial_wait=0, jitter=0).call("get", flaky, "run x") == "ok"
    assert len(calls) == 3
    assert [r.getMessage().split(" after ")[0] for r in caplog.records] == [
        "retrying get run x in 0.0s (attempt 2 of 3)",
        "retrying get run x in 0.0s (attempt 3 of 3)",
    ]


def test_client_errors_fail_at_once() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise EntityNotFound("run", "x")

    with pytest.raises(EntityNotFound):
        RetryPolicy(attempts=5, initial_wait=0).call("get", missing)
    assert calls == [1]


def test_attempts_are_bounded() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise ServerUnreachable("down")

    with pytest.raises(ServerUnreachable):
        RetryPolicy(attempts=3, initial_wait=0).call("search", down)
    assert len(calls) == 3


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (ServerUnreachable("x"), True),
        (BackendError("x", 503), True),
        (BackendError("x", 429), True),
        (BackendError("x", 500), True),
        (BackendError("x", 400), False),
        (BackendError("x", None), False),
        (TransferError("x", retryable=True), True),
        (TransferError("x", retryable=False), False),
        (EntityNotFound("run", "x"), False),
        (ValueError("bad input"), False),
        (TimeoutError("slow"), True),
    ],
)
def test_classification(exc: BaseException, retryable: bool) -> None:
    assert default_is_retryable(exc) is retryable


def test_overrides_and_environment() -> None:
    policy = RetryPolicy(attempts=2, overrides={"pull": {"attempts": 9, "max_wait": 30}})
    assert policy.for_operation("pull").attempts == 9 and policy.for_operation("pull").max_wait == 30
    assert policy.for_operation("get").attempts == 2
    with pytest.raises(ValueError, match="unknown operation 'fetch'"):
        policy.for_operation("fetch")
    env = {"MLCACHE_RETRY_ATTEMPTS": "6", "MLCACHE_RETRY_PUSH_ATTEMPTS": "10", "MLCACHE_RETRY_PUSH_MAX_WAIT": "60"}
    from_env = RetryPolicy.from_env(env)
    assert from_env.attempts == 6 and from_env.for_operation("push").attempts == 10
    assert from_env.for_operation("push").max_wait == 60 and from_env.for_operation("list").attempts == 6


def test_waits_grow_to_the_cap_with_jitter() -> None:
    policy = RetryPolicy(initial_wait=1, backoff=2, max_wait=5, jitter=0)
    assert [policy.wait(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    jittered = RetryPolicy(initial_wait=1, jitter=0.5)
    assert all(0.5 <= jittered.wait(1) <= 1.5 for _ in range(50))
