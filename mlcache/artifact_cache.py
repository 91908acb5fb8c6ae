"""The artifact cache: where an artifact's files are (targets), and cache-or-pull of them.

A complete entry is served with no call to the server or the store (unless
`always_pull_artifacts`); the immutable facts needed to find it (a run's artifact root, a version's
source) come from cached metadata without revalidation, and the URL is only worked out on a miss,
checked to lie inside the artifact roots the server uses (`sources`). A miss is pulled under the
entry's lock by `ArtifactStore.pull` (atomic, verified); readers can hold an entry shared so that
no prune or clean removes it meanwhile.
"""

from __future__ import annotations

import builtins
import functools
import hashlib
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar, cast

from .artifact_store import ArtifactStore
from .backend import Backend
from .compose import Composer
from .entities import ModelVersion
from .errors import ArtifactUploadError, CacheFallbackWarning, CacheMiss, MlcacheError, ServerUnreachable
from .handles import LoggedModelApi, ModelVersionApi, remember, remembered
from .identifiers import ExpRef, logged_model_id, model_version_ref, run_ref
from .manifest import EntryKey
from .metadata_store import MEMO_LIMIT
from .names import safe_relative_path
from .progress import ProgressFactory, TransferProgress
from .remotes import join_url
from .resolver import Freshness, MetadataResolver
from .retry import RetryPolicy
from .sources import check_source
from .staging import Stage
from .transfer import Listing, OnFile, PullPlan, RemoteFile, Transfer, TransferError

log = logging.getLogger("mlcache.artifacts")
T = TypeVar("T")


def _waiting(label: str, holder: str | None) -> None:
    """Say that a pull waits for another process's pull of the same entry, and for whom."""
    log.warning(
        "waiting for %s to finish pulling %s", f"another process ({holder})" if holder else "another process", label
    )


@dataclass(frozen=True)
class ArtifactSettings:
    """The api settings the artifact cache follows."""

    offline: bool
    always_pull: bool
    pull_offline: bool
    keep_uploads: bool
    progress: ProgressFactory | None
    allowed_sources: tuple[str, ...]
    lock_timeout: float


@dataclass(frozen=True)
class Target:
    """One artifact: its cache entry, how to find its URL on a miss, what to call it, how to fill it."""

    key: EntryKey
    url: Callable[[], str]
    label: str
    hint: str


