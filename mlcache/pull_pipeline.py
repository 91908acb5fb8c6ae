"""One pull of a remote artifact into an entry: stage, link what the cache holds, download the
rest while it is hashed, verify against the listing, commit (`ArtifactStore.commit`).

The stage is `tmp/pull-<entry digest>`: `tree/` is what gets installed (made anew by every
attempt), `ranged/` is where the transfer resumes big files (`PullPlan.resume_dir`). A failed or
killed pull leaves the stage for the next attempt when `ranged/` holds anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from .blobs import BlobStore
from .errors import UnsafeArtifact
from .hashing import PullHasher
from .layout import writing
from .manifest import EntryKey
from .names import is_normalized_relative
from .staged_tree import check_against, report_pull, scan_tree, trusted_store_hashes
from .staging import Stage, remove_tree
from .transfer import Listing, OnFile, PullPlan, TransferError

if TYPE_CHECKING:
    from .artifact_store import ArtifactStore

Fetch = Callable[[Path, OnFile, "list[str] | None", PullPlan], None]
"""`fetch(tree, on_file, only, plan)`: download the listed remote into `tree` (only those paths when
`only` is given), with the listing and a folder to resume in (`plan`)."""


def pull_entry(
    store: ArtifactStore, key: EntryKey, fetch: Fetch, list_source: Callable[[], Listing], replace: bool
) -> Path:
    """Pull `key` into `store` (see `ArtifactStore.pull`); the installed entry's path."""
    with writing(store.layout.root, f"pull {key.label}"):
        stage = Stage(store.layout, "pull", resumable=_stage_digest(key))
        resume_dir = stage.path / "ranged"
        ok = False
        try:
            path = _pull_into(store, key, stage.path, resume_dir, fetch, list_source, replace)
            ok = True
            return path
        finally:
            stage.close(keep=not ok and _holds_anything(resume_dir))


def _pull_into(
    store: ArtifactStore,
    key: EntryKey,
    stage: Path,
    resume_dir: Path,
    fetch: Fetch,
    list_source: Callable[[], Listing],
    replace: bool,
) -> Path:
    tree = stage / "tree"
    remove_tree(tree, strict=True)
    tree.mkdir()
    with ThreadPoolExecutor(max_workers=1) as lister:
        hasher = PullHasher(tree)
        try:
            listed = lister.submit(list_source)
            linked = link_held(store.blobs, listed.result(), tree) if store.blobs.has_hints() else {}
            listing = listed.result() if linked else None
            only = None if listing is None else [f.path for f in listing.files if f.path not in linked]
            if only != []:
                try:
                    fetch(tree, hasher.on_file, only, PullPlan(listed.result, resume_dir))
                except TransferError as exc:
                    if exc.errno is not None:
                        raise OSError(exc.errno, str(exc)) from exc
                    raise
                finally:
                    listing = listed.result()
            assert listing is not None
            produced = tree if listing.is_dir else tree / listing.files[0].path
            if not (produced.exists() or produced.is_symlink()):
                raise UnsafeArtifact(f"pulling {listing.url} produced nothing")
            files = scan_tree(produced, listing.is_dir)
            check_against(listing, files)
            known = hasher.digests(files)
            known.update(linked)
            hashes = trusted_store_hashes(listing, files, linked)
            path = store.commit(
                key, produced, files, listing.url, listing.version(), replace, known, hashes, frozenset(linked)
            )
            report_pull(key, listing, linked)
            return path
        finally:
            hasher.close()


def link_held(blobs: BlobStore, listing: Listing, tree: Path) -> dict[str, str]:
    """Link into `tree` each listed file whose (size, store hash) names a held blob; path -> sha256
    of what was linked. Paths a line-based file list could not carry are left to download."""
    linked: dict[str, str] = {}
    hints = blobs.store_hashes()
    for item in listing.files:
        if not item.hash or "\n" in item.path or "\r" in item.path or not is_normalized_relative(item.path):
            continue
        digest = blobs.by_store_hash(item.hash, item.size, hints)
        if digest is not None and blobs.link_into(digest, item.size, tree.joinpath(*item.path.split("/"))):
            linked[item.path] = digest
    return linked


def _stage_digest(key: EntryKey) -> str:
    """The part of a pull's stage name that names its entry (so a later attempt finds the stage)."""
    return hashlib.sha256("\0".join((key.kind, *key.parts)).encode()).hexdigest()[:32]


def _holds_anything(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(True for _ in entries)
    except OSError:
        return False
