"""Artifact and experiment lifecycle: delete files from the artifact store itself (any rclone
backend or the MLflow artifact proxy) and from the cache; archive, delete and restore experiments."""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, Any

from .identifiers import exp_ref
from .names import safe_relative_path
from .timeutil import utcnow

if TYPE_CHECKING:
    from collections.abc import Callable

    from .artifact_store import ArtifactStore, EntryKey
    from .base import Freshness
    from .handles import ExpApi
    from .identifiers import ExpRef
    from .metadata_store import MetadataStore, Record
    from .retry import RetryPolicy
    from .transfer import Transfer

DELETED_TAG = "mlcache.deleted"


class LifecycleMixin:
    """delete_run_artifact / delete_model_version_artifact / archive_exp / delete_exp / restore_exp."""

    if TYPE_CHECKING:
        retry: RetryPolicy
        _meta: MetadataStore
        _artifacts: ArtifactStore

        def _require_online(self, action: str) -> None: ...
        def _run_target(self, run: Any, path_in_run: str | None) -> tuple[EntryKey, Callable[[], str]]: ...
        def _mv_target(self, model_version: Any) -> tuple[EntryKey, Callable[[], str], str]: ...
        def _transfer_for(self, url: str) -> Transfer: ...
        def _exp_record(self, ref: ExpRef, freshness: Freshness) -> Record: ...
        def _compose_exp(self, record: Record) -> ExpApi: ...
        def set_tags_on_model_version(self, model_version: Any, tags: Any) -> None: ...
        def get_model_version(self, model_version: Any, force_refresh: bool = False) -> Any: ...

    @abstractmethod
    def _impl_rename_exp(self, exp_id: str, name: str) -> None: ...

    @abstractmethod
    def _impl_delete_exp(self, exp_id: str) -> None: ...

    @abstractmethod
    def _impl_restore_exp(self, exp_id: str) -> None: ...

    def _delete_remote_and_cached(self, key: EntryKey, url: str) -> None:
        transfer = self._transfer_for(url)
        self.retry.call("delete", lambda: transfer.delete(url), url)
        with self._artifacts.lock(key):
            self._artifacts.remove(key)

    def delete_run_artifact(self, run: Any, path_in_run: str) -> None:
        """Remove `path_in_run` of the run from the artifact store itself and from the cache."""
        self._require_online("delete_run_artifact")
        safe_relative_path(path_in_run)
        key, url = self._run_target(run, path_in_run)
        self._delete_remote_and_cached(key, url())

    def delete_model_version_artifact(self, model_version: Any) -> None:
        """Remove a version's files from the artifact store and the cache, and tag the version
        `mlcache.deleted` (finders leave such versions out unless asked)."""
        self._require_online("delete_model_version_artifact")
        mv = self.get_model_version(model_version)
        key, url, _ = self._mv_target(mv)
        self._delete_remote_and_cached(key, url())
        self.set_tags_on_model_version(mv, {DELETED_TAG: utcnow().isoformat()})

    def _exp_id(self, exp: Any) -> str:
        return str(self._exp_record(exp_ref(exp), "nested").data["id"])

    def archive_exp(self, exp: Any, suffix: str | None = None) -> ExpApi:
        """Rename the experiment with a suffix (default `-archived-<UTC date and time>`)."""
        self._require_online("archive_exp")
        record = self._exp_record(exp_ref(exp), "normal")
        name = f"{record.data['name']}{suffix or '-archived-' + utcnow().strftime('%Y%m%dT%H%M%SZ')}"
        self._impl_rename_exp(record.data["id"], name)
        return self._compose_exp(self._exp_record(exp_ref(record.data["id"]), "force"))

    def delete_exp(self, exp: Any) -> ExpApi:
        """Mark the experiment deleted on the server (MLflow keeps it restorable)."""
        self._require_online("delete_exp")
        exp_id = self._exp_id(exp)
        self._impl_delete_exp(exp_id)
        return self._compose_exp(self._exp_record(exp_ref(exp_id), "force"))

    def restore_exp(self, exp: Any) -> ExpApi:
        """Restore a deleted experiment."""
        self._require_online("restore_exp")
        exp_id = self._exp_id(exp)
        self._impl_restore_exp(exp_id)
        return self._compose_exp(self._exp_record(exp_ref(exp_id), "force"))
