"""Putting cached files elsewhere: placing an entry in a user's folder (symlinks per file or a
copy) and opening another cache dir or bundle as an export target (never the cache itself)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import MlcacheError
from .staging import remove_tree


def _is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolved(path: Path) -> Path:
    """Where `path` really is: its deepest existing ancestor with links resolved, then the rest."""
    path = Path(path).expanduser().absolute()
    missing: list[str] = []
    node = path
    while not (node.exists() or node.is_symlink()) and node != node.parent:
        missing.append(node.name)
        node = node.parent
    return node.resolve().joinpath(*reversed(missing))


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def place_tree(cache_root: Path, src: Path, target: Path | str, link: bool, overwrite: bool) -> Path:
    """Put `src` at `target` (new, or an empty folder for a folder): symlinks per file into the
    cache (`link`) or a copy; folders are real, writable folders; copied files keep the cache's
    read-only mode. Only regular files are placed: a link inside an entry is refused."""
    dest = Path(target).expanduser().absolute()
    root = cache_root.resolve()
    real = resolved(dest)
    if _is_inside(real, root) or _is_inside(root, real):
        raise MlcacheError(f"cannot place an artifact inside the cache at {root} (or above it): {target}")
    files = _regular_files(src)
    if (dest.exists() or dest.is_symlink()) and not (src.is_dir() and is_empty_folder(dest)):
        if not overwrite:
            raise MlcacheError(f"{target} already exists; choose a new path (or replace it: overwrite=True)")
        remove_tree(dest, strict=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not src.is_dir():
        _place_file(src, dest, link)
        return dest
    dest.mkdir(exist_ok=True)
    for rel in files:
        out = dest.joinpath(*rel.split("/"))
        out.parent.mkdir(parents=True, exist_ok=True)
        _place_file(src.joinpath(*rel.split("/")), out, link)
    return dest


def _regular_files(src: Path) -> list[str]:
    """The files of an entry (relative paths), refusing any link in it: a link planted in a shared
    cache must not carry a host file into a deployment."""
    if src.is_symlink() or not (src.is_file() or src.is_dir()):
        raise MlcacheError(f"{src} is not a regular file or folder; run `mlcache verify`")
    if src.is_file():
        return [src.name]
    found: list[str] = []
    for folder, dirs, names in os.walk(src):
        for name in [*dirs, *names]:
            item = Path(folder, name)
            if item.is_symlink() or not (item.is_dir() or item.is_file()):
                raise MlcacheError(f"{item} in the cache is a link or special file; run `mlcache verify`")
        found.extend(Path(folder, name).relative_to(src).as_posix() for name in names)
    return sorted(found)


def _place_file(src: Path, out: Path, link: bool) -> None:
    if link:
        out.symlink_to(src.resolve())
    else:
        shutil.copy2(src, out, follow_symlinks=False)


def check_export_target(cache_root: Path, target: Path | str) -> Path:
    """The absolute export target, refused when it is the cache, inside it or a parent of it."""
    dest = Path(target).expanduser().absolute()
    root = cache_root.resolve()
    real = resolved(dest)
    if _is_inside(real, root) or _is_inside(root, real):
        raise MlcacheError(f"cannot export into {target}: it is the cache at {root}, inside it or a parent of it")
    return dest