class ArtifactCache:
    """Run and model artifacts of one cache dir: targets, hits, pulls, holds, uploads, deletes."""

    def __init__(
        self,
        store: ArtifactStore,
        resolver: MetadataResolver,
        composer: Composer,
        backend: Backend,
        transfer: Transfer,
        retry: RetryPolicy,
        settings: ArtifactSettings,
    ) -> None:
        self.store = store
        self.resolver = resolver
        self.composer = composer
        self.backend = backend
        self.transfer = transfer
        self.retry = retry
        self.settings = settings
        self._version_targets: dict[Path, tuple[dict[str, Any], Target]] = {}

    def _reporter(self, label: str) -> TransferProgress | None:
        return self.settings.progress(label) if self.settings.progress is not None else None

    def transfer_for(self, url: str) -> Transfer:
        return self.backend.transfer_for(url) or self.transfer

    # ----------------------------------------------------------------- targets
    def _exp_location(self, exp_id: Any) -> str | None:
        """The artifact location of an experiment (the root its runs and models live under)."""
        if not isinstance(exp_id, str):
            return None
        location = self.resolver.exp(ExpRef(id=exp_id), "nested").data.get("artifact_location")
        return location if isinstance(location, str) else None

    def run_target(self, run: Any, path_in_run: str | None) -> Target:
        run_id, uri_path = run_ref(run)
        path = safe_relative_path(path_in_run if path_in_run is not None else (uri_path or ""))

        def url() -> str:
            data = self.resolver.run(run_id, "nested").data
            repo = data.get("repo")
            if not isinstance(repo, str) or not repo:
                raise MlcacheError(f"run {run_id} has no artifact location")
            roots = [self._exp_location(data.get("exp_id"))]
            check_source(repo, roots, self.settings.allowed_sources, f"run {run_id}")
            return join_url(repo, path)

        key = EntryKey("runs", (run_id, path))
        return Target(key, url, key.label, f"call api.cache_run_artifact({run_id!r}, {path!r})")

    def _logged_target(self, model_id: str, label: str) -> Target:
        def url() -> str:
            data = self.resolver.logged(model_id, "nested").data
            location = str(data.get("artifact_location") or "")
            roots = [self._exp_location(data.get("exp_id"))]
            return check_source(location, roots, self.settings.allowed_sources, f"logged model {model_id}")

        return Target(EntryKey("models", (model_id,)), url, label, f"call api.cache_model_artifact({label!r})")

    def model_target(self, model_version: Any) -> Target:
        """Where a version's files are: a logged model, a path in its run, or another URL under its
        run's or experiment's artifact root (or an allowed prefix). Logged models are accepted
        directly too (`m-<id>`, `models:/m-<id>`, the entity). What a version's files are never
        changes: a handle remembers its target, and a version's document maps to one target for as
        long as it is unchanged."""
        if isinstance(model_version, (ModelVersionApi, LoggedModelApi)):
            known = remembered(model_version)
            if known is not None and known[0] is self:
                return cast(Target, known[1])
            target = self._model_target(model_version)
            remember(model_version, (self, target))
            return target
        return self._model_target(model_version)

    def _model_target(self, model_version: Any) -> Target:
        model_id = logged_model_id(model_version)
        if model_id is not None:
            return self._logged_target(model_id, f"models:/{model_id}")
        ref = model_version_ref(model_version)
        freshness: Freshness = "nested" if ref.version is not None else "normal"
        record = self.resolver.mv(ref, freshness)
        known = self._version_targets.get(record.path)
        if known is not None and known[0] is record.data:
            return known[1]
        target = self._version_target(self.composer.mv(record))
        if len(self._version_targets) >= MEMO_LIMIT:
            self._version_targets.clear()
        self._version_targets[record.path] = (record.data, target)
        return target

    def _version_target(self, mv: ModelVersion) -> Target:
        label = f"models:/{mv.model.name}/{mv.version}"
        if mv.logged_model_id:
            return self._logged_target(mv.logged_model_id, label)
        if mv.path_in_run and mv.run_id:
            inner = self.run_target(mv.run_id, mv.path_in_run)
            return Target(inner.key, inner.url, label, f"call api.cache_model_artifact({label!r})")
        digest = hashlib.sha256(mv.source.encode()).hexdigest()[:32]
        roots = [mv.run.repo, mv.run.exp.artifact_location] if mv.run is not None else []

        def url() -> str:
            return check_source(mv.source, roots, self.settings.allowed_sources, f"model version {label}")

        return Target(EntryKey("urls", (digest,)), url, label, f"call api.cache_model_artifact({label!r})")

    def target_of(self, key: EntryKey, versions: tuple[str, ...] = ()) -> Target:
        """The target that fills entry `key` again: its run path, its logged model, or (for an
        entry of another URL) the first of the cached `versions` (`name/3@alias`) it holds."""
        if key.kind == "runs":
            return self.run_target(key.parts[0], key.parts[1])
        if key.kind == "models":
            return self._logged_target(key.parts[0], key.label)
        for held in versions:
            name, _, version = held.partition("@")[0].rpartition("/")
            target = self.model_target((name, version))
            if target.key == key:
                return target
        raise MlcacheError(f"no cached model version names {key.label}; pull that version again instead")

    def versions_by_entry(self) -> dict[EntryKey, tuple[str, ...]]:
        """For each complete entry, the cached model versions whose files it holds
        (`fraud/3@champion`), as far as the cached metadata tells; nothing is fetched."""
        held: dict[EntryKey, list[str]] = {}
        for record in self.resolver.meta.scan("mv"):
            name, version = record.key
            try:
                target = self.model_target((name, version))
                found = self.store.covering(target.key, touch=False)
                mv = self.composer.mv(record)
            except MlcacheError:
                continue
            if found is not None:
                aliases = "".join(f"@{alias}" for alias in sorted(mv.aliases))
                held.setdefault(found[0], []).append(f"{name}/{version}{aliases}")
        return {key: tuple(sorted(names)) for key, names in held.items()}

    # ----------------------------------------------------------------- the cache-or-pull core
    def ensure(self, target: Target) -> Path:
        """A complete entry holding the target (itself or, for runs, a parent path's entry) is
        served as is, unless `always_pull` asks to re-sync it when the remote changed; else it is pulled."""
        key = target.key
        found = self.store.covering(key)
        if found is not None and not self.settings.always_pull:
            return found[1]
        if self.settings.offline and not self.settings.pull_offline:
            if found is not None:
                return found[1]
            raise CacheMiss("artifact", target.label, self.resolver.cache_dir, target.hint)
        entry = found[0] if found is not None else key
        try:
            source = target.url() if entry == key else self._entry_source(entry, target.url)
            with self.store.lock(entry, on_wait=functools.partial(_waiting, target.label)):
                return self._pull(key, entry, source, target.label)
        except (ServerUnreachable, TransferError) as exc:
            if found is None:
                raise
            warnings.warn(f"{exc}; serving the cached {key.label}", CacheFallbackWarning, stacklevel=3)
            return found[1]

    def _pull(self, key: EntryKey, entry: EntryKey, source: str, label: str) -> Path:
        """Under the entry's lock: serve what another process finished meanwhile, skip a re-sync whose
        remote is unchanged, else pull."""
        transfer = self.transfer_for(source)
        found = self.store.covering(key)
        if found is not None and not self.settings.always_pull:
            return found[1]
        listed: Listing | None = None
        if found is not None:
            listed = self.retry.call("list", lambda: transfer.list(source), source)
            manifest = self.store.read_manifest(entry)
            if manifest is not None and manifest.source_version == listed.version():
                return found[1]

        def list_source() -> Listing:
            return listed if listed is not None else self.retry.call("list", lambda: transfer.list(source), source)

        def fetch(tree: Path, on_file: OnFile, only: builtins.list[str] | None, plan: PullPlan) -> None:
            transfer.pull(source, tree, self._reporter(label), on_file, only, plan)

        log.info("pulling %s from %s", entry.label, source)
        path = self.retry.call(
            "pull",
            lambda: self.store.pull(entry, fetch, list_source, replace=found is not None),
            entry.label,
        )
        log.info("pulled %s into %s", entry.label, path)
        return path if entry == key else self.store.entry_path(key)

    def _entry_source(self, entry: EntryKey, url: Callable[[], str]) -> str:
        """Source URL of an existing entry (a parent of what was asked), from its manifest."""
        manifest = self.store.read_manifest(entry)
        return manifest.source if manifest is not None else url()

    def _entry_of(self, key: EntryKey) -> EntryKey:
        found = self.store.covering(key)
        return found[0] if found is not None else key

    def load(self, target: Target, loader: Callable[[Path], T]) -> T:
        """`loader(path)` with the entry held shared, so no prune or clean removes it meanwhile."""
        for _ in range(3):
            path = self.ensure(target)
            entry = self._entry_of(target.key)
            with self.store.shared_lock(entry, self.settings.lock_timeout):
                if path.exists():
                    return loader(path)
        raise MlcacheError(f"{target.key.label} kept disappearing from the cache while loading it")

    def held(self, target: Target) -> Path:
        """The entry's path, held shared until the process ends (`locks.release_holds`)."""
        for _ in range(3):
            path = self.ensure(target)
            entry = self._entry_of(target.key)
            self.store.hold(entry, self.settings.lock_timeout)
            if path.exists():
                return path
        raise MlcacheError(f"{target.key.label} kept disappearing from the cache while loading it")

    def covered(self, target: Target) -> EntryKey:
        """The complete entry holding the target (after `ensure`)."""
        found = self.store.covering(target.key)
        if found is None:
            raise CacheMiss("artifact", target.label, self.resolver.cache_dir, target.hint)
        return found[0]

    # ----------------------------------------------------------------- listing and removal
    def list(self, target: Target) -> list[RemoteFile]:
        """The target's files (relative paths, sizes): from the store online, from the cache offline."""
        if not self.settings.offline:
            source = target.url()
            listing = self.retry.call("list", lambda: self.transfer_for(source).list(source), source)
            return sorted(listing.files, key=lambda f: f.path)
        found = self.store.covering(target.key)
        if found is None:
            raise CacheMiss("artifact", target.label, self.resolver.cache_dir, target.hint)
        hit = found[1]
        if hit.is_file():
            return [RemoteFile(hit.name, hit.stat().st_size)]
        return sorted(
            (RemoteFile(p.relative_to(hit).as_posix(), p.stat().st_size) for p in hit.rglob("*") if p.is_file()),
            key=lambda f: f.path,
        )

    def list_run_root(self, run: Any) -> builtins.list[RemoteFile]:
        """Every artifact of a run, from the store (needs the network)."""
        run_id, _ = run_ref(run)
        if self.settings.offline:
            raise CacheMiss("artifact", f"runs:/{run_id}/", self.resolver.cache_dir, "list a path inside the run")
        repo = self.resolver.run(run_id, "nested").data.get("repo") or ""
        listing = self.retry.call("list", lambda: self.transfer_for(repo).list(repo), repo)
        return sorted(listing.files, key=lambda f: f.path)

    def clean(self, target: Target) -> bool:
        """Drop the cached entry (not the remote files); True if something was removed."""
        return self.clean_entry(target.key)

    def clean_entry(self, key: EntryKey) -> bool:
        with self.store.lock(key):
            return self.store.remove(key)

    def delete(self, target: Target) -> None:
        """Remove the target's files from the artifact store itself, then from the cache."""
        url = target.url()
        transfer = self.transfer_for(url)
        self.retry.call("delete", lambda: transfer.delete(url), url)
        self.clean(target)

    # ----------------------------------------------------------------- uploads
    def upload(self, target: Target, source: Path | str | Callable[[Path], None]) -> Path | None:
        """Upload a file/folder, or what `source(path)` writes at `path`, to the target's URL. With
        `keep_uploads`, the uploaded files become the cache entry (no re-download) and its path is
        returned. A dumper's temporary output is removed on every failure but a failed upload: then it
        is kept and its path is in the error."""
        url = target.url()
        owned = callable(source)
        stage: Stage | None = None
        if callable(source):
            stage = self.store.new_stage("log")
            local = stage.path / PurePosixPath(target.key.parts[-1]).name
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
        transfer = self.transfer_for(url)
        try:
            self.retry.call("push", lambda: transfer.push(local, url, progress=self._reporter(url)), url)
        except Exception as exc:
            if stage is not None:
                stage.close(keep=True)
            raise ArtifactUploadError(
                f"upload of {local} to {url} failed: {exc}" + (f"; the artifact is kept at {local}" if owned else ""),
                kept_path=local if owned else None,
            ) from exc
        try:
            if not self.settings.keep_uploads:
                return None
            listing = self.retry.call("list", lambda: transfer.list(url), url)
            with self.store.lock(target.key):
                return self.store.adopt(target.key, local, url, listing.version(), move=owned)
        finally:
            if stage is not None:
                stage.close()
