"""Entry keys and manifests: what names a cache entry, and the record of what a complete entry holds.

An `EntryKey` is validated when made, whatever its source, so that no key names a path outside
the cache; a `Manifest` is the entry's 'complete' marker, checked for consistency when read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, Field, field_validator, model_validator

from .identifiers import RUN_ID_PATTERN as _RUN_ID
from .names import UnsafePath, safe_relative_path

MANIFEST_VERSION = 1


ENTRY_KINDS = ("runs", "models", "urls")
_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
_URL_DIGEST = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class EntryKey:
    """One cache entry: `("runs", (run_id, path_in_run))`, `("models", (model_id,))` or
    `("urls", (digest,))`. Every key is validated when made, whatever its source (a server's
    answer, a manifest, a bundle), so no key can name a path outside the cache."""

    kind: str
    parts: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in ENTRY_KINDS or not isinstance(self.parts, tuple):
            raise UnsafePath(f"unknown artifact entry {self.kind!r} {self.parts!r}")
        if self.kind == "runs":
            if len(self.parts) != 2:
                raise UnsafePath(f"a run artifact entry is (run_id, path_in_run), got {self.parts!r}")
            run_id, path = self.parts
            if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
                raise UnsafePath(f"malformed run id {run_id!r} in an artifact entry")
            if safe_relative_path(path) != path:
                raise UnsafePath(
                    f"artifact path {path!r} is not in normal form (expected {safe_relative_path(path)!r})"
                )
            return
        pattern = _MODEL_ID if self.kind == "models" else _URL_DIGEST
        if len(self.parts) != 1 or not isinstance(self.parts[0], str) or not pattern.fullmatch(self.parts[0]):
            raise UnsafePath(f"malformed {self.kind} entry {self.parts!r}")

    @property
    def label(self) -> str:
        if self.kind == "runs":
            return f"runs:/{self.parts[0]}/{self.parts[1]}"
        return f"models:/{'/'.join(self.parts)}"


class FileRow(BaseModel):
    """One listed file: its normalized relative path, size and sha256 (of a manifest or a bundle)."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("path")
    @classmethod
    def _safe(cls, value: str) -> str:
        if safe_relative_path(value, "listed file path") != value:
            raise ValueError(f"file path {value!r} is not a normalized relative path")
        return value


STORE_HASH = re.compile(r"(md5|crc32c|sha1):([0-9a-f]{8,64})")
"""A store's own hash of a file as a listing gives it: `md5:<hex>` (S3 ETag of single-part
objects, Azure Content-MD5, GCS), `crc32c:<hex>` (GCS), `sha1:<hex>`."""


class ManifestFile(FileRow):
    """A file of a cache entry, as its manifest lists it; `store_hash` is the store's own hash of
    it when the listing gave one (a later pull matches remote files to held blobs by it)."""

    store_hash: str | None = Field(default=None, pattern=f"^{STORE_HASH.pattern}$")


class Manifest(BaseModel):
    """What an entry holds and where it came from; written last, as the 'complete' marker. Sizes
    and dates in it are claims: reports measure the files, and last use is the stamp's own time."""

    version: int = MANIFEST_VERSION
    kind: str
    key: list[str]
    source: str
    is_dir: bool
    files: list[ManifestFile]
    size: int = Field(ge=0)
    source_version: str
    pulled_at: datetime
    last_used: datetime

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file is listed twice")
        if not self.is_dir and len(paths) != 1:
            raise ValueError("a single-file entry lists exactly one file")
        if self.size != sum(f.size for f in self.files):
            raise ValueError("size is not the sum of the file sizes")
        return self

    def entry_key(self) -> EntryKey:
        return EntryKey(self.kind, tuple(self.key))
