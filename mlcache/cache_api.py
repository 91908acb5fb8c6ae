"""The cache-keeping half of the public façade: usage, pins, prune, gc, repair, clean, verify and
bundles. `BaseMlflowApi` inherits it; every method delegates to an engine."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .bundle import BundleLimits, ImportReport, Selection, export_bundle, import_bundle
from .bundle_trust import Evidence
from .cache_admin import AliasStatus, CacheUsage, CleanReport, EntryUsage, GcReport, PruneReport, RepairReport
from .repair import repair
from .signing import load_trusted_keys

if TYPE_CHECKING:
    from .artifact_cache import ArtifactCache, Target
    from .artifact_store import ArtifactStore
    from .base import BaseMlflowApi
    from .cache_admin import CacheAdmin
    from .export import Exporter
    from .handles import ModelVersionApi
    from .metadata_store import MetadataStore
    from .resolver import MetadataResolver


class CacheMethods:
    """Keeping the cache: what it holds, what stays, what goes, and bundles in and out."""

    if TYPE_CHECKING:
        offline_mode: bool
        signing_key: Path | None
        trusted_keys: Path | None
        _meta: MetadataStore
        _artifacts: ArtifactStore
        _resolver: MetadataResolver
        _files: ArtifactCache
        _exporter: Exporter
        _admin: CacheAdmin

        @property
        def in_offline_mode(self) -> BaseMlflowApi: ...

        def find_model_versions(self, query: Any = None) -> Iterable[ModelVersionApi]: ...

    def _versions(self) -> dict[Any, tuple[str, ...]]:
        """For each entry, the cached model versions it holds (from cached metadata, nothing fetched)."""
        files = self.in_offline_mode._files if not self.offline_mode else self._files
        return files.versions_by_entry()

    def usage(self) -> list[EntryUsage]:
        """Every artifact entry with its size on disk, unique bytes, last use, source, pin and the
        cached model versions it holds, largest first."""
        return self._admin.usage(self._versions())

    def cache_usage(self) -> CacheUsage:
        """`usage` plus the cache's totals: bytes on disk (a shared blob once), loose blobs, dedup."""
        return self._admin.cache_usage(self._versions())

    def _artifact_target(self, artifact: Any) -> Target:
        if isinstance(artifact, str) and artifact.startswith("runs:/"):
            return self._files.run_target(artifact, None)
        return self._files.model_target(artifact)

    def pin_artifact(self, artifact: Any) -> Path:
        """Keep a model version's (or `runs:/...` artifact's) files through every prune, pulling them
        first if needed; the pin lasts across processes until `unpin_artifact`."""
        target = self._artifact_target(artifact)
        path = self._files.ensure(target)
        self._artifacts.pin(self._files.covered(target))
        return path

    def unpin_artifact(self, artifact: Any) -> bool:
        """Let prune evict the artifact again; True when it was pinned."""
        target = self._artifact_target(artifact)
        found = self._artifacts.covering(target.key)
        return self._artifacts.unpin(found[0] if found is not None else target.key)

    def prune(self, max_size: int | str, dry_run: bool = False, keep_aliases: bool = False) -> PruneReport:
        """Remove least recently used entries until the cache fits in `max_size` (`10G`, bytes) on
        disk, a blob shared by entries counted once. Pinned entries stay, and with `keep_aliases` so
        do the versions any alias points to; `dry_run` only reports what would be removed."""
        return self._admin.prune(max_size, dry_run, keep_aliases, self._versions())

    def gc(self, orphan_age: float = 600.0) -> GcReport:
        """Remove blobs no entry holds, staging left by killed processes, and the half-made trees
        and manifests they leave (trees once `orphan_age` seconds old); never a blob a running pull
        links."""
        return self._admin.gc(orphan_age)

    def repair_cache(self, bundle: Path | str | None = None) -> RepairReport:
        """Remove every entry that fails verification and fill it again: from `bundle` when given
        (an import), else pulled from its source (online)."""
        importer = None if bundle is None else functools.partial(self.import_bundle, bundle)
        return repair(self._admin, self._files, self.usage(), importer, str(bundle) if bundle else None)

    def alias_status(self) -> list[AliasStatus]:
        """Every alias the cache holds next to where the server has it now (nothing is written)."""
        return self._resolver.alias_status()

    def clean_temp_artifacts(self, older_than: float = 0.0) -> int:
        """Remove staging leftovers whose owner process is gone; returns how many."""
        return self._admin.clean_temp_artifacts(older_than)

    def clean_all_cache(self) -> CleanReport:
        """Empty the cache, leaving (and reporting) what other processes are using."""
        return self._admin.clean_all_cache()

    def verify_cache(self) -> list[str]:
        """Re-hash every entry (each blob once) and re-read every metadata file; one line a problem."""
        return self._admin.verify_cache()

    def export_bundle(
        self,
        target: Path | str,
        model_versions: Iterable[Any] = (),
        runs: Iterable[Any] = (),
        experiments: Iterable[Any] = (),
        version_query: dict[str, Any] | None = None,
        base: Path | str | None = None,
        sign_key: Path | str | None = None,
        with_requirements: bool = False,
    ) -> Path:
        """A bundle (folder, `.tar` or `.tar.gz`) holding the selection and all it needs offline;
        with `base` (an older bundle), a differential one holding only the blobs `base` lacks; signed
        with `sign_key` (default: the `signing_key` setting, `MLCACHE_SIGNING_KEY`) when one is set;
        with `with_requirements`, also the wheels (for this machine's platform) each MLflow model's
        `requirements.txt` names, so `pip install --no-index` can build its environment offline."""
        selection = Selection(list(model_versions), list(runs), list(experiments), version_query)
        versions = list(selection.model_versions)
        if version_query is not None:
            versions.extend(self.find_model_versions(version_query))
        key = sign_key if sign_key is not None else self.signing_key
        return export_bundle(self._exporter, versions, selection, target, base, key, with_requirements)

    def import_bundle(
        self,
        source: Path | str,
        limits: BundleLimits | None = None,
        trusted_keys: Path | str | None = None,
        evidence: Evidence | None = None,
    ) -> ImportReport:
        """Check a bundle and bring it into this cache (idempotent, never replacing other content).
        With trusted keys (`trusted_keys`, else the setting, `MLCACHE_TRUSTED_KEYS`) anything they did
        not sign, as it is, is refused; `evidence` is filled with what was checked."""
        keys = trusted_keys if trusted_keys is not None else self.trusted_keys
        trusted = load_trusted_keys(keys) if keys is not None else None
        if evidence is not None:
            evidence.trusted = trusted or []
        return import_bundle(self._meta, self._artifacts, source, limits, trusted, evidence)
