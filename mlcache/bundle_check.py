"""The rules a bundle must meet before anything in it is believed.

A bundle is a cache dir holding a selection plus `bundle.json`, which lists every file with its
size and sha256. Checked on what one pass over the bundle actually read (`bundle_reader`):
- the files are exactly those listed: nothing missing, nothing unlisted, sizes and digests equal;
- every file has its place in the layout: `layout.json` of a readable layout version,
  `CACHEDIR.TAG`, metadata documents at the path their own key maps to, manifests likewise,
  artifact files that some manifest lists with the same size and digest, and blobs
  (`blobs/sha256/...`) whose bytes hash to their name and that some manifest lists, and wheels
  (`wheels/<name>.whl`, one level) that `bundle.json`'s `requirements` names (see `requirements`);
  anything else is refused;
- every file a manifest lists is in the bundle (at its entry's path, or as a blob), except in a
  *differential* bundle: what it lacks it relies on its base for (`CheckedBundle.relies`).
Problems are reported one line each, as `<path in the bundle>: <what is wrong>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .artifact_store import ArtifactStore
from .blobs import SHA256
from .bundle_reader import BundleTree
from .errors import CorruptMetadata
from .layout import READABLE_VERSIONS, CacheLayout
from .manifest import EntryKey, FileRow, Manifest
from .metadata_store import KINDS, MetadataStore
from .names import UnsafePath
from .requirements import WHEELS, RequirementsRecord, wheel_problem
from .signing import DOCUMENT_SIGNATURE, SIGNATURES

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "mlcache-bundle"
BUNDLE_VERSION = 1
_ROOT = Path("/bundle")
SIGNATURE_FILE = DOCUMENT_SIGNATURE
_TOP_FILES = (BUNDLE_FILE, SIGNATURE_FILE, "layout.json", "CACHEDIR.TAG")


class BundleFile(FileRow):
    """One row of `bundle.json`: a file of the bundle."""

    model_config = ConfigDict(extra="forbid")


class BaseRef(BaseModel):
    """The bundle a differential bundle was made over: the sha256 of its `bundle.json`, and its name."""

    model_config = ConfigDict(extra="forbid")

    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(max_length=4096)


class BundleDocument(BaseModel):
    """`bundle.json`: what a bundle holds, who made it and when (both claims), every file listed."""

    model_config = ConfigDict(extra="allow")

    format: str = Field(pattern=f"^{BUNDLE_FORMAT}$")
    version: int = Field(ge=BUNDLE_VERSION, le=BUNDLE_VERSION)
    created_at: datetime
    creator: str
    mlcache_version: str
    contents: dict[str, list[str]]
    files: list[BundleFile]
    base: BaseRef | None = None
    requirements: RequirementsRecord | None = None


@dataclass
class CheckedBundle:
    """A bundle's checked parts: its document, entries (key -> manifest and the entry's path in the
    bundle) and metadata documents (path in the bundle -> kind)."""

    document: BundleDocument | None = None
    entries: dict[EntryKey, tuple[Manifest, str]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    relies: dict[str, int] = field(default_factory=dict)
    """Blobs (sha256 -> size) a differential bundle's entries need and it does not hold."""
    absent: list[str] = field(default_factory=list)
    """The entry files behind `relies`, as `<path>: missing from entry <label>`."""


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def check_bundle(tree: BundleTree) -> CheckedBundle:
    """Every problem of the bundle whose members `tree` holds; no problems means it may be installed."""
    checked = CheckedBundle()
    raw = tree.documents.get(BUNDLE_FILE)
    if raw is None:
        checked.problems.append(f"{BUNDLE_FILE}: missing (not an mlcache bundle)")
        return checked
    try:
        checked.document = BundleDocument.model_validate_json(raw)
    except ValidationError as exc:
        checked.problems.append(f"{BUNDLE_FILE}: not a valid bundle document ({_first_error(exc)})")
        return checked
    unlisted = _check_listing(tree, checked.document, checked.problems)
    _check_layout(tree, checked, unlisted)
    return checked


def _check_listing(tree: BundleTree, document: BundleDocument, problems: list[str]) -> set[str]:
    """Report files that are missing, unlisted or differ from their row; returns their paths."""
    bad: set[str] = set()
    listed: dict[str, BundleFile] = {}
    for row in document.files:
        if row.path in listed or row.path in (BUNDLE_FILE, SIGNATURE_FILE):
            problems.append(f"{row.path}: listed twice in {BUNDLE_FILE}")
        listed[row.path] = row
    for rel in sorted(tree.members):
        if rel not in (BUNDLE_FILE, SIGNATURE_FILE) and rel not in listed:
            problems.append(f"{rel}: not listed in {BUNDLE_FILE}")
            bad.add(rel)
    for rel, row in sorted(listed.items()):
        member = tree.members.get(rel)
        if member is None:
            problems.append(f"{rel}: missing")
        elif member.size != row.size:
            problems.append(f"{rel}: size {member.size} != {row.size}")
        elif member.sha256 != row.sha256:
            problems.append(f"{rel}: sha256 differs")
        else:
            continue
        bad.add(rel)
    return bad


