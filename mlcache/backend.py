"""Calling a plugin's hooks: each call under the `RetryPolicy` of its operation and one deadline.

Engines never call a hook directly: they go through `Backend`, so retries, deadlines and paging
are the same for every plugin, and a plugin only speaks its backend's protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import deadline
from .hooks import HOOK_OPERATIONS, Page, PluginHooks
from .retry import RetryPolicy
from .transfer import Transfer

T = TypeVar("T")


class Backend:
    """The hooks of one plugin instance, called with retries within `timeout` seconds per call."""

    def __init__(self, hooks: PluginHooks, retry: RetryPolicy, timeout: float | None) -> None:
        self.hooks = hooks
        self.retry = retry
        self.timeout = timeout

    def call(self, what: str, hook: Callable[..., T], *args: Any) -> T:
        """`hook(*args)` under the retry policy of its operation; `what` names it in retry logs."""
        operation = HOOK_OPERATIONS[hook.__name__]
        until = None if self.timeout is None else time.monotonic() + self.timeout
        with deadline.scope(until):
            return self.retry.call(operation, lambda: hook(*args), what, until)

    def transfer_for(self, url: str) -> Transfer | None:
        """The plugin's own transfer for `url` (an artifact proxy), None for the api's transfer."""
        return self.hooks._impl_transfer_for(url)

    def pages(self, what: str, hook: Callable[..., Page[T]], *args: Any) -> Iterator[list[T]]:
        """The pages of a paged search, one call each, asked for only as they are consumed."""
        token: str | None = None
        while True:
            page = self.call(what, hook, *args, token)
            yield list(page.items)
            token = page.next_token
            if not token:
                return
