"""Putting cached files elsewhere: placing an entry in a user's folder (symlinks per file or a
copy) and opening another cache dir or bundle as an export target (never the cache itself)."""

from __future__ import annotations

import shutil
from pathlib import Path

from .artifact_store import ArtifactStore
from .errors import MlcacheError
from .layout import CacheLayout
from .metadata_store import MetadataStore
from .staging import remove_tree


def _is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def place_tree(cache_root: Path, src: Path, target: Path | str, link: bool, overwrite: bool) -> Path:
    """Put `src` at `target`: symlinks per file into the cache (`link`) or a copy; folders are
    real, writable folders; copied files keep the cache's read-only mode."""
    dest = Path(target).expanduser().absolute()
    if _is_inside(dest, cache_root):
        raise MlcacheError(f"cannot place an artifact inside the cache at {cache_root}: {dest}")
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise MlcacheError(f"{dest} already exists; pass overwrite=True to replace it")
        remove_tree(dest, strict=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        if link:
            dest.symlink_to(src.resolve())
        else:
            shutil.copy2(src, dest)
        return dest
    for item in sorted(src.rglob("*")):
        out = dest / item.relative_to(src)
        if item.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            if link:
                out.symlink_to(item.resolve())
            else:
                shutil.copy2(item, out)
    dest.mkdir(exist_ok=True)
    return dest


def check_export_target(cache_root: Path, target: Path | str) -> Path:
    """The absolute export target, refused when it is the cache, inside it or a parent of it."""
    dest = Path(target).expanduser().absolute()
    root = cache_root.resolve()
    resolved = dest.resolve() if dest.exists() else dest.parent.resolve() / dest.name
    if _is_inside(resolved, root) or _is_inside(root, resolved):
        raise MlcacheError(f"cannot export into {target}: it is the cache at {root}, inside it or a parent of it")
    return dest


def export_store(cache_root: Path, target: Path | str, lock_timeout: float) -> ArtifactStore:
    """The artifact store of an export target (never the cache, inside it or a parent)."""
    return ArtifactStore(CacheLayout(check_export_target(cache_root, target)), lock_timeout)


def export_meta_store(cache_root: Path, target: Path | str, lock_timeout: float) -> MetadataStore:
    """The metadata store of an export target (never the cache, inside it or a parent)."""
    return MetadataStore(CacheLayout(check_export_target(cache_root, target)), lock_timeout)
