"""Search: MongoDB queries and sorting over entity documents, online with push-down, offline indexed.

Online, the backend is asked for a superset of the matches (what it can push down), one page at a
time and only as results are consumed; every document read is written through to the cache, and
the full query runs locally. Offline, the derived index selects candidates and the same query runs
on the cached documents. Both paths compose the same documents, so they return the same entities;
with a sort they return them in the same order (ties broken by id). Without a sort, the order is
the backend's (online) or the index's (offline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .backend import Backend
from .compose import Composer
from .errors import CacheMiss, CorruptMetadata, EntityNotFound
from .handles import ExpApi
from .identifiers import ExpRef
from .index_sql import sql_filter
from .metadata_store import MetadataStore, Record
from .query import MongoQuery, sort_docs
from .resolver import MetadataResolver
from .timeutil import parse_iso

MatchDoc = dict[str, Any]


def with_times(data: Mapping[str, Any], fields: frozenset[str] | None = None) -> dict[str, Any]:
    """A stored document (only its `fields`, when given) with its `*_time` fields as datetimes, as
    queries compare them."""
    doc = dict(data) if fields is None else {key: data[key] for key in fields if key in data}
    for key, value in doc.items():
        if key.endswith("_time") and isinstance(value, str) and (when := parse_iso(value)) is not None:
            doc[key] = when
    return doc


@dataclass(frozen=True)
class SearchKind:
    """How one kind is searched: its backend search, how a match document is built from a stored
    one, the query fields the index knows under another name, and the id sorting ties are broken by."""

    kind: str
    label: str
    field_map: Mapping[str, str]
    tie_key: Callable[[MatchDoc], tuple[str, ...]]


SEARCH_KINDS = {
    "exp": SearchKind("exp", "experiments", {}, lambda d: (d["id"],)),
    "run": SearchKind("run", "runs", {"exp.id": "exp_id"}, lambda d: (d["id"],)),
    "lm": SearchKind("lm", "logged models", {"exp.id": "exp_id"}, lambda d: (d["id"],)),
    "model": SearchKind("model", "models", {}, lambda d: (d["name"],)),
    "mv": SearchKind(
        "mv",
        "model versions",
        {"model.name": "model_name"},
        lambda d: (d["model"]["name"], f"{int(d['version']):012d}"),
    ),
}


class _Documents:
    """Match documents of one search: composed parts read once per search. With `fields`, a
    document holds only those top-level fields (all the query reads); an entity whose embedded
    entities are not cached has no document either way."""

    def __init__(self, resolver: MetadataResolver, fields: frozenset[str] | None = None) -> None:
        self.resolver = resolver
        self.fields = fields
        self.memo: dict[tuple[str, str], MatchDoc | None] = {}

    def _remember(self, key: tuple[str, str], read: Callable[[], MatchDoc | None]) -> MatchDoc | None:
        if key not in self.memo:
            try:
                self.memo[key] = read()
            except (CacheMiss, EntityNotFound, CorruptMetadata):
                self.memo[key] = None
        return self.memo[key]

    def of(self, kind: str, data: Mapping[str, Any]) -> MatchDoc | None:
        if kind in ("exp", "model"):
            return with_times(data, self.fields)
        if kind in ("run", "lm"):
            return self._with_exp(data, self.fields)
        return self._version(data)

    def _with_exp(self, data: Mapping[str, Any], fields: frozenset[str] | None = None) -> MatchDoc | None:
        exp_id = str(data.get("exp_id"))
        exp = self._remember(("exp", exp_id), lambda: with_times(self.resolver.exp(ExpRef(id=exp_id), "nested").data))
        if exp is None:
            return None
        doc = with_times(data, fields)
        doc.pop("exp_id", None)
        if fields is None or "exp" in fields:
            doc["exp"] = exp
        return doc

    def _version(self, data: Mapping[str, Any]) -> MatchDoc | None:
        name = str(data.get("model_name"))
        model = self._remember(("model", name), lambda: with_times(self.resolver.model(name, "nested").data))
        if model is None:
            return None
        doc = with_times(data, self.fields)
        doc.pop("model_name", None)
        if self.fields is None or "model" in self.fields:
            doc["model"] = model
        if self.fields is None or "run" in self.fields:
            run = None
            run_id = data.get("run_id")
            if isinstance(run_id, str) and run_id:
                run = self._remember(("run", run_id), lambda: self._with_exp(self.resolver.run(run_id, "nested").data))
            doc["run"] = run
        return doc


class SearchEngine:
    """Finds of every kind, online (pushed down, written through) or offline (indexed)."""

    def __init__(self, resolver: MetadataResolver, composer: Composer, meta: MetadataStore, backend: Backend) -> None:
        self.resolver = resolver
        self.composer = composer
        self.meta = meta
        self.backend = backend

    def find(
        self, kind: str, compiled: MongoQuery, sort: list[tuple[str, int]], exp_ids: list[str] | None = None
    ) -> Iterator[Any]:
        """Entities of `kind` matching `compiled` (in these experiments, for runs and logged
        models), lazily unless sorted."""
        spec = SEARCH_KINDS[kind]
        documents = _Documents(self.resolver, None if sort else compiled.roots)
        compose = self._composer(kind)

        def matching(data: Mapping[str, Any]) -> MatchDoc | None:
            doc = documents.of(kind, data)
            return doc if doc is not None and compiled.match(doc) else None

        def matched() -> Iterator[tuple[Any, MatchDoc]]:
            if self.resolver.offline:
                for record, doc in self._offline(spec, compiled, exp_ids, matching):
                    yield compose(record), doc
                return
            for record in self._online(spec, compiled, exp_ids):
                if (found := matching(record.data)) is not None:
                    yield compose(record), found

        if not sort:
            return (entity for entity, _ in matched())
        ordered = sort_docs(list(matched()), sort, lambda pair: pair[1], lambda pair: spec.tie_key(pair[1]))
        return (entity for entity, _ in ordered)

    def _online(self, spec: SearchKind, compiled: MongoQuery, exp_ids: list[str] | None) -> Iterator[Record]:
        hooks = self.backend.hooks
        query = compiled.definition
        searches: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
            "exp": (hooks._impl_search_exps, (query,)),
            "run": (hooks._impl_search_runs, (exp_ids, query)),
            "lm": (hooks._impl_search_logged_models, (exp_ids, query)),
            "model": (hooks._impl_search_models, (query,)),
            "mv": (hooks._impl_search_model_versions, (query,)),
        }
        hook, args = searches[spec.kind]
        for page in self.backend.pages(spec.label, hook, *args):
            yield from self.resolver.store_many(spec.kind, page)

    def _offline(
        self,
        spec: SearchKind,
        compiled: MongoQuery,
        exp_ids: list[str] | None,
        matching: Callable[[Mapping[str, Any]], MatchDoc | None],
    ) -> Iterator[tuple[Record, MatchDoc]]:
        """Matching cached records: the index, brought up to date with the files by the query
        (`index_refresh`: any file new, renamed over or edited in place is read again), selects
        candidates, and its copy of each document is matched and composed."""
        flt = sql_filter(compiled.definition, spec.field_map, spec.kind)
        if exp_ids is not None:
            flt.clauses.append(f"exp_id IN ({', '.join('?' * len(exp_ids))})")
            flt.params.extend(exp_ids)
        for indexed in self.meta.index.candidates(spec.kind, flt):
            doc = matching(indexed.data)
            if doc is not None:
                yield self.meta.indexed_record(spec.kind, indexed), doc

    def _composer(self, kind: str) -> Callable[[Record], Any]:
        """Composition for one search: each experiment of runs and logged models read once."""
        if kind == "exp":
            return self.composer.exp
        if kind == "model":
            return self.composer.model
        if kind == "mv":
            return self.composer.mv
        exps: dict[str, ExpApi] = {}

        def compose(record: Record) -> Any:
            exp_id = str(record.data.get("exp_id"))
            if exp_id not in exps:
                exps[exp_id] = self.composer.exp_of(record)
            if kind == "run":
                return self.composer.run(record, exp=exps[exp_id])
            return self.composer.logged(record, exp=exps[exp_id])

        return compose
