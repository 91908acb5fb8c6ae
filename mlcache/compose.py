"""Composition: cached records become entities bound to their api (handles).

A run's document holds its experiment's id, a version's its model's name and run's id: each fact
is stored once, and entities are composed on read, the composed parts resolved `nested` (any cached
copy serves) unless the caller asks otherwise. Composing a version online brings its logged model
into the cache too, so that every identifier of it resolves offline later.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .entities import Entity
from .errors import CacheMiss, CorruptMetadata, EntityNotFound
from .handles import ExpApi, Handle, LoggedModelApi, ModelApi, ModelVersionApi, RunApi, bind
from .identifiers import ExpRef
from .metadata_store import MEMO_LIMIT, Record
from .records import exp_from_record, logged_from_record, model_from_record, mv_from_record, run_from_record
from .resolver import Freshness, MetadataResolver

if TYPE_CHECKING:
    from .base import BaseMlflowApi


HandleT = TypeVar("HandleT", bound=Handle)


class Composer:
    """Builds handles from records, resolving what they are composed of through `resolver`.

    A handle is built once per set of documents: while the records it was composed from are the
    ones the store serves (the same parsed data, which the store keeps while the files are
    unchanged), the same immutable handle is returned without validating them again."""

    def __init__(self, resolver: MetadataResolver, api: BaseMlflowApi) -> None:
        self.resolver = resolver
        self.api = api
        self._built: dict[Path, tuple[tuple[Record | None, ...], Handle]] = {}

    def _once(self, records: tuple[Record | None, ...], cls: type[HandleT], build: Callable[[], Entity]) -> HandleT:
        """The handle of class `cls` composed from `records` (the first one its own document)."""
        key = records[0].path if records[0] is not None else None
        if key is None:
            return bind(cls, build(), self.api)
        held = self._built.get(key)
        if held is not None and type(held[1]) is cls and _same(held[0], records):
            return held[1]
        handle = bind(cls, build(), self.api)
        if len(self._built) >= MEMO_LIMIT:
            self._built.clear()
        self._built[key] = (records, handle)
        return handle

    def exp(self, record: Record) -> ExpApi:
        return self._once((record,), ExpApi, lambda: exp_from_record(record.data, record.path))

    def _exp_record_of(self, record: Record, freshness: Freshness) -> Record:
        exp_id = record.data.get("exp_id")
        if not isinstance(exp_id, str):
            raise CorruptMetadata(record.path, f"{record.kind} document without 'exp_id'")
        return self.resolver.exp(ExpRef(id=exp_id), freshness)

    def exp_of(self, record: Record, freshness: Freshness = "nested") -> ExpApi:
        """The experiment a run or logged model belongs to."""
        return self.exp(self._exp_record_of(record, freshness))

    def run(self, record: Record, freshness: Freshness = "nested", exp: ExpApi | None = None) -> RunApi:
        if exp is not None:
            return bind(RunApi, run_from_record(record.data, exp, record.path), self.api)
        exp_record = self._exp_record_of(record, freshness)
        return self._once(
            (record, exp_record), RunApi, lambda: run_from_record(record.data, self.exp(exp_record), record.path)
        )

    def model(self, record: Record) -> ModelApi:
        return self._once((record,), ModelApi, lambda: model_from_record(record.data, record.path))

    def mv(self, record: Record, freshness: Freshness = "nested") -> ModelVersionApi:
        model_record = self.resolver.model(record.data["model_name"], freshness)
        run_records: tuple[Record | None, ...] = (None, None)
        run_id = record.data.get("run_id")
        if run_id:
            with contextlib.suppress(EntityNotFound, CacheMiss):
                run_record = self.resolver.run(run_id, freshness)
                run_records = (run_record, self._exp_record_of(run_record, freshness))

        def build() -> Entity:
            run_record, exp_record = run_records
            run = None
            if run_record is not None and exp_record is not None:
                run = self._once(
                    run_records, RunApi, lambda: run_from_record(run_record.data, self.exp(exp_record), run_record.path)
                )
            return mv_from_record(record.data, self.model(model_record), run, record.path)

        mv = self._once((record, model_record, *run_records), ModelVersionApi, build)
        if mv.logged_model_id and not self.resolver.offline:
            with contextlib.suppress(EntityNotFound):
                self.resolver.logged(mv.logged_model_id, freshness)
        return mv

    def logged(self, record: Record, freshness: Freshness = "nested", exp: ExpApi | None = None) -> LoggedModelApi:
        if exp is not None:
            return bind(LoggedModelApi, logged_from_record(record.data, exp, record.path), self.api)
        exp_record = self._exp_record_of(record, freshness)
        return self._once(
            (record, exp_record),
            LoggedModelApi,
            lambda: logged_from_record(record.data, self.exp(exp_record), record.path),
        )


def _same(held: tuple[Record | None, ...], now: tuple[Record | None, ...]) -> bool:
    """The same documents: each record's parsed data is the very object the handle was built from."""
    if len(held) != len(now):
        return False
    return all(a is b or (a is not None and b is not None and a.data is b.data) for a, b in zip(held, now, strict=True))
