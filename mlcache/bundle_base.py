"""The base of a differential bundle, and what a bundle keeps of the blobs it was exported with.

A differential bundle holds all metadata and manifests of its selection but only the blobs its
base lacks; `bundle.json` names the base by the sha256 of the base's own `bundle.json`.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .blobs import BlobStore
from .bundle_check import BUNDLE_FILE, BundleDocument
from .bundle_reader import BundleError, is_archive
from .layout import CacheLayout
from .staging import remove_tree


@dataclass(frozen=True)
class BaseBundle:
    """The bundle a differential one is made over: its `bundle.json` digest, name, and the sha256
    of every artifact file and blob it lists."""

    digest: str
    name: str
    holds: frozenset[str]


def read_base(path: Path | str) -> BaseBundle:
    """The base of a differential export: a bundle folder, an archive (read up to its
    `bundle.json`) or a `bundle.json` itself. Its rows are claims: a differential bundle only
    leaves out what they name, and importing it checks the target cache holds every blob needed."""
    given = path
    path = Path(path).expanduser().absolute()
    raw: bytes | None = None
    try:
        if path.is_dir():
            raw = (path / BUNDLE_FILE).read_bytes()
        elif is_archive(path):
            raw = _archive_document(path)
        elif path.name == BUNDLE_FILE:
            raw = path.read_bytes()
    except FileNotFoundError:
        raw = None
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise BundleError(f"--base {given}: cannot be read ({exc})") from None
    if raw is None:
        raise BundleError(f"--base {given}: no bundle there (a bundle folder, a .tar/.tar.gz, or its {BUNDLE_FILE})")
    try:
        document = BundleDocument.model_validate_json(raw)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]
        raise BundleError(f"--base {given}: {BUNDLE_FILE} is not a valid bundle document ({reason})") from None
    holds = frozenset(row.sha256 for row in document.files if row.path.startswith(("artifacts/", "blobs/")))
    return BaseBundle(hashlib.sha256(raw).hexdigest(), path.name, holds)


def _archive_document(path: Path, limit: int = 64 << 20) -> bytes | None:
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if member.name.lstrip("./") == BUNDLE_FILE and member.isreg() and member.size <= limit:
                data = tar.extractfile(member)
                return data.read(limit + 1) if data is not None else None
    return None


def keep_each_blob_once(folder: Path, base: BaseBundle | None) -> None:
    """A full bundle keeps its entries' files (files with the same bytes are one inode where links
    work) and no separate blobs; a differential one keeps only the blobs its base lacks."""
    blobs = BlobStore(CacheLayout(folder))
    if base is None:
        remove_tree(folder / "blobs")
        return
    remove_tree(folder / "artifacts")
    for digest, path, _info in list(blobs.all()):
        if digest in base.holds:
            path.unlink()
    remove_tree(folder / "blobs" / "store")
