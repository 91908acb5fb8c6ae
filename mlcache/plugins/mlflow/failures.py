"""How a call to MLflow failed, in words a user can act on: refused, unknown host, silence, a
deadline, or the root cause; and the HTTP status behind an MlflowException."""

from __future__ import annotations

from typing import Any

from . import http as mlflow_http


def is_connection_error(exc: BaseException) -> bool:
    """Whether a connection that failed or timed out is somewhere in `exc`'s chain."""
    import requests

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def http_status(exc: Any) -> int | None:
    """The HTTP status behind an MlflowException: a retried-out 5xx/429, or the error code's."""
    import requests

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.RetryError):
            return 503
        seen = seen.__cause__ or seen.__context__
    try:
        return int(exc.get_http_status_code())
    except (AttributeError, TypeError, ValueError):
        return None


def _root_cause(exc: BaseException) -> str:
    seen = exc
    while (seen.__cause__ or seen.__context__) is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen)
    return text.rsplit(": ", 1)[-1].strip("')\"") if "Errno" in text else type(seen).__name__


def _seconds(value: float | None) -> str:
    """Seconds as people write them in a message: `2s`, `1.5s`."""
    return f"{round(value or 0.0, 1):g}s"


def what_happened(exc: BaseException, sent: mlflow_http.Sent, deadline: float) -> str:
    """What a failed connection attempt met, in words: refused, unknown host, silence, or its root cause."""
    import socket
    from http.client import RemoteDisconnected

    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError, ReadTimeoutError

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__

    def met(*kinds: type[BaseException]) -> bool:
        return any(isinstance(item, kinds) for item in chain)

    if met(ConnectionRefusedError):
        return "refused the connection (is the server running, and at this address and port?)"
    if met(NameResolutionError, socket.gaierror):
        return f"could not be found: its host name does not resolve ({_root_cause(exc)})"
    if met(mlflow_http.DeadlinePassed):
        return (
            f"did not answer all requests of this call within its {_seconds(deadline)} deadline "
            "(if it is only slow, raise timeout= or MLCACHE_TIMEOUT)"
        )
    if met(ReadTimeoutError):
        return (
            f"accepted the connection but sent no answer within {_seconds(sent.read_timeout)} "
            "(if it is only slow, raise timeout= or MLCACHE_TIMEOUT)"
        )
    if any(isinstance(item, ConnectTimeoutError) and not isinstance(item, NewConnectionError) for item in chain):
        return f"did not accept the connection within {_seconds(sent.connect_timeout)}"
    if met(RemoteDisconnected, ConnectionResetError):
        return "accepted the connection but closed it without an answer"
    return f"could not be reached ({_root_cause(exc)})"