def _check_layout(tree: BundleTree, checked: CheckedBundle, reported: set[str]) -> None:
    """Where each file sits in the layout; files whose listing is already reported are not
    reported again."""
    layout = CacheLayout(_ROOT)
    artifacts = ArtifactStore(layout)
    metadata = MetadataStore(layout)
    problems = checked.problems
    marker = tree.documents.get("layout.json")
    if marker is not None and _layout_version(marker) not in READABLE_VERSIONS:
        problems.append(f"layout.json: not a layout version this mlcache reads ({READABLE_VERSIONS})")
    covered: set[str] = set()
    for rel in sorted(tree.members):
        top = rel.split("/", 1)[0]
        if rel in _TOP_FILES:
            continue
        if rel in reported:
            continue
        if top == "manifests":
            _check_manifest(tree, rel, artifacts, checked, covered, reported)
        elif top == "metadata":
            _check_document(tree, rel, metadata, checked)
        elif top == "blobs":
            _check_blob(tree, rel, problems)
        elif top == "signatures":
            continue
        elif top == WHEELS:
            _check_wheel(rel, checked)
        elif top != "artifacts":
            problems.append(f"{rel}: not part of an mlcache bundle")
    _check_wheels_named(tree, checked, reported)
    entry_paths = {rel for _manifest, rel in checked.entries.values()}
    for rel in sorted(tree.members):
        if rel.startswith(("artifacts/", "blobs/")) and rel not in covered and rel not in reported:
            problems.append(f"{rel}: not part of any entry (no manifest lists it)")
        elif rel.startswith(f"{SIGNATURES}/") and rel not in reported and not _signs_an_entry(rel, entry_paths):
            problems.append(f"{rel}: not the signature of an entry of the bundle")
    if checked.relies and (checked.document is None or checked.document.base is None):
        problems.extend(checked.absent)
        checked.relies.clear()


def _check_wheel(rel: str, checked: CheckedBundle) -> None:
    """A wheel sits one level under `wheels/` and some model's requirements name it."""
    problem = wheel_problem(rel)
    requirements = checked.document.requirements if checked.document is not None else None
    named = requirements is not None and any(rel in wheels for wheels in requirements.models.values())
    if problem is not None:
        checked.problems.append(f"{rel}: {problem}")
    elif not named:
        checked.problems.append(f"{rel}: a wheel the requirements in {BUNDLE_FILE} do not name")


def _check_wheels_named(tree: BundleTree, checked: CheckedBundle, reported: set[str]) -> None:
    """Every wheel `bundle.json`'s requirements name is a wheel the bundle holds."""
    requirements = checked.document.requirements if checked.document is not None else None
    for folder, wheels in sorted(requirements.models.items()) if requirements is not None else ():
        for rel in wheels:
            if rel in reported:
                continue
            if wheel_problem(rel) is not None or rel not in tree.members:
                checked.problems.append(f"{BUNDLE_FILE}: the requirements of {folder} name {rel}, not a wheel it holds")


def _signs_an_entry(rel: str, entry_paths: set[str]) -> bool:
    return rel.endswith(".sig") and rel[len(SIGNATURES) + 1 : -len(".sig")] in entry_paths


def _blob_rel(digest: str) -> str:
    return f"blobs/sha256/{digest[:2]}/{digest[2:]}"


def _check_blob(tree: BundleTree, rel: str, problems: list[str]) -> None:
    parts = rel.split("/")
    digest = "".join(parts[2:]) if len(parts) == 4 and parts[1] == "sha256" and len(parts[2]) == 2 else ""
    if not SHA256.fullmatch(digest):
        problems.append(f"{rel}: not a blob name of this layout")
    elif tree.members[rel].sha256 != digest:
        problems.append(f"{rel}: its bytes do not hash to its name")


def _layout_version(raw: bytes) -> Any:
    try:
        return json.loads(raw).get("version")
    except (ValueError, AttributeError):
        return None


def _check_manifest(
    tree: BundleTree, rel: str, artifacts: ArtifactStore, checked: CheckedBundle, covered: set[str], reported: set[str]
) -> None:
    try:
        manifest = Manifest.model_validate_json(tree.documents[rel])
        key = manifest.entry_key()
    except ValidationError as exc:
        checked.problems.append(f"{rel}: not a valid manifest ({_first_error(exc)})")
        return
    except UnsafePath as exc:
        checked.problems.append(f"{rel}: names an unusable entry ({exc})")
        return
    if artifacts.manifest_path(key).relative_to(_ROOT).as_posix() != rel:
        checked.problems.append(f"{rel}: is the manifest of {key.label}, which belongs elsewhere")
        return
    base = PurePosixPath(artifacts.entry_path(key).relative_to(_ROOT).as_posix())
    for item in manifest.files:
        path = (base / item.path).as_posix() if manifest.is_dir else base.as_posix()
        member = tree.members.get(path)
        if path in reported:
            continue
        blob = _blob_rel(item.sha256)
        if member is None and blob in tree.members:
            if tree.members[blob].size == item.size:
                covered.add(blob)
            else:
                checked.problems.append(f"{blob}: size differs from the manifest of {key.label}")
        elif member is None:
            checked.relies[item.sha256] = item.size
            checked.absent.append(f"{path}: missing from entry {key.label}")
        elif (member.size, member.sha256) != (item.size, item.sha256):
            checked.problems.append(f"{path}: differs from the manifest of {key.label}")
        else:
            covered.add(path)
    checked.entries[key] = (manifest, base.as_posix())


def _check_document(tree: BundleTree, rel: str, metadata: MetadataStore, checked: CheckedBundle) -> None:
    parts = rel.split("/")
    kind = parts[1] if len(parts) > 2 else ""
    if kind not in KINDS or not rel.endswith(".json"):
        checked.problems.append(f"{rel}: not a metadata document of this layout")
        return
    try:
        metadata.parse_document(_ROOT / rel, tree.documents[rel], kind)
    except CorruptMetadata as exc:
        checked.problems.append(f"{rel}: {exc.reason}")
        return
    checked.metadata[rel] = kind
