"""`BaseMlflowApi`: the public façade over mlcache's engines, configured once.

Its methods are short delegations to engines with explicit dependencies, built when the api is:
- `MetadataResolver` (cache-or-fetch of documents, the offline-first rules) and `Composer`
  (records to entities bound to the api);
- `SearchEngine` (MongoDB finds, online with push-down, offline indexed);
- `TrackingEngine` (writes to the backend, written through);
- `ArtifactCache` (where files are, hits, atomic pulls, holds, uploads) over an `ArtifactStore`;
- `Exporter` (closures into another cache dir or a bundle) and `CacheAdmin` (usage, prune, clean).
Every engine reaches the backend through `Backend`, which calls the plugin's hooks (`hooks.py`)
under the retry policy and deadline of each call. Configuration is frozen: copies with other
settings come from `with_cache_dir` and `in_offline_mode`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import PrivateAttr

from .api_settings import ApiSettings
from .artifact_cache import ArtifactCache, ArtifactSettings
from .artifact_store import ArtifactStore
from .backend import Backend
from .cache_admin import CacheAdmin
from .cache_api import CacheMethods
from .compose import Composer
from .errors import CacheMiss, EntityNotFound
from .export import Exporter
from .handles import ExpApi, LoggedModelApi, ModelApi, ModelVersionApi, RunApi
from .hooks import PluginHooks
from .identifiers import ExpRef, exp_ref, model_name, model_version_ref, require_logged_model_id, run_id_of, run_ref
from .layout import CacheLayout
from .manifest import EntryKey
from .metadata_store import MetadataStore
from .placement import place_tree
from .progress import auto_progress
from .query import check_sort as _check_sort
from .query import compile_query
from .resolver import Freshness, MetadataResolver
from .search import SearchEngine
from .timeutil import utcnow
from .tracking import TrackingEngine
from .tracking_api import TrackingMethods
from .transfer import RemoteFile

T = TypeVar("T")
Query = Mapping[str, Any] | None
Sort = list[tuple[str, int]] | None
DELETED_TAG = "mlcache.deleted"


def _fresh(force_refresh: bool) -> Freshness:
    return "force" if force_refresh else "normal"


class BaseMlflowApi(TrackingMethods, CacheMethods, PluginHooks, ApiSettings):
    """Cache-or-fetch access to experiments, runs, models, model versions and their files.

    Offline (`offline_mode=True` or `MLCACHE_OFFLINE=1`) nothing touches the network: reads come
    from the cache and a miss raises `CacheMiss`. Online, every entity read is written through to
    the cache, cached metadata younger than `metadata_max_age` is served as is, and when the server
    cannot be reached a cached copy is served with a `CacheFallbackWarning`.
    """

    _layout: CacheLayout = PrivateAttr()
    _meta: MetadataStore = PrivateAttr()
    _artifacts: ArtifactStore = PrivateAttr()
    _resolver: MetadataResolver = PrivateAttr()
    _composer: Composer = PrivateAttr()
    _search: SearchEngine = PrivateAttr()
    _tracking: TrackingEngine = PrivateAttr()
    _files: ArtifactCache = PrivateAttr()
    _exporter: Exporter = PrivateAttr()
    _admin: CacheAdmin = PrivateAttr()

    def model_post_init(self, context: Any) -> None:
        """Build the stores and engines this api's settings describe."""
        layout = CacheLayout(self.cache_dir, soft_locks=self.lock_mode == "soft", stale_lock_age=self.stale_lock_age)
        self._layout = layout
        self._meta = MetadataStore(layout)
        self._artifacts = ArtifactStore(layout, self.pull_lock_timeout)
        backend = Backend(self, self.retry, self.timeout)
        self._resolver = MetadataResolver(self._meta, backend, self.offline_mode, self.metadata_max_age, self.cache_dir)
        self._composer = Composer(self._resolver, self)
        self._search = SearchEngine(self._resolver, self._composer, self._meta, backend)
        self._tracking = TrackingEngine(self._resolver, self._composer, self._meta, backend)
        settings = ArtifactSettings(
            offline=self.offline_mode,
            always_pull=self.always_pull_artifacts,
            pull_offline=self.pull_artifacts_in_offline_mode,
            keep_uploads=self.cache_local_artifacts,
            progress=self.progress or (auto_progress if self.show_progress else None),
            allowed_sources=self.allowed_sources,
            lock_timeout=self.lock_timeout,
        )
        self._files = ArtifactCache(
            self._artifacts, self._resolver, self._composer, backend, self.transfer, self.retry, settings
        )
        self._exporter = Exporter(self._resolver, self._composer, self._files, layout.root, self.lock_timeout)
        self._admin = CacheAdmin(layout, self._meta, self._artifacts)

    @property
    def layout(self) -> CacheLayout:
        return self._layout

    def _copy(self, **update: Any) -> BaseMlflowApi:
        return self.model_copy(update=update)

    @property
    def in_offline_mode(self) -> BaseMlflowApi:
        """A copy of this api that never touches the network."""
        return self._copy(offline_mode=True)

    def with_cache_dir(self, cache_dir: Path | str) -> BaseMlflowApi:
        """A copy of this api (same backend and settings) over another cache dir or bundle."""
        return self._copy(cache_dir=Path(cache_dir).expanduser().absolute())

    # ----------------------------------------------------------------- get and cache
    def get_exp(self, exp: Any, force_refresh: bool = False) -> ExpApi:
        """Experiment by entity, handle, id or name."""
        return self._composer.exp(self._resolver.exp(exp_ref(exp), _fresh(force_refresh)))

    def get_exp_by_name(self, name: str, force_refresh: bool = False) -> ExpApi:
        """Experiment by exact name (never taken as an id)."""
        return self._composer.exp(self._resolver.exp(ExpRef(name=name), _fresh(force_refresh)))

    def get_run(self, run: Any, force_refresh: bool = False) -> RunApi:
        """Run by entity, handle, id or `runs:/<id>/...`."""
        return self._composer.run(self._resolver.run(run_id_of(run), _fresh(force_refresh)))

    def get_model(self, model: Any, force_refresh: bool = False) -> ModelApi:
        """Registered model by entity, handle, name or `models:/name`."""
        return self._composer.model(self._resolver.model(model_name(model), _fresh(force_refresh)))

    def get_model_version(self, model_version: Any, force_refresh: bool = False) -> ModelVersionApi:
        """Model version by entity, handle, `(name, version)`, `(name, "@alias")` or `models:/` URI."""
        return self._composer.mv(self._resolver.mv(model_version_ref(model_version), _fresh(force_refresh)))

    def get_logged_model(self, logged_model: Any, force_refresh: bool = False) -> LoggedModelApi:
        """Logged model (MLflow 3) by entity, handle, `m-<id>` or `models:/m-<id>`."""
        record = self._resolver.logged(require_logged_model_id(logged_model), _fresh(force_refresh))
        return self._composer.logged(record)

    def cache_exp_meta(self, exp: Any) -> ExpApi:
        """Fetch the experiment into the cache (online); offline, check that it is cached."""
        return self._composer.exp(self._resolver.exp(exp_ref(exp), "force"))

    def cache_run_meta(self, run: Any) -> RunApi:
        """Fetch the run and its experiment into the cache."""
        return self._composer.run(self._resolver.run(run_id_of(run), "force"), "force")

    def cache_model_meta(self, model: Any) -> ModelApi:
        """Fetch the registered model, aliases included, into the cache."""
        return self._composer.model(self._resolver.model(model_name(model), "force"))

    def cache_model_version_meta(self, model_version: Any) -> ModelVersionApi:
        """Fetch the model version with its model (aliases included), run, experiment and logged model."""
        return self._composer.mv(self._resolver.mv(model_version_ref(model_version), "force"), "force")

    def cache_logged_model_meta(self, logged_model: Any) -> LoggedModelApi:
        """Fetch the logged model and its experiment into the cache."""
        return self._composer.logged(self._resolver.logged(require_logged_model_id(logged_model), "force"), "force")

    # ----------------------------------------------------------------- export of metadata
    def _export(self, write: Callable[[Any, Any], T], entity: Any, target: Path | str) -> T:
        with self._meta.reading_once():
            return write(entity, self._exporter.open(target))

    def export_exp_meta(self, exp: Any, target: Path | str) -> ExpApi:
        """Write the experiment's metadata into the cache dir (or bundle) at `target`."""
        return self._export(self._exporter.exp, exp, target)

    def export_run_meta(self, run: Any, target: Path | str) -> RunApi:
        """Write the run's metadata and its experiment's into `target`."""
        return self._export(self._exporter.run, run, target)

    def export_model_meta(self, model: Any, target: Path | str) -> ModelApi:
        """Write the registered model's metadata, aliases included, into `target`."""
        return self._export(self._exporter.model, model, target)

    def export_model_version_meta(self, model_version: Any, target: Path | str) -> ModelVersionApi:
        """Write the model version with its model, run, experiment and logged model into `target`."""
        return self._export(self._exporter.model_version, model_version, target)

    def export_logged_model_meta(self, logged_model: Any, target: Path | str) -> LoggedModelApi:
        """Write the logged model's metadata and its experiment's into `target`."""
        return self._export(self._exporter.logged_model, logged_model, target)

    # ----------------------------------------------------------------- find
    def find_exps(self, query: Query = None, sort: Sort = None) -> Iterator[ExpApi]:
        """Experiments matching a MongoDB query on their documents (lazy)."""
        return self._search.find("exp", compile_query(query), _check_sort(sort))

    def find_runs(self, query: Query = None, sort: Sort = None, exp: Any = None) -> Iterator[RunApi]:
        """Runs matching a MongoDB query (`{"params.lr": {"$gt": 0.01}}`), in `exp` or everywhere."""
        compiled, checked = compile_query(query), _check_sort(sort)
        exp_ids = None if exp is None else [self._tracking.exp_id(exp)]
        return self._search.find("run", compiled, checked, exp_ids)

    def find_logged_models(self, query: Query = None, sort: Sort = None, exp: Any = None) -> Iterator[LoggedModelApi]:
        """Logged models (MLflow 3) matching a MongoDB query, in `exp` or everywhere (lazy)."""
        compiled, checked = compile_query(query), _check_sort(sort)
        exp_ids = None if exp is None else [self._tracking.exp_id(exp)]
        return self._search.find("lm", compiled, checked, exp_ids)

    def find_models(self, query: Query = None, sort: Sort = None) -> Iterator[ModelApi]:
        """Registered models matching a MongoDB query (lazy)."""
        return self._search.find("model", compile_query(query), _check_sort(sort))

    def find_model_versions(
        self, query: Query = None, sort: Sort = None, include_deleted: bool = False
    ) -> Iterator[ModelVersionApi]:
        """Model versions matching a MongoDB query (`{"model.name": "fraud", "tags.stage": "prod"}`);
        versions whose files were deleted (tag `mlcache.deleted`) only with `include_deleted`."""
        hide_deleted = None if include_deleted else {f"tags.{DELETED_TAG}": {"$exists": False}}
        return self._search.find("mv", compile_query(query, also=hide_deleted), _check_sort(sort))

    def find_child_runs(self, parent: Any, query: Query = None, sort: Sort = None) -> Iterator[RunApi]:
        """Runs whose parent is `parent` (lazy)."""
        found = self.get_run(parent)
        return self.find_runs({"$and": [{"parent_run_id": found.id}, dict(query or {})]}, sort, exp=found.exp)

    def get_run_by_name(self, exp: Any, name: str) -> RunApi:
        """The run called `name` in `exp` (the most recently started one if several)."""
        found = list(self.find_runs({"name": name}, [("start_time", -1)], exp=exp))
        if not found:
            raise EntityNotFound("run", name, f"no run of that name in experiment {exp_ref(exp).name or exp}")
        return found[0]

    def find_runs_with_model_versions(self, query: Query = None, sort: Sort = None) -> Iterator[RunApi]:
        """Runs from which at least one model version was registered (matching `query`)."""
        run_ids = sorted({mv.run_id for mv in self.find_model_versions() if mv.run_id})
        if not run_ids:
            return iter(())
        return self.find_runs({"$and": [{"id": {"$in": run_ids}}, dict(query or {})]}, sort)

    def run_artifact_exists(self, run: Any, path_in_run: str) -> bool:
        """Whether `path_in_run` exists among the run's artifacts (cached or remote)."""
        try:
            return bool(self.list_run_artifacts(run_ref(run)[0], path_in_run))
        except (EntityNotFound, CacheMiss):
            return False

    # ----------------------------------------------------------------- run artifacts
    def list_run_artifacts(self, run: Any, path_in_run: str = "") -> list[RemoteFile]:
        """Files under `path_in_run` of the run (relative paths, sizes); offline, from the cache."""
        run_id, uri_path = run_ref(run)
        sub = path_in_run or uri_path or ""
        if not sub:
            return self._files.list_run_root(run_id)
        return self._files.list(self._files.run_target(run_id, sub))

    def cache_run_artifact(self, run: Any, path_in_run: str | None = None) -> Path:
        """Pull the run's artifact at `path_in_run` into the cache (if not complete there) and return its path."""
        return self._files.ensure(self._files.run_target(run, path_in_run))

    def get_run_artifact(self, run: Any, path_in_run: str | None = None, hold: bool = False) -> Path:
        """Local path of the run's artifact, pulled on a miss (read-only files). With `hold`, prune and
        clean leave the entry alone until this process ends (or `mlcache.release_holds()`)."""
        target = self._files.run_target(run, path_in_run)
        return self._files.held(target) if hold else self._files.ensure(target)

    def place_run_artifact(
        self, run: Any, path_in_run: str | None, target: Path | str, link: bool = True, overwrite: bool = False
    ) -> Path:
        """Put the artifact at `target`: symlinks per file into the cache, or a copy (`link=False`)."""
        return place_tree(self._layout.root, self.get_run_artifact(run, path_in_run), target, link, overwrite)

    def load_run_artifact(self, run: Any, path_in_run: str | None, loader: Callable[[Path], T]) -> T:
        """`loader(local_path)` on the cached artifact; prune and clean leave it alone meanwhile."""
        return self._files.load(self._files.run_target(run, path_in_run), loader)

    def export_run_artifact(self, run: Any, path_in_run: str | None, target: Path | str) -> Path:
        """Copy the artifact (and the run's metadata) into the cache dir or bundle at `target`."""
        with self._meta.reading_once():
            return self._exporter.run_artifact(run, path_in_run, self._exporter.open(target))

    def clean_cached_run_artifact(self, run: Any, path_in_run: str | None = None) -> bool:
        """Drop the cached entry (not the remote files); True if something was removed."""
        return self._files.clean(self._files.run_target(run, path_in_run))

    def log_run_artifact(self, run: Any, source: Path | str | Callable[[Path], None], path_in_run: str) -> Path | None:
        """Upload a file/folder, or what `source(path)` writes at `path`, to `path_in_run` of the run.
        With `cache_local_artifacts`, the uploaded files become the cache entry and its path is returned."""
        self._tracking.require_online("log_run_artifact")
        return self._files.upload(self._files.run_target(run, path_in_run), source)

    def delete_run_artifact(self, run: Any, path_in_run: str) -> None:
        """Remove `path_in_run` of the run from the artifact store itself and from the cache."""
        self._tracking.require_online("delete_run_artifact")
        self._files.delete(self._files.run_target(run, path_in_run))

    # ----------------------------------------------------------------- model artifacts
    def list_model_artifacts(self, model_version: Any) -> list[RemoteFile]:
        """Files of the model version (relative paths, sizes); offline, from the cache."""
        return self._files.list(self._files.model_target(model_version))

    def cache_model_artifact(self, model_version: Any) -> Path:
        """Pull the version's files into the cache (if not complete there) and return their path."""
        return self._files.ensure(self._files.model_target(model_version))

    def get_model_artifact(self, model_version: Any, hold: bool = False) -> Path:
        """Local path of the version's files, pulled on a miss (read-only files). With `hold`, prune and
        clean leave the entry alone until this process ends (or `mlcache.release_holds()`)."""
        target = self._files.model_target(model_version)
        return self._files.held(target) if hold else self._files.ensure(target)

    def place_model_artifact(
        self, model_version: Any, target: Path | str, link: bool = True, overwrite: bool = False
    ) -> Path:
        """Put the version's files at `target`: symlinks per file, or a copy (`link=False`)."""
        return place_tree(self._layout.root, self.get_model_artifact(model_version), target, link, overwrite)

    def load_model_artifact(self, model_version: Any, loader: Callable[[Path], T]) -> T:
        """`loader(local_path)` on the version's cached files; prune and clean leave them alone meanwhile."""
        return self._files.load(self._files.model_target(model_version), loader)

    def export_model_artifact(self, model_version: Any, target: Path | str) -> Path:
        """Copy the version's files and metadata (model, run, experiment) into `target`."""
        with self._meta.reading_once():
            return self._exporter.model_artifact(model_version, self._exporter.open(target))

    def clean_cached_model_artifact(self, model_version: Any) -> bool:
        """Drop the version's cached files; True if something was removed. The entry label `du`
        shows for files of another URL (`models:/<32 hex>`) is accepted too."""
        if isinstance(model_version, str) and re.fullmatch(r"models:/[0-9a-f]{32}", model_version):
            return self._files.clean_entry(EntryKey("urls", (model_version.removeprefix("models:/"),)))
        return self._files.clean(self._files.model_target(model_version))

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

    def delete_model_version_artifact(self, model_version: Any) -> None:
        """Remove a version's files from the artifact store and the cache, and tag the version
        `mlcache.deleted` (finders leave such versions out unless asked)."""
        self._tracking.require_online("delete_model_version_artifact")
        mv = self.get_model_version(model_version)
        self._files.delete(self._files.model_target(mv))
        self.set_tags_on_model_version(mv, {DELETED_TAG: utcnow().isoformat()})
