"""Composition: cached records become entities bound to their api (handles).

A run's document holds its experiment's id, a version's its model's name and run's id: each fact
is stored once, and entities are composed on read, the composed parts resolved `nested` (any cached
copy serves) unless the caller asks otherwise. Composing a version online brings its logged model
into the cache too, so that every identifier of it resolves offline later.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .entities import Run
from .errors import CacheMiss, CorruptMetadata, EntityNotFound
from .handles import ExpApi, LoggedModelApi, ModelApi, ModelVersionApi, RunApi, bind
from .identifiers import ExpRef
from .metadata_store import Record
from .records import exp_from_record, logged_from_record, model_from_record, mv_from_record, run_from_record
from .resolver import Freshness, MetadataResolver

if TYPE_CHECKING:
    from .base import BaseMlflowApi


class Composer:
    """Builds handles from records, resolving what they are composed of through `resolver`."""

    def __init__(self, resolver: MetadataResolver, api: BaseMlflowApi) -> None:
        self.resolver = resolver
        self.api = api

    def exp(self, record: Record) -> ExpApi:
        return bind(ExpApi, exp_from_record(record.data, record.path), self.api)

    def exp_of(self, record: Record, freshness: Freshness = "nested") -> ExpApi:
        """The experiment a run or logged model belongs to."""
        exp_id = record.data.get("exp_id")
        if not isinstance(exp_id, str):
            raise CorruptMetadata(record.path, f"{record.kind} document without 'exp_id'")
        return self.exp(self.resolver.exp(ExpRef(id=exp_id), freshness))

    def run(self, record: Record, freshness: Freshness = "nested", exp: ExpApi | None = None) -> RunApi:
        found = exp if exp is not None else self.exp_of(record, freshness)
        return bind(RunApi, run_from_record(record.data, found, record.path), self.api)

    def model(self, record: Record) -> ModelApi:
        return bind(ModelApi, model_from_record(record.data, record.path), self.api)

    def mv(self, record: Record, freshness: Freshness = "nested") -> ModelVersionApi:
        model = self.model(self.resolver.model(record.data["model_name"], freshness))
        run: Run | None = None
        run_id = record.data.get("run_id")
        if run_id:
            with contextlib.suppress(EntityNotFound, CacheMiss):
                run = self.run(self.resolver.run(run_id, freshness), freshness)
        mv = bind(ModelVersionApi, mv_from_record(record.data, model, run, record.path), self.api)
        if mv.logged_model_id and not self.resolver.offline:
            with contextlib.suppress(EntityNotFound):
                self.resolver.logged(mv.logged_model_id, freshness)
        return mv

    def logged(self, record: Record, freshness: Freshness = "nested", exp: ExpApi | None = None) -> LoggedModelApi:
        found = exp if exp is not None else self.exp_of(record, freshness)
        return bind(LoggedModelApi, logged_from_record(record.data, found, record.path), self.api)
