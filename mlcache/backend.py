"""Calling a plugin's hooks: each call under the `RetryPolicy` of its operation and one deadline.

Engines never call a hook directly: they go through `Backend`, so retries, deadlines and paging
are the same for every plugin, and a plugin only speaks its backend's protocol.
"""

from __future__ import annotations

import contextvars
import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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
        """The pages of a paged search, one call each. While the caller works through a page, the
        next one is fetched on a thread beside it (one call ahead, never more), so the server's time
        and the caller's overlap; a caller that stops early costs at most that one call, which is
        left to finish within its deadline. An error of a call is raised where its page is due."""
        page = self.call(what, hook, *args, None)
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlcache-next-page")
        try:
            while True:
                following: Future[Page[T]] | None = None
                if page.next_token:
                    fetch = functools.partial(self.call, what, hook, *args, page.next_token)
                    following = ahead.submit(contextvars.copy_context().run, fetch)
                yield list(page.items)
                if following is None:
                    return
                page = following.result()
        finally:
            ahead.shutdown(wait=False, cancel_futures=True)
