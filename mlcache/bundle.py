"""Deployment bundles: a cache dir holding just a selection, plus `bundle.json` listing every file.

- Export writes into a staging folder beside the target (held by this process through a lock file
  beside it, so the next export removes what a killed one left), copies each selected entry's bytes
  (checked against its manifest as they are read; never a hardlink, so the bundle shares no inode
  with the cache), lists every file, then renames the folder into place or packs it into one
  `.tar`/`.tar.gz` via a temporary name.
- Verify reads a bundle once, in place (an archive is streamed, never extracted), and checks it
  against `bundle_check`'s rules; a cache dir is verified entry by entry.
- Import reads the bundle once into a private stage of the cache, checks that stage and installs
  exactly its bytes: nothing unlisted, nothing unchecked. An entry whose content differs from what the
  cache holds is refused (nothing is imported); importing the same bundle twice changes nothing.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import tarfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from .artifact_store import ArtifactStore
from .bundle_base import BaseBundle, keep_each_blob_once, read_base
from .bundle_check import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    SIGNATURE_FILE,
    CheckedBundle,
    check_bundle,
)
from .bundle_reader import BundleError, BundleLimits, BundleTree, is_archive, read_bundle
from .bundle_trust import Evidence, judge, refusals, sign_bundle_document, sign_bundle_folder
from .bundle_verify import verify
from .errors import CorruptMetadata
from .hashing import sha256_file
from .layout import CacheLayout, writing
from .manifest import EntryKey, Manifest
from .metadata_store import MetadataStore
from .placement import check_export_target
from .progress import human_size
from .requirements import download_wheels
from .signing import TrustedKey, load_private_key
from .staging import Stage, remove_tree
from .timeutil import utcnow

if TYPE_CHECKING:
    from .export import Exporter

__all__ = ["BundleError", "BundleLimits", "ImportReport", "Selection", "export_bundle", "import_bundle", "verify"]

_PARTIAL = ".partial"
_ABANDONED_AGE = 3600.0
"""A staging folder of an export without lock file (left by an older release) is removed this old."""


@dataclass
class Selection:
    """What a bundle holds: model versions (or logged models), run artifacts, runs, experiments."""

    model_versions: list[Any] = field(default_factory=list)
    runs: list[Any] = field(default_factory=list)
    experiments: list[Any] = field(default_factory=list)
    version_query: dict[str, Any] | None = None


def _derived_files(folder: Path) -> None:
    """Drop what a cache keeps for itself and a bundle never holds: temp and lock files, the search
    index, last-used stamps."""
    remove_tree(folder / "tmp")
    remove_tree(folder / "locks")
    for derived in (folder / "metadata").glob("index.sqlite*"):
        derived.unlink(missing_ok=True)
    for stamp in (folder / "manifests").rglob("*.used"):
        stamp.unlink(missing_ok=True)


def _file_rows(root: Path) -> list[dict[str, Any]]:
    """Every file of a bundle folder with size and sha256; artifact digests are those their
    manifests record (each was checked while it was copied in), blobs are named by theirs, the
    rest are hashed."""
    known: dict[str, tuple[int, str]] = {}
    store = ArtifactStore(CacheLayout(root))
    for key, manifest in store.entries():
        if key is None or isinstance(manifest, CorruptMetadata):
            raise BundleError(f"export produced a damaged manifest: {manifest}")
        base = store.entry_path(key).relative_to(root)
        for item in manifest.files:
            rel = (base / item.path).as_posix() if manifest.is_dir else base.as_posix()
            known[rel] = (item.size, item.sha256)
    rows = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel == BUNDLE_FILE:
                continue
            if rel.startswith("blobs/sha256/"):
                known[rel] = (path.stat().st_size, rel[len("blobs/sha256/") :].replace("/", ""))
            size, digest = known.get(rel) or (path.stat().st_size, sha256_file(path))
            rows.append({"path": rel, "size": size, "sha256": digest})
    return sorted(rows, key=lambda row: row["path"])


def _partial_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\{_PARTIAL}")


def _clean_partials(parent: Path, name: str) -> None:
    """Remove staging folders of earlier exports to the same target whose process is gone."""
    pattern = _partial_pattern(name)
    with contextlib.suppress(FileNotFoundError):
        for item in parent.iterdir():
            if not pattern.fullmatch(item.name) or item.is_symlink():
                continue
            owner = item.with_name(item.name + ".lock")
            if owner.exists():
                try:
                    with FileLock(str(owner), timeout=0):
                        remove_tree(item)
                except Timeout:
                    continue
                owner.unlink(missing_ok=True)
            elif time.time() - item.lstat().st_mtime > _ABANDONED_AGE:
                remove_tree(item)


_OTHER_ARCHIVES = (".zip", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".7z", ".rar", ".bz2", ".xz", ".zst")


def _unsupported_archive(name: str) -> str | None:
    """The archive suffix of `name` that bundles cannot be written as (`.zip`, `.tar.xz`, ...)."""
    lowered = name.lower()
    if lowered.endswith((".tar", ".tar.gz", ".tgz")):
        return None
    found = next((suffix for suffix in _OTHER_ARCHIVES if lowered.endswith(suffix)), None)
    if found is None and lowered.endswith(".gz"):
        found = ".gz"
    return found


def export_bundle(
    exporter: Exporter,
    versions: list[Any],
    selection: Selection,
    target: Path | str,
    base: Path | str | None = None,
    sign_key: Path | str | None = None,
    with_requirements: bool = False,
) -> Path:
    """Write the selection (with `versions`, the selected model versions, the query's included),
    with everything needed offline, to a bundle folder or archive; with `base` (a bundle folder,
    archive or its `bundle.json`), a differential bundle holding only the blobs the base lacks;
    with `sign_key`, every entry it holds and its `bundle.json` are signed; with
    `with_requirements`, the wheels each MLflow model's `requirements.txt` names, for this
    machine's platform, are downloaded into its `wheels/` (see `requirements`)."""
    given = target
    over = read_base(base) if base is not None else None
    key = Path(sign_key).expanduser().absolute() if sign_key is not None else None
    if key is not None:
        load_private_key(key)
    check_export_target(exporter.cache_root, given)
    target = Path(target).expanduser().absolute()
    unsupported = _unsupported_archive(target.name)
    if unsupported:
        raise BundleError(f"{given}: a bundle is a folder, a .tar or a .tar.gz archive; {unsupported} is not supported")
    if target.exists() or target.is_symlink():
        raise BundleError(f"{given} already exists; choose a new path for the bundle")
    if not (versions or selection.runs or selection.experiments):
        raise BundleError("nothing selected: name model versions, runs or experiments (or a query)")
    with writing(target.parent, f"export a bundle to {target}"):
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_partials(target.parent, target.name)
        stage = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}{_PARTIAL}"
        owner = stage.with_name(stage.name + ".lock")
        try:
            with FileLock(str(owner), timeout=0):
                _export_into(exporter, versions, selection, stage, target, over, key, with_requirements)
        finally:
            remove_tree(stage)
            owner.unlink(missing_ok=True)
    return target


