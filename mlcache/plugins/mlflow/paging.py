"""The page token of a search that takes several MLflow requests (experiments found once, chunks of
an `IN` list, MLflow's own token), carried between pages as JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...errors import BackendError


@dataclass(frozen=True)
class SearchState:
    """Where a paged search of several requests stands: the experiments it covers (found once),
    the chunk of a chunked `IN` list, and MLflow's own page token; carried in the page token."""

    exp_ids: list[str] | None = None
    chunk: int = 0
    token: str | None = None

    @classmethod
    def read(cls, page_token: str | None) -> SearchState:
        if not page_token:
            return cls()
        try:
            state = json.loads(page_token)
            return cls(state.get("exp_ids"), int(state.get("chunk", 0)), state.get("token"))
        except (ValueError, TypeError, AttributeError) as exc:
            raise BackendError(f"not a page token of this plugin: {page_token[:80]!r}") from exc

    def next(self, chunks: int) -> str | None:
        """The token of the page after this one: MLflow's next page, else the next chunk, else none."""
        if self.token:
            return json.dumps({"exp_ids": self.exp_ids, "chunk": self.chunk, "token": self.token})
        if self.chunk + 1 < chunks:
            return json.dumps({"exp_ids": self.exp_ids, "chunk": self.chunk + 1, "token": None})
        return None
