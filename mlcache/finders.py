"""Finders of `BaseMlflowApi`: MongoDB queries and sorting, online with push-down, offline indexed.

Online, the plugin is asked for a superset of the matches (what it can push down), pages are
fetched lazily, every entity read is written through to the cache, and the full query runs
locally. Offline, the derived index selects candidates and the same query runs on the cached
documents. Both paths compose the same documents, so they return the same entities; with a sort
they return them in the same order (ties broken by id). Without a sort, the order is the backend's.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import CacheMiss, CorruptMetadata, EntityNotFound
from .handles import ExpApi, LoggedModelApi, ModelApi, ModelVersionApi, RunApi, bind
from .identifiers import ExpRef, exp_ref, run_ref
from .index import sql_filter
from .query import MongoQuery, check_sort, compile_query, sort_docs
from .records import run_from_record

if TYPE_CHECKING:
    from .base import Freshness
    from .metadata_store import MetadataStore, Record

Query = Mapping[str, Any] | None
Sort = list[tuple[str, int]] | None


def _with_times(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored record with its `*_time` fields as datetimes, as queries compare them."""
    doc = dict(data)
    for key, value in data.items():
        if key.endswith("_time") and isinstance(value, str):
            with contextlib.suppress(ValueError):
                doc[key] = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return doc


