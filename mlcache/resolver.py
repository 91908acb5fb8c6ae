"""Metadata resolution: cache-or-fetch of entity documents, by the offline-first rules.

For each kind (`KINDS`), a lookup serves the cached record, fetches it from the backend, or falls
back to the cache with a warning:
- offline, only the cache answers; a miss is a `CacheMiss` that says how to fill it;
- online, a record younger than `metadata_max_age` (by this machine's clock and the time the cache
  stored it) is served as is, anything else is fetched and written through;
- an entity composed into another (`nested`) is served from any cached copy;
- when the backend cannot be reached, a cached copy answers with a `CacheFallbackWarning`.
Writing a document through also writes what it implies: a model's aliases, a version's aliases.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from .backend import Backend
from .cache_admin import AliasStatus
from .errors import BackendError, CacheFallbackWarning, CacheMiss, CorruptMetadata, EntityNotFound, ServerUnreachable
from .identifiers import ExpRef, ModelVersionRef
from .metadata_store import CLOCK_SKEW, Document, MetadataStore, Record
from .timeutil import utcnow

Freshness = Literal["normal", "force", "nested"]
"""How a lookup treats the cache: `normal` honours `metadata_max_age`, `force` always fetches
online, `nested` (an entity composed into another) uses any cached copy before fetching."""


@dataclass(frozen=True)
class KindSpec:
    """One kind of document: what it is called, how its key is read from it, how to fill it."""

    label: str
    fill: str
    key_fields: tuple[str, ...]

    def key_of(self, data: dict[str, Any]) -> tuple[str, ...]:
        try:
            key = tuple(data[field] for field in self.key_fields)
        except (KeyError, TypeError):
            raise BackendError(f"the backend returned a {self.label} without {', '.join(self.key_fields)}") from None
        if not all(isinstance(part, str) and part for part in key):
            raise BackendError(f"the backend returned a {self.label} whose {', '.join(self.key_fields)} is not text")
        return key


KINDS = {
    "exp": KindSpec("experiment", "cache_exp_meta", ("id",)),
    "run": KindSpec("run", "cache_run_meta", ("id",)),
    "model": KindSpec("model", "cache_model_meta", ("name",)),
    "mv": KindSpec("model version", "cache_model_version_meta", ("model_name", "version")),
    "lm": KindSpec("logged model", "cache_logged_model_meta", ("id",)),
}


class MetadataResolver:
    """Cache-or-fetch of the documents of one cache dir through one backend."""

    def __init__(
        self, meta: MetadataStore, backend: Backend, offline: bool, max_age: timedelta, cache_dir: Path
    ) -> None:
        self.meta = meta
        self.backend = backend
        self.offline = offline
        self.max_age = max_age
        self.cache_dir = cache_dir

    # ----------------------------------------------------------------- the core
    def resolve(
        self,
        kind: str,
        shown: str,
        lookup: Callable[[], Record | None],
        fetch: Callable[[], Mapping[str, Any]],
        freshness: Freshness,
    ) -> Record:
        """Serve the cache, fetch (and write through), or fall back to the cache with a warning."""
        spec = KINDS[kind]
        try:
            cached = lookup()
        except CorruptMetadata as exc:
            if self.offline:
                raise
            warnings.warn(f"{exc}; fetching it again", CacheFallbackWarning, stacklevel=5)
            cached = None
        if self.offline:
            if cached is None:
                hint = f"call api.{spec.fill}({shown!r})"
                raise CacheMiss(spec.label, shown, self.cache_dir, hint)
            return cached
        usable = cached is not None and not cached.stale and freshness != "force"
        if usable and cached is not None and (freshness == "nested" or self.young(cached)):
            return cached
        try:
            data = fetch()
        except ServerUnreachable as exc:
            if cached is None:
                raise
            warnings.warn(
                f"{exc}; answering {spec.label} {shown!r} from the cache "
                f"(cached at {cached.cached_at:%Y-%m-%d %H:%M:%S} UTC)",
                CacheFallbackWarning,
                stacklevel=5,
            )
            return cached
        return self.store(kind, data)

    def alias_status(self) -> list[AliasStatus]:
        """Every alias of the cached models next to the server's current one; nothing is written."""
        rows = []
        for record in self.meta.scan("model", on_error=self.warn_bad):
            name = record.key[0]
            try:
                current = self.backend.call(f"model {name}", self.backend.hooks._impl_fetch_model, name)
                now = current.get("aliases") or {}
            except EntityNotFound:
                now = {}
            for alias, version in sorted((record.data.get("aliases") or {}).items()):
                server = now.get(alias)
                rows.append(AliasStatus(name, str(alias), str(version), None if server is None else str(server)))
        return rows

    def young(self, record: Record) -> bool:
        """Younger than `metadata_max_age` by this machine's clock and the cache's own record of when
        it stored the document; a time in the future (another clock, a planted file) is not young."""
        age = utcnow() - record.cached_at
        return -CLOCK_SKEW <= age < self.max_age

    def store(self, kind: str, fetched: Mapping[str, Any]) -> Record:
        """Write a fetched document through, with what it implies (alias pointers)."""
        return self.store_many(kind, [fetched])[0]

    def store_many(self, kind: str, fetched: Sequence[Mapping[str, Any]]) -> list[Record]:
        """Write fetched documents of one kind through together (a page of a search), with the
        alias pointers they imply; their records in the order given."""
        documents: list[Document] = []
        for item in fetched:
            if not isinstance(item, dict):
                raise BackendError(f"the backend returned {type(item).__name__} where a {KINDS[kind].label} was due")
            data: dict[str, Any] = item
            key = KINDS[kind].key_of(data)
            documents.append((kind, key, data))
            if kind == "model":
                documents.extend(
                    ("alias", (key[0], alias), {"version": str(version)})
                    for alias, version in (data.get("aliases") or {}).items()
                )
            elif kind == "mv":
                documents.extend(("alias", (key[0], alias), {"version": key[1]}) for alias in data.get("aliases") or ())
        return [record for record in self.meta.put_many(documents) if record.kind == kind]

    def warn_bad(self, exc: CorruptMetadata) -> None:
        warnings.warn(f"{exc}; skipped", CacheFallbackWarning, stacklevel=3)

    # ----------------------------------------------------------------- kinds
    def exp(self, ref: ExpRef, freshness: Freshness) -> Record:
        """An experiment by id, else (when the id is unknown) by name."""
        hooks = self.backend.hooks
        if ref.id is not None:
            exp_id = ref.id
            try:
                return self.resolve(
                    "exp",
                    exp_id,
                    lambda: self.meta.get("exp", (exp_id,)),
                    lambda: self.backend.call(f"experiment {exp_id}", hooks._impl_fetch_exp, exp_id),
                    freshness,
                )
            except (EntityNotFound, CacheMiss):
                if ref.name is None:
                    raise
        name = ref.name or ""
        return self.resolve(
            "exp",
            name,
            lambda: next(
                (r for r in self.meta.scan("exp", on_error=self.warn_bad) if r.data.get("name") == name), None
            ),
            lambda: self.backend.call(f"experiment {name}", hooks._impl_fetch_exp_by_name, name),
            freshness,
        )

    def run(self, run_id: str, freshness: Freshness) -> Record:
        return self._by_key("run", run_id, self.backend.hooks._impl_fetch_run, freshness)

    def model(self, name: str, freshness: Freshness) -> Record:
        return self._by_key("model", name, self.backend.hooks._impl_fetch_model, freshness)

    def logged(self, model_id: str, freshness: Freshness) -> Record:
        return self._by_key("lm", model_id, self.backend.hooks._impl_fetch_logged_model, freshness)

    def _by_key(self, kind: str, key: str, fetch: Callable[[str], Mapping[str, Any]], freshness: Freshness) -> Record:
        """An entity of a one-part key: its cached document, or `fetch(key)` through the backend."""
        return self.resolve(
            kind,
            key,
            lambda: self.meta.get(kind, (key,)),
            lambda: self.backend.call(f"{KINDS[kind].label} {key}", fetch, key),
            freshness,
        )

    def mv(self, ref: ModelVersionRef, freshness: Freshness) -> Record:
        """A model version by number, or by alias (through the cached alias pointer)."""
        hooks = self.backend.hooks
        shown = str(ref)
        if ref.version is not None:
            version = ref.version
            return self.resolve(
                "mv",
                shown,
                lambda: self.meta.get("mv", (ref.model, version)),
                lambda: self.backend.call(shown, hooks._impl_fetch_model_version, ref.model, version),
                freshness,
            )
        alias = ref.alias or ""
        return self.resolve(
            "mv",
            shown,
            lambda: self._by_alias(ref.model, alias),
            lambda: self.backend.call(shown, hooks._impl_fetch_model_version_by_alias, ref.model, alias),
            freshness,
        )

    def _by_alias(self, model: str, alias: str) -> Record | None:
        """The cached version an alias points at; as old (and as stale) as the older of the two."""
        pointer = self.meta.get("alias", (model, alias))
        if pointer is None:
            return None
        record = self.meta.get("mv", (model, str(pointer.data.get("version"))))
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
