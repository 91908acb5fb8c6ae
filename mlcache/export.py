"""Export: write entities, with everything they need offline, into another cache dir or a bundle.

What an entity needs is its closure: a run brings its experiment, a model its alias pointers, a
version its model (aliases included), run, experiment and, when its source is one, its logged
model with that model's experiment. A closure is computed once, every document read once (the
metadata store's `reading_once`), and written to a target opened once per export, which is never
the cache itself, inside it or a parent of it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifact_cache import ArtifactCache
from .artifact_store import ArtifactStore
from .compose import Composer
from .entry_io import export_entry
from .errors import CacheMiss, EntityNotFound
from .handles import ExpApi, LoggedModelApi, ModelApi, ModelVersionApi, RunApi
from .identifiers import (
    ExpRef,
    exp_ref,
    logged_model_id,
    model_name,
    model_version_ref,
    require_logged_model_id,
    run_ref,
)
from .layout import CacheLayout
from .metadata_store import MetadataStore, Record
from .placement import check_export_target
from .resolver import MetadataResolver


class ExportTarget:
    """One destination opened once: its stores, and what was written to it already."""

    def __init__(self, cache_root: Path, target: Path | str, lock_timeout: float) -> None:
        layout = CacheLayout(check_export_target(cache_root, target))
        self.root = layout.root
        self.meta = MetadataStore(layout, indexed=False)
        self.artifacts = ArtifactStore(layout, lock_timeout)
        self._written: set[tuple[str, tuple[str, ...]]] = set()

    def write(self, record: Record) -> None:
        if (record.kind, record.key) not in self._written:
            self.meta.put(record.kind, record.key, record.data)
            self._written.add((record.kind, record.key))

    def alias(self, model: str, alias: str, version: str) -> None:
        if ("alias", (model, alias)) not in self._written:
            self.meta.put("alias", (model, alias), {"version": version})
            self._written.add(("alias", (model, alias)))


@dataclass
class ExportedContents:
    """What an export wrote, as `bundle.json` lists it."""

    model_versions: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    experiments: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"model_versions": self.model_versions, "runs": self.runs, "experiments": self.experiments}


class Exporter:
    """Closures of entities, written into export targets."""

    def __init__(
        self,
        resolver: MetadataResolver,
        composer: Composer,
        artifacts: ArtifactCache,
        cache_root: Path,
        lock_timeout: float,
    ) -> None:
        self.resolver = resolver
        self.composer = composer
        self.artifacts = artifacts
        self.cache_root = cache_root
        self.lock_timeout = lock_timeout

    def open(self, target: Path | str) -> ExportTarget:
        return ExportTarget(self.cache_root, target, self.lock_timeout)

    # ----------------------------------------------------------------- closures
    def exp(self, exp: Any, to: ExportTarget) -> ExpApi:
        record = self.resolver.exp(exp_ref(exp), "normal")
        to.write(record)
        return self.composer.exp(record)

    def run(self, run: Any, to: ExportTarget) -> RunApi:
        run_id, _ = run_ref(run)
        record = self.resolver.run(run_id, "normal")
        found = self.composer.run(record)
        to.write(self.resolver.exp(ExpRef(id=found.exp.id), "nested"))
        to.write(record)
        return found

    def model(self, model: Any, to: ExportTarget) -> ModelApi:
        record = self.resolver.model(model_name(model), "normal")
        found = self.composer.model(record)
        to.write(record)
        for alias, version in found.aliases.items():
            to.alias(found.name, alias, version)
        return found

    def model_version(self, model_version: Any, to: ExportTarget) -> ModelVersionApi:
        record = self.resolver.mv(model_version_ref(model_version), "normal")
        found = self.composer.mv(record)
        self.model(found.model.name, to)
        if found.run is not None:
            self.run(found.run.id, to)
        if found.logged_model_id is not None:
            with contextlib.suppress(EntityNotFound, CacheMiss):
                self.logged_model(found.logged_model_id, to)
        to.write(record)
        for alias in found.aliases:
            to.alias(found.model.name, alias, found.version)
        return found

    def logged_model(self, logged_model: Any, to: ExportTarget) -> LoggedModelApi:
        record = self.resolver.logged(require_logged_model_id(logged_model), "normal")
        found = self.composer.logged(record)
        to.write(self.resolver.exp(ExpRef(id=found.exp.id), "nested"))
        to.write(record)
        return found

    # ----------------------------------------------------------------- artifacts
    def run_artifact(self, run: Any, path_in_run: str | None, to: ExportTarget) -> Path:
        """The run's artifact (pulled first if needed) and the run's closure."""
        target = self.artifacts.run_target(run, path_in_run)
        self.artifacts.ensure(target)
        self.run(target.key.parts[0], to)
        return export_entry(self.artifacts.store, self.artifacts.covered(target), to.artifacts)

    def model_artifact(self, model_version: Any, to: ExportTarget) -> Path:
        """The version's (or logged model's) files (pulled first if needed) and its closure."""
        target = self.artifacts.model_target(model_version)
        self.artifacts.ensure(target)
        if logged_model_id(model_version) is not None:
            self.logged_model(model_version, to)
        else:
            self.model_version(model_version, to)
        return export_entry(self.artifacts.store, self.artifacts.covered(target), to.artifacts)

    def label(self, model_version: Any) -> str:
        """How `bundle.json` names an exported version: `models:/<name>/<version>` or `models:/m-<id>`."""
        model_id = logged_model_id(model_version)
        if model_id is not None:
            return f"models:/{model_id}"
        found = self.composer.mv(self.resolver.mv(model_version_ref(model_version), "nested"))
        return f"models:/{found.model.name}/{found.version}"

    def selection(
        self, versions: list[Any], runs: list[Any], experiments: list[Any], to: ExportTarget
    ) -> ExportedContents:
        """Write a bundle's selection (versions with their files, run artifacts or runs, experiments)."""
        contents = ExportedContents()
        with self.resolver.meta.reading_once():
            for mv in versions:
                self.model_artifact(mv, to)
                contents.model_versions.append(self.label(mv))
            for run in runs:
                run_id, path = run_ref(run)
                if path:
                    self.run_artifact(run_id, path, to)
                else:
                    self.run(run_id, to)
                contents.runs.append(str(run if isinstance(run, str) else run.id))
            for exp in experiments:
                contents.experiments.append(self.exp(exp, to).id)
        return contents