class FindersMixin:
    """find_exps / find_runs / find_models / find_model_versions / find_child_runs."""

    if TYPE_CHECKING:
        offline_mode: bool
        _meta: MetadataStore

        def _exp_record(self, ref: ExpRef, freshness: Freshness) -> Record: ...
        def _run_record(self, run_id: str, freshness: Freshness) -> Record: ...
        def _model_record(self, name: str, freshness: Freshness) -> Record: ...
        def _store_exp(self, data: dict[str, Any]) -> Record: ...
        def _store_model(self, data: dict[str, Any]) -> Record: ...
        def _store_mv(self, data: dict[str, Any]) -> Record: ...
        def _compose_exp(self, record: Record) -> ExpApi: ...
        def _compose_run(self, record: Record, freshness: Freshness = "nested") -> RunApi: ...
        def _compose_model(self, record: Record) -> ModelApi: ...
        def _compose_mv(self, record: Record, freshness: Freshness = "nested") -> ModelVersionApi: ...
        def _compose_logged(self, record: Record, freshness: Freshness = "nested") -> LoggedModelApi: ...
        def _warn_bad(self, exc: CorruptMetadata) -> None: ...
        def get_run(self, run: Any, force_refresh: bool = False) -> RunApi: ...

    # ----------------------------------------------------------------- plugin hooks
    @abstractmethod
    def _impl_find_exps(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Experiment documents, at least all that match `query` (a superset is fine)."""

    @abstractmethod
    def _impl_find_runs(self, exp_ids: list[str] | None, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run documents of these experiments (None: all), at least all that match `query`."""

    @abstractmethod
    def _impl_find_logged_models(self, exp_ids: list[str] | None, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Logged model documents of these experiments (None: all), at least all that match `query`."""

    @abstractmethod
    def _impl_find_models(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Registered model documents, at least all that match `query`."""

    @abstractmethod
    def _impl_find_model_versions(self, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Model version documents, at least all that match `query`."""

    # ----------------------------------------------------------------- match documents
    def _exp_match_doc(self, exp_id: str, memo: dict) -> dict[str, Any] | None:
        if ("exp", exp_id) not in memo:
            try:
                memo["exp", exp_id] = _with_times(self._exp_record(exp_ref(exp_id), "nested").data)
            except (CacheMiss, EntityNotFound, CorruptMetadata):
                memo["exp", exp_id] = None
        return memo["exp", exp_id]

    def _run_match_doc(self, data: Mapping[str, Any], memo: dict) -> dict[str, Any] | None:
        exp = self._exp_match_doc(str(data.get("exp_id")), memo)
        if exp is None:
            return None
        doc = _with_times({k: v for k, v in data.items() if k != "exp_id"})
        doc["exp"] = exp
        return doc

    def _mv_match_doc(self, data: Mapping[str, Any], memo: dict) -> dict[str, Any] | None:
        name = str(data.get("model_name"))
        if ("model", name) not in memo:
            try:
                memo["model", name] = _with_times(self._model_record(name, "nested").data)
            except (CacheMiss, EntityNotFound, CorruptMetadata):
                memo["model", name] = None
        model = memo["model", name]
        if model is None:
            return None
        run = None
        run_id = data.get("run_id")
        if run_id:
            if ("run", run_id) not in memo:
                try:
                    memo["run", run_id] = self._run_match_doc(self._run_record(run_id, "nested").data, memo)
                except (CacheMiss, EntityNotFound, CorruptMetadata):
                    memo["run", run_id] = None
            run = memo["run", run_id]
        doc = _with_times({k: v for k, v in data.items() if k != "model_name"})
        doc["model"], doc["run"] = model, run
        return doc

    # ----------------------------------------------------------------- the engine
    def _find(
        self,
        kind: str,
        compiled: MongoQuery,
        sort: list[tuple[str, int]],
        online: Callable[[dict[str, Any]], Iterator[dict[str, Any]]],
        store: Callable[[dict[str, Any]], Record],
        to_doc: Callable[[Mapping[str, Any], dict], dict[str, Any] | None],
        compose: Callable[[Record], Any],
        field_map: Mapping[str, str],
        key_of: Callable[[Mapping[str, Any]], tuple[str, ...]],
        exp_ids: list[str] | None = None,
    ) -> Iterator[Any]:
        query: dict[str, Any] = compiled._definition  # normalized by compile_query
        memo: dict = {}

        def matched() -> Iterator[tuple[Any, dict[str, Any]]]:
            if not self.offline_mode:
                for data in online(query):
                    record = store(data)
                    doc = to_doc(record.data, memo)
                    if doc is not None and compiled.match(doc):
                        yield compose(record), doc
                return
            flt = sql_filter(query, field_map, kind)
            if exp_ids is not None:
                flt.clauses.append(f"exp_id IN ({', '.join('?' * len(exp_ids))})")
                flt.params.extend(exp_ids)
            for indexed in self._meta.index.candidates(kind, flt):
                doc = to_doc(indexed.data, memo)
                if doc is None or not compiled.match(doc):
                    continue
                try:
                    record = self._meta.get(kind, indexed.key, indexed)
                except CorruptMetadata as exc:
                    self._warn_bad(exc)
                    continue
                if record is None:
                    continue
                if record.data is not indexed.data and record.data != indexed.data:
                    doc = to_doc(record.data, memo)
                    if doc is None or not compiled.match(doc):
                        continue
                yield compose(record), doc

        if not sort:
            return (entity for entity, _ in matched())
        pairs = list(matched())
        ordered = sort_docs(pairs, sort, lambda pair: pair[1], lambda pair: key_of(pair[1]))
        return (entity for entity, _ in ordered)

    def _composer(self, handle: type, from_record: Callable[..., Any]) -> Callable[[Record], Any]:
        """Composition of runs or logged models that reads and binds each experiment once per find."""
        exps: dict[str, ExpApi] = {}

        def compose(record: Record) -> Any:
            exp_id = str(record.data.get("exp_id"))
            if exp_id not in exps:
                exps[exp_id] = self._compose_exp(self._exp_record(ExpRef(id=exp_id), "nested"))
            return bind(handle, from_record(record.data, exps[exp_id], record.path), self)  # type: ignore[arg-type]

        return compose

    # ----------------------------------------------------------------- public finders
    def find_exps(self, query: Query = None, sort: Sort = None) -> Iterator[ExpApi]:
        """Experiments matching a MongoDB query on their documents (lazy)."""
        return self._find(
            "exp",
            compile_query(query),
            check_sort(sort),
            self._impl_find_exps,
            self._store_exp,
            lambda data, memo: _with_times(data),
            self._compose_exp,
            {},
            lambda d: (d["id"],),
        )

    def find_runs(self, query: Query = None, sort: Sort = None, exp: Any = None) -> Iterator[RunApi]:
        """Runs matching a MongoDB query (`{"params.lr": {"$gt": 0.01}}`), in `exp` or everywhere."""
        compiled, checked = compile_query(query), check_sort(sort)
        exp_ids = None if exp is None else [self._exp_record(exp_ref(exp), "nested").data["id"]]
        return self._find(
            "run",
            compiled,
            checked,
            lambda q: self._impl_find_runs(exp_ids, q),
            lambda data: self._meta.put("run", (data["id"],), data),
            self._run_match_doc,
            self._composer(RunApi, run_from_record),
            {"exp.id": "exp_id"},
            lambda d: (d["id"],),
            exp_ids,
        )

    def find_logged_models(self, query: Query = None, sort: Sort = None, exp: Any = None) -> Iterator[LoggedModelApi]:
        """Logged models (MLflow 3) matching a MongoDB query, in `exp` or everywhere (lazy)."""
        compiled, checked = compile_query(query), check_sort(sort)
        exp_ids = None if exp is None else [self._exp_record(exp_ref(exp), "nested").data["id"]]
        return self._find(
            "lm",
            compiled,
            checked,
            lambda q: self._impl_find_logged_models(exp_ids, q),
            lambda data: self._meta.put("lm", (data["id"],), data),
            self._run_match_doc,
            self._compose_logged,
            {"exp.id": "exp_id"},
            lambda d: (d["id"],),
            exp_ids,
        )

    def find_models(self, query: Query = None, sort: Sort = None) -> Iterator[ModelApi]:
        """Registered models matching a MongoDB query (lazy)."""
        return self._find(
            "model",
            compile_query(query),
            check_sort(sort),
            self._impl_find_models,
            self._store_model,
            lambda data, memo: _with_times(data),
            self._compose_model,
            {},
            lambda d: (d["name"],),
        )

    def find_model_versions(
        self, query: Query = None, sort: Sort = None, include_deleted: bool = False
    ) -> Iterator[ModelVersionApi]:
        """Model versions matching a MongoDB query (`{"model.name": "fraud", "tags.stage": "prod"}`);
        versions whose files were deleted (tag `mlcache.deleted`) only with `include_deleted`."""
        hide_deleted = None if include_deleted else {"tags.mlcache.deleted": {"$exists": False}}
        return self._find(
            "mv",
            compile_query(query, also=hide_deleted),
            check_sort(sort),
            self._impl_find_model_versions,
            self._store_mv,
            self._mv_match_doc,
            self._compose_mv,
            {"model.name": "model_name"},
            lambda d: (d["model"]["name"], f"{int(d['version']):012d}"),
        )

    def find_child_runs(self, parent: Any, query: Query = None, sort: Sort = None) -> Iterator[RunApi]:
        """Runs whose parent is `parent` (lazy)."""
        found = self.get_run(parent)
        return self.find_runs({"$and": [{"parent_run_id": found.id}, dict(query or {})]}, sort, exp=found.exp)

    # ----------------------------------------------------------------- convenience lookups
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
        run_id, _ = run_ref(run)
        try:
            return bool(self.list_run_artifacts(run_id, path_in_run))  # type: ignore[attr-defined]
        except (EntityNotFound, CacheMiss):
            return False
