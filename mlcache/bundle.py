"""Deployment bundles: a cache dir holding just a selection, plus `bundle.json`.

Export writes into a staging folder beside the target and renames it into place (or packs it into
one `.tar`/`.tar.gz`, also via a temporary name), hardlinking artifact files when the target is on
the same filesystem. `verify` re-hashes every file a bundle (or a cache) lists. `import_bundle`
verifies first, refuses an artifact whose content differs from what the cache already holds,
and is idempotent: importing the same bundle twice changes nothing.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import tarfile
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artifact_store import ArtifactStore, remove_tree
from .errors import CorruptMetadata, MlcacheError
from .hashing import sha256_file
from .layout import CacheLayout
from .metadata_store import KINDS, MetadataStore
from .timeutil import utcnow

if TYPE_CHECKING:
    from .base import BaseMlflowApi

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "mlcache-bundle"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")


class BundleError(MlcacheError):
    """A bundle that is damaged, or that would replace different content in the cache."""


@dataclass
class Selection:
    """What a bundle holds: model versions (or logged models), run artifacts, runs, experiments."""

    model_versions: list[Any] = field(default_factory=list)
    runs: list[Any] = field(default_factory=list)
    experiments: list[Any] = field(default_factory=list)
    version_query: dict[str, Any] | None = None


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _tree_files(root: Path) -> list[Path]:
    skip = {root / "tmp", root / "locks"}
    out = []
    for path in sorted(root.rglob("*")):
        if any(parent in skip for parent in path.parents) or path in skip:
            continue
        if path.is_file() and not path.is_symlink() and path.name != BUNDLE_FILE and path.suffix != ".used":
            if path.name.startswith("index.sqlite"):
                continue
            out.append(path)
    return out


def _file_digests(root: Path) -> list[dict[str, Any]]:
    """Every file of a bundle with size and sha256; artifact hashes come from their manifests."""
    known: dict[str, str] = {}
    store = ArtifactStore(CacheLayout(root))
    for key, manifest in store.entries():
        if isinstance(manifest, CorruptMetadata):
            raise BundleError(str(manifest))
        base = store.entry_path(key).relative_to(root)
        for item in manifest.files:
            rel = (base / item.path).as_posix() if manifest.is_dir else base.as_posix()
            known[rel] = item.sha256
    rows = []
    for path in _tree_files(root):
        rel = path.relative_to(root).as_posix()
        rows.append({"path": rel, "size": path.stat().st_size, "sha256": known.get(rel) or sha256_file(path)})
    return rows


def export_bundle(api: BaseMlflowApi, selection: Selection, target: Path | str) -> Path:
    """Write the selection, with everything needed offline, to a bundle folder or archive."""
    target = Path(target).expanduser().absolute()
    if target.exists():
        raise BundleError(f"{target} already exists; choose a new path for the bundle")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    folder = stage if not is_archive(target) else stage / "bundle"
    try:
        contents: dict[str, list[str]] = {"model_versions": [], "runs": [], "experiments": []}
        versions = list(selection.model_versions)
        if selection.version_query is not None:
            versions.extend(api.find_model_versions(selection.version_query))
        for mv in versions:
            api.export_model_artifact(mv, folder)
            contents["model_versions"].append(_label(api, mv))
        for run in selection.runs:
            _export_run(api, run, folder)
            contents["runs"].append(str(run if isinstance(run, str) else run.id))
        for exp in selection.experiments:
            found = api.export_exp_meta(exp, folder)
            contents["experiments"].append(found.id)
        if not any(contents.values()):
            raise BundleError("nothing selected: name model versions, runs or experiments (or a query)")
        CacheLayout(folder).ensure()
        for derived in (folder / "metadata").glob("index.sqlite*"):
            derived.unlink(missing_ok=True)
        manifest = {
            "format": BUNDLE_FORMAT,
            "version": 1,
            "created_at": utcnow().isoformat(),
            "creator": f"{getpass.getuser()}@{socket.gethostname()}",
            "mlcache_version": _version(),
            "contents": contents,
            "files": _file_digests(folder),
        }
        (folder / BUNDLE_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
        remove_tree(folder / "tmp")
        remove_tree(folder / "locks")
        if is_archive(target):
            partial = stage / f"bundle{''.join(Path(target.name).suffixes)}"
            mode = "w:gz" if target.name.endswith((".gz", ".tgz")) else "w"
            with tarfile.open(partial, mode) as tar:
                tar.add(folder, arcname=".")
            os.replace(partial, target)
        else:
            os.replace(stage, target)
        return target
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def _version() -> str:
    from . import __version__

    return __version__


def _label(api: BaseMlflowApi, mv: Any) -> str:
    from .identifiers import logged_model_id

    if logged_model_id(mv) is not None:
        return f"models:/{logged_model_id(mv)}"
    found = api.get_model_version(mv)
    return f"models:/{found.model.name}/{found.version}"


def _export_run(api: BaseMlflowApi, run: Any, folder: Path) -> None:
    from .identifiers import run_ref

    run_id, path = run_ref(run)
    if path:
        api.export_run_artifact(run_id, path, folder)
    else:
        api.export_run_meta(run_id, folder)


def _unpacked(source: Path, scratch: Path) -> Path:
    if not is_archive(source):
        return source
    with tarfile.open(source) as tar:
        tar.extractall(scratch, filter="data")
    return scratch


def verify(path: Path | str) -> list[str]:
    """Every problem of a bundle (folder or archive) or cache dir: missing, resized or changed
    files, unreadable metadata. An empty list means intact."""
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise BundleError(f"nothing to verify at {path}")
    with tempfile.TemporaryDirectory(prefix="mlcache-verify-") as scratch:
        root = _unpacked(path, Path(scratch))
        problems: list[str] = []
        bundle = root / BUNDLE_FILE
        if bundle.exists():
            try:
                listed = json.loads(bundle.read_text())["files"]
            except (ValueError, KeyError, TypeError) as exc:
                return [f"{bundle}: unreadable bundle.json ({exc})"]
            for item in listed:
                file = root / item["path"]
                if not file.is_file():
                    problems.append(f"{item['path']}: missing")
                elif file.stat().st_size != item["size"]:
                    problems.append(f"{item['path']}: size {file.stat().st_size} != {item['size']}")
                elif sha256_file(file) != item["sha256"]:
                    problems.append(f"{item['path']}: sha256 differs")
            return problems
        store = ArtifactStore(CacheLayout(root))
        for key, manifest in store.entries():
            if isinstance(manifest, CorruptMetadata):
                problems.append(str(manifest))
            else:
                problems.extend(store.verify(key, manifest))
        meta = MetadataStore(CacheLayout(root))
        for kind in KINDS:
            list(meta.scan(kind, on_error=lambda exc: problems.append(str(exc))))
        return problems


@dataclass
class ImportReport:
    """What an import did."""

    entries_added: list[str] = field(default_factory=list)
    entries_present: list[str] = field(default_factory=list)
    metadata_written: int = 0
    metadata_kept: int = 0


def import_bundle(api: BaseMlflowApi, source: Path | str) -> ImportReport:
    """Bring a verified bundle into the api's cache; refuses different content for an entry."""
    source = Path(source).expanduser().absolute()
    problems = verify(source)
    if problems:
        raise BundleError(
            f"bundle {source} is damaged, nothing imported: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    with tempfile.TemporaryDirectory(prefix="mlcache-import-", dir=_scratch_dir(api)) as scratch:
        root = _unpacked(source, Path(scratch))
        if not (root / BUNDLE_FILE).exists():
            raise BundleError(f"{source} is not a bundle (no {BUNDLE_FILE})")
        incoming = ArtifactStore(CacheLayout(root))
        local = api._artifacts
        entries = [(key, m) for key, m in incoming.entries() if not isinstance(m, CorruptMetadata)]
        conflicts = []
        for key, manifest in entries:
            mine = local.read_manifest(key)
            if mine is not None and local.lookup(key) is not None and _digest(mine) != _digest(manifest):
                conflicts.append(key.label)
        if conflicts:
            raise BundleError(
                f"the cache already holds different content for {', '.join(conflicts)}; "
                "clean those entries first (clean_cached_*), nothing imported"
            )
        report = ImportReport()
        for key, _ in entries:
            if local.lookup(key) is not None:
                report.entries_present.append(key.label)
            else:
                incoming.export_entry(key, local)
                report.entries_added.append(key.label)
        _import_metadata(api, MetadataStore(CacheLayout(root)), report)
        return report


def _scratch_dir(api: BaseMlflowApi) -> str:
    api.layout.ensure()
    return str(api.layout.tmp)


def _digest(manifest: Any) -> list[tuple[str, str]]:
    return sorted((f.path, f.sha256) for f in manifest.files)


def _import_metadata(api: BaseMlflowApi, incoming: MetadataStore, report: ImportReport) -> None:
    """Metadata documents are copied unless the cache holds a copy cached more recently."""
    mine = api._meta
    for kind in KINDS:
        for record in incoming.scan(kind):
            current = mine.get(kind, record.key) if mine.path(kind, record.key).exists() else None
            if current is not None and (current.data == record.data or current.cached_at >= record.cached_at):
                report.metadata_kept += 1
                continue
            mine.put(kind, record.key, record.data)
            report.metadata_written += 1


def selection_from(items: Iterable[str]) -> Selection:
    """Sort CLI identifiers into a selection: `runs:/...` are runs, digits are experiments,
    the rest model versions (or logged models)."""
    selection = Selection()
    for item in items:
        if item.startswith("runs:/"):
            selection.runs.append(item)
        elif item.startswith("exp:"):
            selection.experiments.append(item[len("exp:") :])
        else:
            selection.model_versions.append(_parse_version(item))
    return selection


def _parse_version(item: str) -> Any:
    if item.startswith("models:/") or item.startswith("m-"):
        return item
    name, sep, spec = item.rpartition(":")
    if sep and name and spec:
        return (name, spec)
    return item
