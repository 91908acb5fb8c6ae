"""MLflow 3 logged models in `BaseMlflowApi`: get, cache and export their metadata.

`mlflow.<flavor>.log_model(..., registered_model_name=...)` creates a logged model and a version
whose source is `models:/m-<id>`; the files live under the logged model's artifact location.
A version's metadata brings its logged model along, so every identifier resolves offline.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .handles import LoggedModelApi, bind
from .identifiers import ExpRef, require_logged_model_id
from .records import logged_from_record

if TYPE_CHECKING:
    from collections.abc import Callable

    from .base import Freshness
    from .handles import ExpApi
    from .metadata_store import MetadataStore, Record


class LoggedModelsMixin:
    """get_logged_model / cache_logged_model_meta / export_logged_model_meta."""

    if TYPE_CHECKING:
        _meta: MetadataStore

        def _resolve(
            self,
            what: tuple[str, str],
            lookup: Callable[[], Record | None],
            fetch: Callable[[], dict[str, Any]],
            store: Callable[[dict[str, Any]], Record],
            freshness: Freshness,
            hint: str,
        ) -> Record: ...
        def _exp_record(self, ref: ExpRef, freshness: Freshness) -> Record: ...
        def _compose_exp(self, record: Record) -> ExpApi: ...
        def _target_store(self, target: Path | str) -> MetadataStore: ...
        def export_exp_meta(self, exp: Any, target: Path | str) -> ExpApi: ...

    @abstractmethod
    def _impl_fetch_logged_model(self, model_id: str) -> dict[str, Any]: ...

    def _logged_record(self, model_id: str, freshness: Freshness) -> Record:
        return self._resolve(
            ("logged model", model_id),
            lambda: self._meta.get("lm", (model_id,)),
            lambda: self._impl_fetch_logged_model(model_id),
            lambda data: self._meta.put("lm", (data["id"],), data),
            freshness,
            f"call api.cache_logged_model_meta({model_id!r})",
        )

    def _compose_logged(self, record: Record, freshness: Freshness = "nested") -> LoggedModelApi:
        exp = self._compose_exp(self._exp_record(ExpRef(id=str(record.data.get("exp_id"))), freshness))
        return bind(LoggedModelApi, logged_from_record(record.data, exp, record.path), self)  # type: ignore[arg-type]

    def get_logged_model(self, logged_model: Any, force_refresh: bool = False) -> LoggedModelApi:
        """Logged model by entity, handle, `m-<id>` or `models:/m-<id>`."""
        model_id = require_logged_model_id(logged_model)
        return self._compose_logged(self._logged_record(model_id, "force" if force_refresh else "normal"))

    def cache_logged_model_meta(self, logged_model: Any) -> LoggedModelApi:
        """Fetch the logged model and its experiment into the cache."""
        model_id = require_logged_model_id(logged_model)
        return self._compose_logged(self._logged_record(model_id, "force"), "force")

    def export_logged_model_meta(self, logged_model: Any, target: Path | str) -> LoggedModelApi:
        """Write the logged model's metadata and its experiment's into `target`."""
        found = self.get_logged_model(logged_model)
        self.export_exp_meta(found.exp, target)
        self._target_store(target).put("lm", (found.id,), self._logged_record(found.id, "nested").data)
        return found
