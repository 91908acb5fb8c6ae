"""`BaseMlflowApi`: orchestration only. It decides when to touch the network and the cache;
plugins implement the `_impl_*` hooks that speak one backend's protocol.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from .artifact_store import ArtifactStore
from .artifacts import ArtifactsMixin
from .cache_admin import CacheAdminMixin
from .entities import Run
from .errors import (
    CacheFallbackWarning,
    CacheMiss,
    CorruptMetadata,
    EntityNotFound,
    InvalidSetting,
    OfflineModeError,
    ServerUnreachable,
)
from .finders import FindersMixin
from .handles import ExpApi, ModelApi, ModelVersionApi, RunApi, bind
from .identifiers import ExpRef, ModelVersionRef, exp_ref, model_name, model_version_ref, run_id_of
from .layout import CacheLayout
from .lifecycle import LifecycleMixin
from .logged_models import LoggedModelsMixin
from .metadata_store import CLOCK_SKEW, MetadataStore, Record
from .placement import export_meta_store
from .records import exp_from_record, model_from_record, mv_from_record, run_from_record
from .retry import RetryPolicy
from .settings import env_bool, env_choice, env_list, env_path, env_seconds
from .timeutil import utcnow
from .tracking import TrackingMixin
from .transfer import RcloneTransfer, Transfer

Freshness = Literal["normal", "force", "nested"]
"""How a lookup treats the cache: `normal` honours `metadata_max_age`, `force` always fetches
online, `nested` (an entity composed into another) uses any cached copy before fetching."""


def default_cache_dir() -> Path:
    """`MLCACHE_CACHE_DIR`, else the user's cache dir."""
    return env_path("MLCACHE_CACHE_DIR") or Path(platformdirs.user_cache_dir("mlcache"))


LOCK_MODES = ("os", "soft")


