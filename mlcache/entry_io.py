"""Whole entries read back: verified against their manifests (each inode hashed once however many
entries share it), or copied into another cache dir or bundle."""

from __future__ import annotations

import os
from pathlib import Path

from .artifact_store import ArtifactStore
from .errors import MlcacheError, UnsafeArtifact
from .hashing import copy_hashed, sha256_file
from .layout import writing
from .manifest import EntryKey, Manifest
from .names import decode_part, file_name
from .staging import Stage


def verify_entry(
    store: ArtifactStore, key: EntryKey, manifest: Manifest, hashed: dict[tuple[int, int], str] | None = None
) -> list[str]:
    """Problems of one entry: missing, resized, changed or unlisted files (empty when intact).
    `hashed` (inode -> sha256) is shared across calls so a blob many entries hold is read once."""
    root = store.entry_path(key)
    seen = {} if hashed is None else hashed
    problems = []
    for item in manifest.files:
        path = root.joinpath(*item.path.split("/")) if manifest.is_dir else root
        if not path.exists():
            problems.append(f"{path}: missing")
            continue
        info = path.stat()
        if info.st_size != item.size:
            problems.append(f"{path}: size {info.st_size} != {item.size}")
            continue
        inode = (info.st_dev, info.st_ino)
        if inode not in seen:
            seen[inode] = sha256_file(path)
        if seen[inode] != item.sha256:
            problems.append(f"{path}: sha256 differs")
    if manifest.is_dir and root.is_dir() and not root.is_symlink():
        listed = {item.path for item in manifest.files}
        nested = _nested_entries(store, key)
        for folder, _dirs, names in os.walk(root):
            for name in names:
                rel = Path(folder, name).relative_to(root).as_posix()
                if rel not in listed and not any(rel == n or rel.startswith(f"{n}/") for n in nested):
                    problems.append(f"{root / rel}: not listed in the entry's manifest")
    return problems


def _nested_entries(store: ArtifactStore, key: EntryKey) -> list[str]:
    """Paths (relative to `key`'s entry) of run entries nested inside it."""
    if key.kind != "runs":
        return []
    folder = store.manifest_path(key).parent
    prefix = file_name(key.parts[1])
    found = []
    for sibling in folder.glob("*.json") if folder.is_dir() else ():
        inner = decode_part(sibling.name[: -len(".json")])
        if inner is not None and inner.startswith(f"{key.parts[1]}/") and sibling.name != f"{prefix}.json":
            found.append(inner[len(key.parts[1]) + 1 :])
    return found


def export_entry(store: ArtifactStore, key: EntryKey, target: ArtifactStore) -> Path:
    """Copy a complete entry into another cache dir or bundle. The bytes are copied (never
    hardlinked: the bundle shares no inode with the cache) and checked against the manifest as
    they are read, so a damaged cache entry is refused, not exported."""
    manifest = store.read_manifest(key)
    source = store.lookup(key)
    if manifest is None or source is None:
        raise MlcacheError(f"{key.label} is not complete in the cache at {store.layout.root}")
    with target.lock(key):
        if target.lookup(key) is not None:
            return target.entry_path(key)
        with writing(target.layout.root, f"export {key.label}"), Stage(target.layout, "export") as stage:
            produced = stage / source.name
            for item in manifest.files:
                src = source.joinpath(*item.path.split("/")) if manifest.is_dir else source
                dst = produced.joinpath(*item.path.split("/")) if manifest.is_dir else produced
                dst.parent.mkdir(parents=True, exist_ok=True)
                size, digest = copy_hashed(src, dst)
                if (size, digest) != (item.size, item.sha256):
                    raise UnsafeArtifact(
                        f"{key.label} in the cache at {store.layout.root} is damaged ({item.path} differs from "
                        "its manifest); run `mlcache verify` and pull it again"
                    )
                os.chmod(dst, 0o444)
            if manifest.is_dir:
                produced.mkdir(exist_ok=True)
            return target.install(key, produced, manifest)
