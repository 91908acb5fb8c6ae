"""Artifact methods of `BaseMlflowApi`: run and model-version files through the artifact store.

A complete entry is served with no call to the server or the store (unless
`always_pull_artifacts`); the immutable facts needed to find it (a run's artifact root, a version's
source) come from cached metadata without revalidation.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

from .artifact_store import ArtifactStore, EntryKey
from .errors import CacheFallbackWarning, CacheMiss, MlcacheError, ServerUnreachable
from .handles import ModelVersionApi
from .identifiers import ExpRef, ModelVersionRef, logged_model_id, model_version_ref, run_ref
from .locks import hold_shared, shared_entry_lock
from .names import safe_relative_path
from .placement import export_store, place_tree
from .remotes import join_url
from .sources import check_source
from .staging import Stage
from .transfer import Listing, RemoteFile, Transfer, TransferError

if TYPE_CHECKING:
    from .base import Freshness
    from .layout import CacheLayout
    from .metadata_store import Record
    from .retry import RetryPolicy

log = logging.getLogger("mlcache.artifacts")
T = TypeVar("T")


class ArtifactUploadError(MlcacheError):
    """An upload failed; a temporary artifact made by a dumper is kept at `kept_path`."""

    def __init__(self, message: str, kept_path: Path | None) -> None:
        super().__init__(message)
        self.kept_path = kept_path


class ArtifactsMixin:
    """list / cache / get / place / load / export / clean for run and model-version artifacts."""

    if TYPE_CHECKING:
        offline_mode: bool
        cache_dir: Path
        transfer: Transfer
        always_pull_artifacts: bool
        allowed_sources: tuple[str, ...]
        pull_artifacts_in_offline_mode: bool
        cache_local_artifacts: bool
        show_progress: bool
        retry: RetryPolicy
        lock_timeout: float
        _layout: CacheLayout
        _artifacts: ArtifactStore

        def _require_online(self, action: str) -> None: ...
        def _run_record(self, run_id: str, freshness: Freshness) -> Record: ...
        def _mv_record(self, ref: ModelVersionRef, freshness: Freshness) -> Record: ...
        def _exp_record(self, ref: ExpRef, freshness: Freshness) -> Record: ...
        def _logged_record(self, model_id: str, freshness: Freshness) -> Record: ...
        def export_logged_model_meta(self, logged_model: Any, target: Path | str) -> Any: ...
        def _compose_mv(self, record: Record, freshness: Freshness = "nested") -> ModelVersionApi: ...
        def export_run_meta(self, run: Any, target: Path | str) -> Any: ...
        def export_model_version_meta(self, model_version: Any, target: Path | str) -> Any: ...
        def register_model_version(
            self,
            model: Any,
            run: Any,
            path_in_run: str,
            tags: Any = None,
            description: str | None = None,
            aliases: Iterable[str] = (),
        ) -> ModelVersionApi: ...

    def _impl_transfer_for(self, url: str) -> Transfer | None:
        """Plugins return a transfer for URLs only their backend can read (e.g. an artifact proxy)."""
        return None

    def _transfer_for(self, url: str) -> Transfer:
        return self._impl_transfer_for(url) or self.transfer

    # ----------------------------------------------------------------- resolution
    def _exp_location(self, exp_id: Any) -> str | None:
        """The artifact location of an experiment (the root its runs and models live under)."""
        if not isinstance(exp_id, str):
            return None
        location = self._exp_record(ExpRef(id=exp_id), "nested").data.get("artifact_location")
        return location if isinstance(location, str) else None

    def _run_target(self, run: Any, path_in_run: str | None) -> tuple[EntryKey, Callable[[], str]]:
        run_id, uri_path = run_ref(run)
        path = safe_relative_path(path_in_run if path_in_run is not None else (uri_path or ""))

        def url() -> str:
            data = self._run_record(run_id, "nested").data
            repo = data.get("repo")
            if not isinstance(repo, str) or not repo:
                raise MlcacheError(f"run {run_id} has no artifact location")
            check_source(repo, [self._exp_location(data.get("exp_id"))], self.allowed_sources, f"run {run_id}")
            return join_url(repo, path)

        return EntryKey("runs", (run_id, path)), url

    def _logged_target(self, model_id: str) -> tuple[EntryKey, Callable[[], str], str]:
        def url() -> str:
            data = self._logged_record(model_id, "nested").data
            location = str(data.get("artifact_location") or "")
            roots = [self._exp_location(data.get("exp_id"))]
            return check_source(location, roots, self.allowed_sources, f"logged model {model_id}")

        return EntryKey("models", (model_id,)), url, f"models:/{model_id}"

    def _mv_target(self, model_version: Any) -> tuple[EntryKey, Callable[[], str], str]:
        """Where a version's files are: a logged model, a path in its run, or another URL under its
        run's or experiment's artifact root (or an allowed prefix). Logged models are also accepted
        directly (`m-<id>`, `models:/m-<id>`, the entity)."""
        model_id = logged_model_id(model_version)
        if model_id is not None:
            return self._logged_target(model_id)
        ref = model_version_ref(model_version)
        freshness: Freshness = "nested" if ref.version is not None else "normal"
        mv = self._compose_mv(self._mv_record(ref, freshness))
        label = f"models:/{mv.model.name}/{mv.version}"
        if mv.logged_model_id:
            key, url, _ = self._logged_target(mv.logged_model_id)
            return key, url, label
        if mv.path_in_run and mv.run_id:
            key, url = self._run_target(mv.run_id, mv.path_in_run)
            return key, url, label
        digest = hashlib.sha256(mv.source.encode()).hexdigest()[:32]
        roots = [mv.run.repo, mv.run.exp.artifact_location] if mv.run is not None else []

        def url() -> str:
            return check_source(mv.source, roots, self.allowed_sources, f"model version {label}")

        return EntryKey("urls", (digest,)), url, label

    # ----------------------------------------------------------------- the cache-or-pull core
    def _ensure(self, key: EntryKey, url: Callable[[], str], hint: str) -> Path:
        """The cache-or-pull core. A complete entry holding `key` (itself or a parent path's entry) is
        served as is, unless `always_pull_artifacts` asks to re-sync it when the remote changed."""
        found = self._artifacts.covering(key)
        if found is not None and not self.always_pull_artifacts:
            return found[1]
        if self.offline_mode and not self.pull_artifacts_in_offline_mode:
            if found is not None:
                return found[1]
            raise CacheMiss("artifact", key.label, self.cache_dir, hint)
        entry = found[0] if found is not None else key
        try:
            source = url() if entry == key else self._entry_source(entry, url)
            transfer = self._transfer_for(source)
            with self._artifacts.lock(entry):
                found = self._artifacts.covering(key)
                if found is not None and not self.always_pull_artifacts:
                    return found[1]
                if found is not None:
                    listing = self.retry.call("list", lambda: transfer.list(source), source)
                    manifest = self._artifacts.read_manifest(entry)
                    if manifest is not None and manifest.source_version == listing.version():
                        return found[1]

                    def list_source() -> Listing:
                        return listing
                else:

                    def list_source() -> Listing:
                        return self.retry.call("list", lambda: transfer.list(source), source)

                log.info("pulling %s from %s", entry.label, source)
                path = self.retry.call(
                    "pull",
                    lambda: self._artifacts.pull(
                        entry,
                        lambda stage, on_file: transfer.pull(source, stage, self.show_progress, on_file),
                        list_source,
                        replace=found is not None,
                    ),
                    entry.label,
                )
                log.info("pulled %s into %s", entry.label, path)
                return path if entry == key else self._artifacts.entry_path(key)
        except (ServerUnreachable, TransferError) as exc:
            if found is None:
                raise
            warnings.warn(f"{exc}; serving the cached {key.label}", CacheFallbackWarning, stacklevel=3)
            return found[1]

    def _entry_source(self, entry: EntryKey, url: Callable[[], str]) -> str:
        """Source URL of an existing entry (a parent of what was asked), from its manifest."""
        manifest = self._artifacts.read_manifest(entry)
        return manifest.source if manifest is not None else url()

    def _list(self, key: EntryKey, url: Callable[[], str], subpath: str, hint: str) -> list[RemoteFile]:
        if not self.offline_mode:
            source = url()
            listing = self.retry.call("list", lambda: self._transfer_for(source).list(source), source)
            return sorted(listing.files, key=lambda f: f.path)
        found = self._artifacts.covering(key)
        if found is None:
            raise CacheMiss("artifact", key.label, self.cache_dir, hint)
        hit = found[1]
        if hit.is_file():
            return [RemoteFile(hit.name, hit.stat().st_size)]
        return sorted(
            (RemoteFile(p.relative_to(hit).as_posix(), p.stat().st_size) for p in hit.rglob("*") if p.is_file()),
            key=lambda f: f.path,
        )

    # ----------------------------------------------------------------- run artifacts
    def list_run_artifacts(self, run: Any, path_in_run: str = "") -> list[RemoteFile]:
        """Files under `path_in_run` of the run (relative paths, sizes); offline, from the cache."""
        run_id, uri_path = run_ref(run)
        sub = path_in_run or uri_path or ""
        if not sub:
            if self.offline_mode:
                raise CacheMiss("artifact", f"runs:/{run_id}/", self.cache_dir, "list a path inside the run")
            repo = self._run_record(run_id, "nested").data.get("repo") or ""
            listing = self.retry.call("list", lambda: self._transfer_for(repo).list(repo), repo)
            return sorted(listing.files, key=lambda f: f.path)
        key, url = self._run_target(run_id, sub)
        return self._list(key, url, sub, f"call api.cache_run_artifact({run_id!r}, {key.parts[1]!r})")

    def cache_run_artifact(self, run: Any, path_in_run: str | None = None) -> Path:
        """Pull the run's artifact at `path_in_run` into the cache (if not complete there) and return its path."""
        key, url = self._run_target(run, path_in_run)
        return self._ensure(key, url, f"call api.cache_run_artifact({key.parts[0]!r}, {key.parts[1]!r})")

    def get_run_artifact(self, run: Any, path_in_run: str | None = None, hold: bool = False) -> Path:
        """Local path of the run's artifact, pulled on a miss (read-only files). With `hold`, prune and
        clean leave the entry alone until this process ends (or `mlcache.release_holds()`)."""
        if not hold:
            return self.cache_run_artifact(run, path_in_run)
        key, url = self._run_target(run, path_in_run)
        return self._held(key, url, f"call api.cache_run_artifact({key.parts[0]!r}, {key.parts[1]!r})")

    def place_run_artifact(
        self, run: Any, path_in_run: str | None, target: Path | str, link: bool = True, overwrite: bool = False
    ) -> Path:
        """Put the artifact at `target`: symlinks per file into the cache, or a copy (`link=False`)."""
        return place_tree(self._layout.root, self.get_run_artifact(run, path_in_run), target, link, overwrite)

    def load_run_artifact(self, run: Any, path_in_run: str | None, loader: Callable[[Path], T]) -> T:
        """`loader(local_path)` on the cached artifact; prune and clean leave it alone meanwhile."""
        key, url = self._run_target(run, path_in_run)
        return self._load(key, url, f"call api.cache_run_artifact({key.parts[0]!r}, {key.parts[1]!r})", loader)

    def _load(self, key: EntryKey, url: Callable[[], str], hint: str, loader: Callable[[Path], T]) -> T:
        for _ in range(3):
            path = self._ensure(key, url, hint)
            found = self._artifacts.covering(key)
            entry = found[0] if found is not None else key
            with shared_entry_lock(self._layout, "artifacts", entry.kind, *entry.parts, timeout=self.lock_timeout):
                if path.exists():
                    return loader(path)
        raise MlcacheError(f"{key.label} kept disappearing from the cache while loading it")

    def _held(self, key: EntryKey, url: Callable[[], str], hint: str) -> Path:
        """The entry's path, its lock held shared until the process ends (`locks.release_holds`)."""
        for _ in range(3):
            path = self._ensure(key, url, hint)
            found = self._artifacts.covering(key)
            entry = found[0] if found is not None else key
            hold_shared(self._layout, "artifacts", entry.kind, *entry.parts, timeout=self.lock_timeout)
            if path.exists():
                return path
        raise MlcacheError(f"{key.label} kept disappearing from the cache while loading it")

    def export_run_artifact(self, run: Any, path_in_run: str | None, target: Path | str) -> Path:
        """Copy the artifact (and the run's metadata) into the cache dir or bundle at `target`."""
        store = export_store(self._layout.root, target, self._artifacts.lock_timeout)
        key, _ = self._run_target(run, path_in_run)
        self.cache_run_artifact(run, path_in_run)
        self.export_run_meta(key.parts[0], target)
        found = self._artifacts.covering(key)
        if found is None:
            raise CacheMiss("artifact", key.label, self.cache_dir, "cache it before exporting")
        return self._artifacts.export_entry(found[0], store)

    def clean_cached_run_artifact(self, run: Any, path_in_run: str | None = None) -> bool:
        """Drop the cached entry (not the remote files); True if something was removed."""
        key, _ = self._run_target(run, path_in_run)
        with self._artifacts.lock(key):
            return self._artifacts.remove(key)

    def log_run_artifact(
        self,
        run: Any,
        source: Path | str | Callable[[Path], None],
        path_in_run: str,
    ) -> Path | None:
        """Upload a file/folder, or what `source(path)` writes at `path`, to `path_in_run` of the run.

        With `cache_local_artifacts`, the uploaded files become the cache entry (no re-download) and
        its path is returned. A dumper's temporary output is removed on every failure, except a
        failed upload: then it is kept and its path is in the error.
        """
        self._require_online("log_run_artifact")
        key, url_of = self._run_target(run, path_in_run)
        url = url_of()
        owned = callable(source)
        stage: Stage | None = None
        if callable(source):
            stage = self._artifacts.new_stage("log")
            local = stage.path / PurePosixPath(key.parts[1]).name
            try:
                source(local)
                if not (local.exists() or local.is_symlink()):
                    raise MlcacheError(f"the dumper wrote nothing at {local}")
            except BaseException:
                stage.close()
                raise
        else:
            local = Path(source).expanduser().absolute()
            if not local.exists():
                raise MlcacheError(f"artifact source {local} does not exist")
        transfer = self._transfer_for(url)
        try:
            self.retry.call("push", lambda: transfer.push(local, url, progress=self.show_progress), url)
        except Exception as exc:
            if stage is not None:
                stage.close(keep=True)
            raise ArtifactUploadError(
                f"upload of {local} to {url} failed: {exc}" + (f"; the artifact is kept at {local}" if owned else ""),
                kept_path=local if owned else None,
            ) from exc
        try:
            if not self.cache_local_artifacts:
                return None
            listing = self.retry.call("list", lambda: transfer.list(url), url)
            with self._artifacts.lock(key):
                return self._artifacts.adopt(key, local, url, listing.version(), move=owned)
        finally:
            if stage is not None:
                stage.close()

    # ----------------------------------------------------------------- model-version artifacts
    def list_model_artifacts(self, model_version: Any) -> list[RemoteFile]:
        """Files of the model version (relative paths, sizes); offline, from the cache."""
        key, url, label = self._mv_target(model_version)
        return self._list(key, url, "", f"call api.cache_model_artifact({label!r})")

    def cache_model_artifact(self, model_version: Any) -> Path:
        """Pull the version's files into the cache (if not complete there) and return their path."""
        key, url, label = self._mv_target(model_version)
        return self._ensure(key, url, f"call api.cache_model_artifact({label!r})")

    def get_model_artifact(self, model_version: Any, hold: bool = False) -> Path:
        """Local path of the version's files, pulled on a miss (read-only files). With `hold`, prune and
        clean leave the entry alone until this process ends (or `mlcache.release_holds()`)."""
        if not hold:
            return self.cache_model_artifact(model_version)
        key, url, label = self._mv_target(model_version)
        return self._held(key, url, f"call api.cache_model_artifact({label!r})")

    def place_model_artifact(
        self, model_version: Any, target: Path | str, link: bool = True, overwrite: bool = False
    ) -> Path:
        """Put the version's files at `target`: symlinks per file, or a copy (`link=False`)."""
        return place_tree(self._layout.root, self.get_model_artifact(model_version), target, link, overwrite)

    def load_model_artifact(self, model_version: Any, loader: Callable[[Path], T]) -> T:
        """`loader(local_path)` on the version's cached files; prune and clean leave them alone meanwhile."""
        key, url, label = self._mv_target(model_version)
        return self._load(key, url, f"call api.cache_model_artifact({label!r})", loader)

    def export_model_artifact(self, model_version: Any, target: Path | str) -> Path:
        """Copy the version's files and metadata (model, run, experiment) into `target`."""
        store = export_store(self._layout.root, target, self._artifacts.lock_timeout)
        key, _, _ = self._mv_target(model_version)
        self.cache_model_artifact(model_version)
        if logged_model_id(model_version) is not None:
            self.export_logged_model_meta(model_version, target)
        else:
            self.export_model_version_meta(model_version, target)
        return self._artifacts.export_entry(key, store)

    def clean_cached_model_artifact(self, model_version: Any) -> bool:
        """Drop the version's cached files; True if something was removed."""
        key, _, _ = self._mv_target(model_version)
        with self._artifacts.lock(key):
            return self._artifacts.remove(key)

    def log_model_version(
        self,
        model: Any,
        run: Any,
        source: Path | str | Callable[[Path], None],
        path_in_run: str = "model",
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
        aliases: Iterable[str] = (),
    ) -> ModelVersionApi:
        """Upload the model's files to `path_in_run` of `run` and register them as a new version."""
        self.log_run_artifact(run, source, path_in_run)
        return self.register_model_version(model, run, path_in_run, tags, description, aliases)