class BaseMlflowApi(
    TrackingMixin, ArtifactsMixin, FindersMixin, LoggedModelsMixin, CacheAdminMixin, LifecycleMixin, BaseModel, ABC
):
    """Cache-or-fetch access to experiments, runs, models and model versions.

    Offline (`offline_mode=True` or `MLCACHE_OFFLINE=1`) nothing touches the network: reads come
    from the cache and a miss raises `CacheMiss`. Online, every entity read is written through to
    the cache, cached metadata younger than `metadata_max_age` is served as is, and when the server
    cannot be reached a cached copy is served with a `CacheFallbackWarning`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    cache_dir: Path = Field(default_factory=default_cache_dir)
    offline_mode: bool = Field(default_factory=lambda: env_bool("MLCACHE_OFFLINE"))
    metadata_max_age: timedelta = Field(
        default_factory=lambda: timedelta(seconds=env_seconds("MLCACHE_METADATA_MAX_AGE", 0.0))
    )
    lock_timeout: float = 60.0
    lock_mode: Literal["os", "soft"] = Field(
        default_factory=lambda: env_choice("MLCACHE_LOCK_MODE", LOCK_MODES, "os")  # type: ignore[arg-type,return-value]
    )
    stale_lock_age: float = 900.0
    pull_lock_timeout: float = 3600.0
    transfer: Transfer = Field(default_factory=RcloneTransfer)
    always_pull_artifacts: bool = False
    allowed_sources: tuple[str, ...] = Field(default_factory=lambda: env_list("MLCACHE_ALLOWED_SOURCES"))
    pull_artifacts_in_offline_mode: bool = False
    cache_local_artifacts: bool = True
    show_progress: bool = False
    retry: RetryPolicy = Field(default_factory=RetryPolicy.from_env)

    _layout: CacheLayout = PrivateAttr()
    _meta: MetadataStore = PrivateAttr()
    _artifacts: ArtifactStore = PrivateAttr()

    def __init__(self, **conf: Any) -> None:
        """Settings are validated here: a bad argument is an `InvalidSetting` naming it."""
        try:
            super().__init__(**conf)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "settings"
            raise InvalidSetting(f"{type(self).__name__}: {where}: {first['msg']}") from None

    def model_post_init(self, context: Any) -> None:
        self._layout = CacheLayout(
            self.cache_dir, soft_locks=self.lock_mode == "soft", stale_lock_age=self.stale_lock_age
        )
        self._meta = MetadataStore(self._layout, self.lock_timeout)
        self._artifacts = ArtifactStore(self._layout, self.pull_lock_timeout)

    @property
    def layout(self) -> CacheLayout:
        return self._layout

    @property
    def in_offline_mode(self) -> BaseMlflowApi:
        """A copy of this api that never touches the network."""
        return self.model_copy(update={"offline_mode": True})

    def with_cache_dir(self, cache_dir: Path | str) -> BaseMlflowApi:
        """A copy of this api (same backend and settings) over another cache dir or bundle."""
        clone = self.model_copy(update={"cache_dir": Path(cache_dir)})
        clone.model_post_init(None)
        return clone

    # ----------------------------------------------------------------- plugin hooks
    @abstractmethod
    def _impl_fetch_exp(self, exp_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def _impl_fetch_exp_by_name(self, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def _impl_fetch_run(self, run_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def _impl_fetch_model(self, name: str) -> dict[str, Any]: ...

    @abstractmethod
    def _impl_fetch_model_version(self, name: str, version: str) -> dict[str, Any]: ...

    @abstractmethod
    def _impl_fetch_model_version_by_alias(self, name: str, alias: str) -> dict[str, Any]: ...

    # ----------------------------------------------------------------- cache-or-fetch core
    def _require_online(self, action: str) -> None:
        if self.offline_mode:
            raise OfflineModeError(f"{action} needs the tracking server, but the api is in offline mode")

    def _resolve(
        self,
        what: tuple[str, str],
        lookup: Callable[[], Record | None],
        fetch: Callable[[], dict[str, Any]],
        store: Callable[[dict[str, Any]], Record],
        freshness: Freshness,
        hint: str,
    ) -> Record:
        """The heart of the offline-first rules: serve the cache, fetch, or fall back with a warning."""
        kind, key = what
        try:
            cached = lookup()
        except CorruptMetadata as exc:
            if self.offline_mode:
                raise
            warnings.warn(f"{exc}; fetching it again", CacheFallbackWarning, stacklevel=4)
            cached = None
        if self.offline_mode:
            if cached is None:
                raise CacheMiss(kind, key, self.cache_dir, hint)
            return cached
        usable = cached is not None and not cached.stale and freshness != "force"
        if usable and (freshness == "nested" or self._young(cached)):
            return cached
        try:
            data = fetch()
        except ServerUnreachable as exc:
            if cached is None:
                raise
            warnings.warn(
                f"{exc}; answering {kind} {key!r} from the cache (cached at {cached.cached_at:%Y-%m-%d %H:%M:%S} UTC)",
                CacheFallbackWarning,
                stacklevel=4,
            )
            return cached
        return store(data)

    def _young(self, record: Record) -> bool:
        """Younger than `metadata_max_age` by this machine's clock and the cache's own record of when
        it stored the document; a time in the future (another clock, a planted file) is not young."""
        age = utcnow() - record.cached_at
        return -CLOCK_SKEW <= age < self.metadata_max_age

    def _exp_record(self, ref: ExpRef, freshness: Freshness) -> Record:
        if ref.id is not None:
            try:
                return self._resolve(
                    ("experiment", ref.id),
                    lambda: self._meta.get("exp", (ref.id,)),
                    lambda: self._impl_fetch_exp(ref.id),
                    self._store_exp,
                    freshness,
                    f"call api.cache_exp_meta({ref.id!r})",
                )
            except (EntityNotFound, CacheMiss):
                if ref.name is None:
                    raise
        name = ref.name or ""
        return self._resolve(
            ("experiment", name),
            lambda: next(
                (r for r in self._meta.scan("exp", on_error=self._warn_bad) if r.data.get("name") == name), None
            ),
            lambda: self._impl_fetch_exp_by_name(name),
            self._store_exp,
            freshness,
            f"call api.cache_exp_meta({name!r})",
        )

    def _store_exp(self, data: dict[str, Any]) -> Record:
        return self._meta.put("exp", (data["id"],), data)

    def _run_record(self, run_id: str, freshness: Freshness) -> Record:
        return self._resolve(
            ("run", run_id),
            lambda: self._meta.get("run", (run_id,)),
            lambda: self._impl_fetch_run(run_id),
            lambda data: self._meta.put("run", (data["id"],), data),
            freshness,
            f"call api.cache_run_meta({run_id!r})",
        )

    def _model_record(self, name: str, freshness: Freshness) -> Record:
        return self._resolve(
            ("model", name),
            lambda: self._meta.get("model", (name,)),
            lambda: self._impl_fetch_model(name),
            self._store_model,
            freshness,
            f"call api.cache_model_meta({name!r})",
        )

    def _store_model(self, data: dict[str, Any]) -> Record:
        record = self._meta.put("model", (data["name"],), data)
        for alias, version in (data.get("aliases") or {}).items():
            self._meta.put("alias", (data["name"], alias), {"version": version})
        return record

    def _mv_record(self, ref: ModelVersionRef, freshness: Freshness) -> Record:
        hint = f"call api.cache_model_version_meta({str(ref)!r})"
        if ref.version is not None:
            version = ref.version
            return self._resolve(
                ("model version", str(ref)),
                lambda: self._meta.get("mv", (ref.model, version)),
                lambda: self._impl_fetch_model_version(ref.model, version),
                self._store_mv,
                freshness,
                hint,
            )
        alias = ref.alias or ""

        def cached_by_alias() -> Record | None:
            pointer = self._meta.get("alias", (ref.model, alias))
            if pointer is None:
                return None
            record = self._meta.get("mv", (ref.model, str(pointer.data.get("version"))))
            if record is None:
                return None
            return Record(
                record.kind,
                record.key,
                record.data,
                min(pointer.cached_at, record.cached_at),
                pointer.stale or record.stale,
                record.path,
            )

        return self._resolve(
            ("model version", str(ref)),
            cached_by_alias,
            lambda: self._impl_fetch_model_version_by_alias(ref.model, alias),
            self._store_mv,
            freshness,
            hint,
        )

    def _store_mv(self, data: dict[str, Any]) -> Record:
        record = self._meta.put("mv", (data["model_name"], data["version"]), data)
        for alias in data.get("aliases") or ():
            self._meta.put("alias", (data["model_name"], alias), {"version": data["version"]})
        return record

    def _warn_bad(self, exc: CorruptMetadata) -> None:
        warnings.warn(f"{exc}; skipped", CacheFallbackWarning, stacklevel=3)

    # ----------------------------------------------------------------- composition
    def _compose_exp(self, record: Record) -> ExpApi:
        return bind(ExpApi, exp_from_record(record.data, record.path), self)

    def _compose_run(self, record: Record, freshness: Freshness = "nested") -> RunApi:
        exp_id = record.data.get("exp_id")
        if not isinstance(exp_id, str):
            raise CorruptMetadata(record.path, "run document without 'exp_id'")
        exp = self._compose_exp(self._exp_record(ExpRef(id=exp_id), freshness))
        return bind(RunApi, run_from_record(record.data, exp, record.path), self)

    def _compose_model(self, record: Record) -> ModelApi:
        return bind(ModelApi, model_from_record(record.data, record.path), self)

    def _compose_mv(self, record: Record, freshness: Freshness = "nested") -> ModelVersionApi:
        model = self._compose_model(self._model_record(record.data["model_name"], freshness))
        run: Run | None = None
        run_id = record.data.get("run_id")
        if run_id:
            try:
                run = self._compose_run(self._run_record(run_id, freshness), freshness)
            except (EntityNotFound, CacheMiss):
                run = None
        mv = bind(ModelVersionApi, mv_from_record(record.data, model, run, record.path), self)
        if mv.logged_model_id and not self.offline_mode:
            with contextlib.suppress(EntityNotFound):
                self._logged_record(mv.logged_model_id, freshness)
        return mv

    # ----------------------------------------------------------------- get
    def get_exp(self, exp: Any, force_refresh: bool = False) -> ExpApi:
        """Experiment by entity, handle, id or name."""
        return self._compose_exp(self._exp_record(exp_ref(exp), "force" if force_refresh else "normal"))

    def get_exp_by_name(self, name: str, force_refresh: bool = False) -> ExpApi:
        """Experiment by exact name (never taken as an id)."""
        return self._compose_exp(self._exp_record(ExpRef(name=name), "force" if force_refresh else "normal"))

    def get_run(self, run: Any, force_refresh: bool = False) -> RunApi:
        """Run by entity, handle, id or `runs:/<id>/...`."""
        return self._compose_run(self._run_record(run_id_of(run), "force" if force_refresh else "normal"))

    def get_model(self, model: Any, force_refresh: bool = False) -> ModelApi:
        """Registered model by entity, handle, name or `models:/name`."""
        return self._compose_model(self._model_record(model_name(model), "force" if force_refresh else "normal"))

    def get_model_version(self, model_version: Any, force_refresh: bool = False) -> ModelVersionApi:
        """Model version by entity, handle, `(name, version)`, `(name, "@alias")` or `models:/` URI."""
        ref = model_version_ref(model_version)
        return self._compose_mv(self._mv_record(ref, "force" if force_refresh else "normal"))

    # ----------------------------------------------------------------- cache
    def cache_exp_meta(self, exp: Any) -> ExpApi:
        """Fetch the experiment into the cache (online); offline, check that it is cached."""
        return self._compose_exp(self._exp_record(exp_ref(exp), "force"))

    def cache_run_meta(self, run: Any) -> RunApi:
        """Fetch the run and its experiment into the cache."""
        return self._compose_run(self._run_record(run_id_of(run), "force"), "force")

    def cache_model_meta(self, model: Any) -> ModelApi:
        """Fetch the registered model, aliases included, into the cache."""
        return self._compose_model(self._model_record(model_name(model), "force"))

    def cache_model_version_meta(self, model_version: Any) -> ModelVersionApi:
        """Fetch the model version with its model (aliases included), run and experiment."""
        return self._compose_mv(self._mv_record(model_version_ref(model_version), "force"), "force")

    # ----------------------------------------------------------------- export
    def _target_store(self, target: Path | str) -> MetadataStore:
        return export_meta_store(self._layout.root, target, self.lock_timeout)

    def export_exp_meta(self, exp: Any, target: Path | str) -> ExpApi:
        """Write the experiment's metadata into the cache dir (or bundle) at `target`."""
        store = self._target_store(target)
        found = self.get_exp(exp)
        store.put("exp", (found.id,), self._exp_record(ExpRef(id=found.id), "nested").data)
        return found

    def export_run_meta(self, run: Any, target: Path | str) -> RunApi:
        """Write the run's metadata and its experiment's into `target`."""
        found = self.get_run(run)
        self.export_exp_meta(found.exp, target)
        self._target_store(target).put("run", (found.id,), self._run_record(found.id, "nested").data)
        return found

    def export_model_meta(self, model: Any, target: Path | str) -> ModelApi:
        """Write the registered model's metadata, aliases included, into `target`."""
        store = self._target_store(target)
        found = self.get_model(model)
        store.put("model", (found.name,), self._model_record(found.name, "nested").data)
        for alias, version in found.aliases.items():
            store.put("alias", (found.name, alias), {"version": version})
        return found

    def export_model_version_meta(self, model_version: Any, target: Path | str) -> ModelVersionApi:
        """Write the model version with its model, run and experiment into `target`."""
        found = self.get_model_version(model_version)
        self.export_model_meta(found.model, target)
        if found.run is not None:
            self.export_run_meta(found.run, target)
        store = self._target_store(target)
        store.put(
            "mv",
            (found.model.name, found.version),
            self._mv_record(ModelVersionRef(model=found.model.name, version=found.version), "nested").data,
        )
        for alias in found.aliases:
            store.put("alias", (found.model.name, alias), {"version": found.version})
        return found