def _export_into(
    exporter: Exporter,
    versions: list[Any],
    selection: Selection,
    stage: Path,
    target: Path,
    base: BaseBundle | None,
    key: Path | None,
    with_requirements: bool = False,
) -> None:
    folder = stage if not is_archive(target) else stage / "bundle"
    to = exporter.open(folder)
    contents = exporter.selection(versions, list(selection.runs), list(selection.experiments), to)
    CacheLayout(folder).ensure()
    _derived_files(folder)
    # the wheels before the entries' files may go (a differential bundle), and before signing and listing
    requirements = download_wheels(folder) if with_requirements else None
    keep_each_blob_once(folder, base)
    if key is not None:
        sign_bundle_folder(folder, key)
    document: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "created_at": utcnow().isoformat(),
        "creator": f"{getpass.getuser()}@{socket.gethostname()}",
        "mlcache_version": _version(),
        "contents": contents.as_dict(),
        "files": _file_rows(folder),
    }
    if base is not None:
        document["base"] = {"digest": base.digest, "name": base.name}
    if requirements is not None:
        document["requirements"] = requirements.model_dump()
    raw = json.dumps(document, indent=1, ensure_ascii=False).encode()
    (folder / BUNDLE_FILE).write_bytes(raw)
    if key is not None:
        sign_bundle_document(folder, raw, key)
    if is_archive(target):
        partial = stage / f"bundle{''.join(Path(target.name).suffixes)}"
        compressed = target.name.lower().endswith((".gz", ".tgz"))
        with tarfile.open(partial, "w:gz") if compressed else tarfile.open(partial, "w") as tar:
            first = [name for name in (BUNDLE_FILE, SIGNATURE_FILE) if (folder / name).exists()]
            for name in first:
                tar.add(folder / name, arcname=name)
            tar.add(folder, arcname=".", filter=lambda info: None if info.name[2:] in first else info)
        os.replace(partial, target)
    else:
        os.replace(stage, target)


def _version() -> str:
    from . import __version__

    return __version__


@dataclass
class ImportReport:
    """What an import did."""

    entries_added: list[str] = field(default_factory=list)
    entries_present: list[str] = field(default_factory=list)
    metadata_written: int = 0
    metadata_kept: int = 0


def import_bundle(
    meta: MetadataStore,
    local: ArtifactStore,
    source: Path | str,
    limits: BundleLimits | None = None,
    trusted: list[TrustedKey] | None = None,
    evidence: Evidence | None = None,
) -> ImportReport:
    """Bring a bundle into the cache of these stores: read once into a private stage, checked, and
    exactly that stage installed. Refuses (installing nothing) a damaged bundle, unlisted content,
    entries whose content differs from what the cache holds, and with `trusted` keys anything not
    signed by one of them as it is. `evidence`, when given, is filled with what was checked."""
    source = Path(source).expanduser().absolute()
    if not source.exists():
        raise BundleError(f"no bundle at {source}")
    layout = local.layout
    root = layout.root.resolve()
    if source.resolve() == root or root in source.resolve().parents:
        raise BundleError(f"cannot import a bundle into itself: {source} is the cache at {root} or inside it")
    layout.check_version()
    with writing(layout.root, f"import {source}"), Stage(layout, "import") as stage:
        tree = read_bundle(source, limits, stage)
        checked = check_bundle(tree)
        signatures = judge(tree, checked, stage, trusted) if trusted and not checked.problems else []
        if evidence is not None:
            evidence.tree, evidence.signatures = tree, signatures
            evidence.problems = checked.problems + refusals(signatures)
        if checked.problems:
            shown = "; ".join(checked.problems[:5])
            more = f" (+{len(checked.problems) - 5} more)" if len(checked.problems) > 5 else ""
            raise BundleError(f"bundle {source} is damaged, nothing imported: {shown}{more}")
        refused = refusals(signatures)
        if refused:
            shown = "; ".join(refused[:3]) + (f" (+{len(refused) - 3} more)" if len(refused) > 3 else "")
            raise BundleError(f"bundle {source} is not trusted, nothing imported: {shown}")
        conflicts = [
            key.label
            for key, (manifest, _) in checked.entries.items()
            if (mine := local.read_manifest(key)) is not None
            and local.lookup_quiet(key) is not None
            and _digest(mine) != _digest(manifest)
        ]
        if conflicts:
            raise BundleError(
                f"the cache already holds different content for {', '.join(sorted(conflicts))}; "
                "clean those entries first (mlcache clean --entry URI), nothing imported"
            )
        lacking = {d: size for d, size in checked.relies.items() if local.blobs.held(d, size) is None}
        if lacking and checked.document is not None and checked.document.base is not None:
            base = checked.document.base
            raise BundleError(
                f"bundle {source} is differential over {base.name} (bundle.json sha256 {base.digest[:16]}...); the "
                f"cache lacks {len(lacking)} of the {len(checked.relies)} blobs it relies on "
                f"({human_size(sum(lacking.values()))}): import {base.name} first, nothing imported"
            )
        report = ImportReport()
        for key, (manifest, rel) in sorted(checked.entries.items(), key=lambda item: item[0].label):
            if local.lookup_quiet(key) is not None:
                report.entries_present.append(key.label)
                continue
            _install_entry(local, key, manifest, stage / rel, stage)
            report.entries_added.append(key.label)
        _import_metadata(meta, tree, checked, report)
        return report


def _install_entry(local: ArtifactStore, key: EntryKey, manifest: Manifest, staged: Path, stage: Path) -> None:
    """Install one checked entry from the import stage: its listed files (from the entry's folder
    in the bundle, else the bundle's blobs, else the blobs the cache holds), linked into a fresh
    stage of their own (so entries nested in one another each get all their files), read-only."""
    with local.lock(key), local.new_stage("install") as own:
        produced = own / (staged.name or "artifact")
        for item in manifest.files:
            src = staged.joinpath(*item.path.split("/")) if manifest.is_dir else staged
            dst = produced.joinpath(*item.path.split("/")) if manifest.is_dir else produced
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not src.is_file():
                src = stage.joinpath("blobs", "sha256", item.sha256[:2], item.sha256[2:])
            if src.is_file():
                os.chmod(src, 0o444)
                os.link(src, dst)
            elif not local.blobs.link_into(item.sha256, item.size, dst):
                raise BundleError(f"{key.label}: the blob of {item.path} left the cache while importing; import again")
        if manifest.is_dir:
            produced.mkdir(exist_ok=True)
        local.install(key, produced, manifest)


def _digest(manifest: Manifest) -> list[tuple[str, str]]:
    return sorted((f.path, f.sha256) for f in manifest.files)


def _import_metadata(mine: MetadataStore, tree: BundleTree, checked: CheckedBundle, report: ImportReport) -> None:
    """The bundle's documents replace the cached ones they differ from (the import is the newer
    word); each is stored with the cache's own time. Dates inside documents are never compared."""
    for rel, kind in sorted(checked.metadata.items()):
        record = mine.parse_document(mine.layout.root / rel, tree.documents[rel], kind)
        try:
            current = mine.get(kind, record.key)
        except CorruptMetadata:
            current = None
        if current is not None and current.data == record.data:
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
